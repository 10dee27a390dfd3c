//! The console's pages: plain HTML, every value escaped, no inline script or style
//! (the Content-Security-Policy allows neither). Only the replay page loads scripts:
//! the bundled player and host/console-web/replay.js, both served from /assets.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::index::{PAGE, Query};
use crate::recording::SessionRecord;

pub(super) const CSS: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#1d2430}\
header{background:#1d2430;color:#fff;padding:.6em 1em;display:flex;gap:1.5em;align-items:center}\
header a{color:#fff;text-decoration:none}header form{margin-left:auto}\
main{padding:1em}table{border-collapse:collapse;width:100%;font-size:.9em}\
th,td{border-bottom:1px solid #dde;padding:.3em .5em;text-align:left;vertical-align:top}\
td.n{text-align:right}.block,.refused{color:#a40000}.audit{color:#8a5a00}\
form.filters{display:flex;flex-wrap:wrap;gap:.5em;margin-bottom:1em}\
form.filters input,form.filters select{padding:.2em}.pager{margin:1em 0;display:flex;gap:1em}\
svg.chart{width:100%;height:120px;background:#f5f6fa}.caption{margin:.2em 0 1em;font-size:.85em;color:#556}dl{display:grid;grid-template-columns:14em 1fr}\
dt{font-weight:600}button{cursor:pointer}\
.controls{display:flex;gap:2em;align-items:center;margin:.5em 0}.controls form{display:inline}\
#hits{max-height:12em;overflow:auto;font-family:monospace;font-size:.85em}\
#hits button{background:none;border:0;color:#0645ad;text-align:left;font:inherit;padding:0}\
#player{max-width:900px}";

/// Escapes text for HTML content and attribute values.
pub(super) fn h(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
fn q(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn page(title: &str, csrf: Option<&str>, body: &str) -> String {
    page_with(title, csrf, "", body)
}

/// A page with more in its head (the replay page's stylesheet).
fn page_with(title: &str, csrf: Option<&str>, head: &str, body: &str) -> String {
    let nav = match csrf {
        Some(csrf) => format!(
            "<a href=\"/sessions\">Sessions</a><a href=\"/live\">Live sessions</a>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button>Sign out</button></form>",
            h(csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{} - Portcullis</title>\
         <link rel=\"stylesheet\" href=\"/console.css\">{head}</head><body>\
         <header><strong>Portcullis</strong>{nav}</header><main>{body}</main></body></html>",
        h(title)
    )
}

/// The sign-in page, with the methods configured: (token, identity provider).
pub(super) fn login(error: Option<&str>, (token, provider): (bool, bool)) -> String {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"block\">{}</p>", h(e))
    });
    let mut body = format!("<h1>Sign in</h1>{error}");
    if provider {
        body.push_str("<p><a href=\"/login/oidc\">Sign in with the identity provider</a></p>");
    }
    if token {
        body.push_str(
            "<form method=\"post\" action=\"/login\">\
             <label>Console token <input type=\"password\" name=\"token\" autocomplete=\"off\"></label> \
             <button>Sign in</button></form>",
        );
    }
    page("Sign in", None, &body)
}

/// A page that sends the browser on to `to` by itself (no script: a refresh).
pub(super) fn moving_on(to: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"0;url={0}\"><title>Signed in</title></head>\
         <body><p>Signed in. <a href=\"{0}\">Continue</a></p></body></html>",
        h(to)
    )
}

pub(super) fn message(text: &str) -> String {
    page(
        "Portcullis",
        None,
        &format!(
            "<p>{}</p><p><a href=\"/sessions\">Sessions</a></p>",
            h(text)
        ),
    )
}

fn action_cell(action: &str) -> String {
    format!("<td class=\"{}\">{}</td>", h(action), h(action))
}

fn seconds(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

/// Sessions and refusals per day (or per hour when the rows span under two days), as
/// an SVG bar chart.
fn chart(rows: &[&SessionRecord]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let (first, last) = rows
        .iter()
        .fold((None::<&str>, None::<&str>), |(lo, hi), r| {
            let s = r.start.as_str();
            (
                Some(lo.map_or(s, |l| l.min(s))),
                Some(hi.map_or(s, |h| h.max(s))),
            )
        });
    let span_days = first
        .zip(last)
        .is_some_and(|(a, b)| a.get(..10) != b.get(..10));
    let key_len = if span_days { 10 } else { 13 };
    let mut buckets: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for r in rows {
        let key = r.start.get(..key_len).unwrap_or(&r.start);
        let e = buckets.entry(key).or_default();
        if r.action == "allow" || r.action == "audit" {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let max = buckets
        .values()
        .map(|(a, b)| a + b)
        .max()
        .unwrap_or(1)
        .max(1);
    // At least 24 slots, so a few buckets are bars, not a wall.
    let n = buckets.len().max(24) as f64;
    let w = 1000.0 / n;
    let mut svg = String::from(
        "<svg class=\"chart\" viewBox=\"0 0 1000 120\" preserveAspectRatio=\"none\" role=\"img\" \
         aria-label=\"sessions (blue) and refusals (red) over time\">",
    );
    for (i, (key, (ok, refused))) in buckets.iter().enumerate() {
        let x = i as f64 * w;
        let hok = f64::from(*ok) / f64::from(max) * 110.0;
        let hre = f64::from(*refused) / f64::from(max) * 110.0;
        let _ = write!(
            svg,
            "<g><title>{}: {ok} session(s), {refused} refused</title>\
             <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hok:.1}\" fill=\"#3b6fb6\"/>\
             <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hre:.1}\" fill=\"#c0392b\"/></g>",
            h(key),
            120.0 - hok,
            (w * 0.9).max(1.0),
            120.0 - hok - hre,
            (w * 0.9).max(1.0),
        );
    }
    svg.push_str("</svg>");
    let _ = write!(
        svg,
        "<p class=\"caption\">Sessions (blue) and refusals (red) per {}, {} to {}; the tallest bar is {max}.</p>",
        if span_days { "day" } else { "hour" },
        h(buckets.keys().next().copied().unwrap_or_default()),
        h(buckets.keys().next_back().copied().unwrap_or_default()),
    );
    svg
}

pub(super) fn sessions(query: &Query, rows: &[&SessionRecord], total: usize, csrf: &str) -> String {
    let mut body = String::from("<h1>Sessions</h1>");
    let sel = |v: &str, cur: &str| if v == cur { " selected" } else { "" };
    let _ = write!(
        body,
        "<form class=\"filters\" method=\"get\" action=\"/sessions\">\
         <input name=\"user\" placeholder=\"user\" value=\"{}\">\
         <input name=\"target\" placeholder=\"target\" value=\"{}\">\
         <input name=\"login\" placeholder=\"login\" value=\"{}\">\
         <select name=\"action\"><option value=\"\">any action</option>\
         <option{}>allow</option><option{}>audit</option><option{}>block</option><option{}>refused</option></select>\
         <input name=\"from\" type=\"date\" value=\"{}\" title=\"from\">\
         <input name=\"to\" type=\"date\" value=\"{}\" title=\"to (inclusive)\">\
         <select name=\"recorded\"><option value=\"\">recorded or not</option>\
         <option value=\"yes\"{}>recorded</option><option value=\"no\"{}>not recorded</option></select>\
         <select name=\"sort\"><option value=\"start\">by start</option><option value=\"user\"{}>by user</option>\
         <option value=\"target\"{}>by target</option><option value=\"duration\"{}>by duration</option>\
         <option value=\"bytes\"{}>by bytes</option></select>\
         <select name=\"order\"><option value=\"desc\">newest / largest first</option>\
         <option value=\"asc\"{}>oldest / smallest first</option></select>\
         <button>Filter</button></form>",
        h(&query.user),
        h(&query.target),
        h(&query.login),
        sel("allow", &query.action),
        sel("audit", &query.action),
        sel("block", &query.action),
        sel("refused", &query.action),
        h(&query.from),
        h(&query.to),
        sel("yes", &query.recorded),
        sel("no", &query.recorded),
        sel("user", &query.sort),
        sel("target", &query.sort),
        sel("duration", &query.sort),
        sel("bytes", &query.sort),
        sel("asc", &query.order),
    );
    body.push_str(&chart(rows));
    let pages = rows.len().div_ceil(PAGE).max(1);
    let current = query.page.min(pages - 1);
    let _ = write!(
        body,
        "<p>{} of {total} session(s) match; page {} of {pages}.</p>\
         <table><thead><tr><th>Start</th><th>User</th><th>Target</th><th>Login</th><th>Action</th>\
         <th>Seconds</th><th>Bytes in</th><th>Bytes out</th><th>Recorded</th><th>Policy / reason</th></tr></thead><tbody>",
        rows.len(),
        current + 1
    );
    for r in rows.iter().skip(current * PAGE).take(PAGE) {
        let _ = write!(
            body,
            "<tr><td><a href=\"/session/{}\">{}</a></td><td>{}</td><td>{}:{}</td><td>{}</td>{}\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{} {}</td></tr>",
            q(&r.id),
            h(r.start.get(..19).unwrap_or(&r.start)),
            h(&r.email),
            h(&r.target_host),
            r.target_port,
            h(&r.login),
            action_cell(&r.action),
            seconds(r.duration_ms),
            r.bytes_from_client,
            r.bytes_to_client,
            if r.command_logs.is_empty() { "" } else { "yes" },
            h(r.policy.as_deref().unwrap_or("-")),
            h(&r.reason)
        );
    }
    body.push_str("</tbody></table><div class=\"pager\">");
    let link = |p: usize, label: &str| {
        format!(
            "<a href=\"/sessions?user={}&amp;target={}&amp;login={}&amp;action={}&amp;from={}&amp;to={}&amp;recorded={}&amp;sort={}&amp;order={}&amp;page={p}\">{label}</a>",
            q(&query.user),
            q(&query.target),
            q(&query.login),
            q(&query.action),
            q(&query.from),
            q(&query.to),
            q(&query.recorded),
            q(&query.sort),
            q(&query.order)
        )
    };
    if current > 0 {
        body.push_str(&link(current - 1, "&larr; newer page"));
    }
    if current + 1 < pages {
        body.push_str(&link(current + 1, "older page &rarr;"));
    }
    body.push_str("</div>");
    page("Sessions", Some(csrf), &body)
}

/// A running session as the live page's script gets it from `/live.json`.
pub(super) fn live_row(r: &SessionRecord, now: std::time::SystemTime) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "since": r.start.get(..19).unwrap_or(&r.start),
        "user": r.email,
        "source": r.source,
        "target": format!("{}:{}", r.target_host, r.target_port),
        "login": r.login,
        "action": r.action,
        "seconds": r.elapsed_at(now).as_secs(),
        "replica": r.replica,
    })
}

/// The running sessions; host/console-web/live.js keeps the table current (rows come
/// and go, a reason being typed is kept) by polling `/live.json`.
pub(super) fn live(rows: &[SessionRecord], csrf: &str) -> String {
    let now = std::time::SystemTime::now();
    let mut body = format!(
        "<h1>Live sessions</h1><p><span id=\"count\">{}</span> session(s) running; \
         <span id=\"updated\">this list updates by itself</span>.</p>\
         <table id=\"live\" data-csrf=\"{}\"><thead><tr><th>Since</th><th>User</th><th>Source</th>\
         <th>Target</th><th>Login</th><th>Action</th><th>Seconds</th><th>Replica</th><th>End it</th>\
         </tr></thead><tbody>",
        rows.len(),
        h(csrf)
    );
    for r in rows {
        let _ = write!(
            body,
            "<tr data-id=\"{}\"><td><a href=\"/session/{id}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td>{}<td class=\"n\">{}</td><td>{}</td><td><form method=\"post\" action=\"/live/{id}/end\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input name=\"reason\" placeholder=\"reason\" required maxlength=\"200\"> <button>End session</button></form></td></tr>",
            h(&r.id),
            h(r.start.get(..19).unwrap_or(&r.start)),
            h(&r.email),
            h(&r.source),
            h(&format!("{}:{}", r.target_host, r.target_port)),
            h(&r.login),
            action_cell(&r.action),
            r.elapsed_at(now).as_secs(),
            h(&r.replica),
            h(csrf),
            id = q(&r.id),
        );
    }
    body.push_str("</tbody></table><script src=\"/assets/live.js\"></script>");
    page("Live sessions", Some(csrf), &body)
}

pub(super) fn session(r: &SessionRecord, running: bool, csrf: &str) -> String {
    let mut body = format!("<h1>Session {}</h1><dl>", h(&r.id));
    let fields: [(&str, String); 17] = [
        (
            "State",
            if running {
                "running".into()
            } else {
                "ended".into()
            },
        ),
        ("User", r.email.clone()),
        ("Groups", r.groups.join(", ")),
        ("Authentication", r.authentication.clone()),
        ("Source", r.source.clone()),
        ("Via", r.via.clone()),
        (
            "Target",
            format!(
                "{}:{} ({})",
                r.target_host,
                r.target_port,
                r.target_ip.as_deref().unwrap_or("not resolved")
            ),
        ),
        ("Login", r.login.clone()),
        (
            "Decision",
            format!(
                "{}{}",
                r.action,
                if r.command_logging {
                    ", command logging"
                } else {
                    ""
                }
            ),
        ),
        (
            "Deciding module",
            r.policy.clone().unwrap_or_else(|| "-".into()),
        ),
        ("Reason", r.reason.clone()),
        ("Start", r.start.clone()),
        ("End", r.end.clone()),
        ("Duration", format!("{} s", seconds(r.duration_ms))),
        (
            "Bytes",
            format!(
                "{} from the client, {} to the client",
                r.bytes_from_client, r.bytes_to_client
            ),
        ),
        ("Closed because", r.close_reason.clone()),
        ("Replica", r.replica.clone()),
    ];
    for (k, v) in fields {
        let _ = write!(body, "<dt>{}</dt><dd>{}</dd>", h(k), h(&v));
    }
    body.push_str("</dl><h2>Channels</h2><table><thead><tr><th>Kind</th><th>Allowed</th><th>Exit</th><th>Refused because</th></tr></thead><tbody>");
    for c in &r.channels {
        let exit = match (&c.exit_status, &c.exit_signal) {
            (Some(s), _) => format!("status {s}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => String::new(),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            h(&c.kind),
            if c.allowed { "yes" } else { "no" },
            h(&exit),
            h(c.denied_reason.as_deref().unwrap_or(""))
        );
    }
    body.push_str("</tbody></table>");
    if !r.command_logs.is_empty() {
        body.push_str(
            "<h2>Command logs</h2><p>Sealed to the auditor's key: the console cannot read them. \
             Replay one here (your browser decrypts it with the key you pick; the key and the \
             text stay in the page), or decrypt a download with \
             <code>portcullis decrypt -i FILE -k KEY</code> (or <code>portcullis replay</code>).</p><ul>",
        );
        for (n, log) in r.command_logs.iter().enumerate() {
            let _ = write!(
                body,
                "<li><a href=\"/session/{id}/replay/{n}\">Replay</a> \
                 <a href=\"/session/{id}/log/{n}\">Download</a> <code>{}</code></li>",
                h(log),
                id = q(&r.id),
            );
        }
        body.push_str("</ul>");
    }
    page("Session", Some(csrf), &body)
}

/// The replay page of a session's `n`-th command log: the key is picked here and read
/// by the page's script only (host/console-web/replay.js), which fetches the sealed
/// bytes, decrypts them with the log reader built for WebAssembly, and plays them.
pub(super) fn replay(r: &SessionRecord, n: usize, log: &str, csrf: &str) -> String {
    let id = q(&r.id);
    let body = format!(
        "<h1>Replay</h1><p><a href=\"/session/{id}\">Session {}</a>: {} as {} on {}:{}, \
         started {}. Command log <code>{}</code>.</p>\
         <div id=\"replay\" data-log=\"/session/{id}/log/{n}\">\
         <p>The log is sealed to the auditors' key. Pick your private key file (<code>sshkey</code>): \
         this page decrypts the log in your browser; neither the key nor the text is sent anywhere.</p>\
         <p><label>Private key file <input type=\"file\" id=\"key\"></label></p>\
         <p id=\"status\" role=\"status\"></p>\
         <div id=\"controls\" class=\"controls\" hidden>\
         <label>Speed <select id=\"speed\"><option>0.5</option><option selected>1</option>\
         <option>2</option><option>4</option><option>8</option><option>16</option></select></label>\
         <form id=\"search\"><input id=\"query\" type=\"search\" placeholder=\"text in the output\"> \
         <button>Search</button></form></div>\
         <ol id=\"hits\"></ol><div id=\"player\"></div></div>\
         <script src=\"/assets/player.js\"></script><script src=\"/assets/replay.js\"></script>",
        h(&r.id),
        h(&r.email),
        h(&r.login),
        h(&r.target_host),
        r.target_port,
        h(&r.start),
        h(log),
    );
    page_with(
        "Replay",
        Some(csrf),
        "<link rel=\"stylesheet\" href=\"/assets/player.css\">",
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            h("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(h("a\u{1b}[31mb"), "a\u{fffd}[31mb");
        let r = SessionRecord {
            id: "abc".into(),
            email: "<img src=x onerror=alert(1)>@example.com".into(),
            ..Default::default()
        };
        let html = session(&r, false, "token");
        assert!(!html.contains("<img src=x"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    }
}
