//! The auditors' web console (`[console] listen`, docs/console.md): the session log
//! with filters, sorting and paging, the live sessions with a button that ends one,
//! each session's record, and its sealed command logs to download.
//!
//! The console serves metadata and sealed bytes only: it holds no key that opens a
//! command log, and nothing it serves is a log's plaintext.
//!
//! Sign-in: the token of `[console] token_file`, exchanged for a random session
//! cookie (`HttpOnly`, `Secure`, `SameSite=Strict`). Every form carries the sign-in's
//! CSRF token, checked on every POST, and a POST from another origin is refused. Every
//! response carries a strict Content-Security-Policy (no inline script, nothing from
//! elsewhere). Every action is logged (`portcullis::console` target) with the
//! auditor's sign-in.

mod index;
mod pages;
mod sign_in;

use sign_in::{Auditor, CsrfForm, SignIn, refused_post};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::config::ConsoleConfig;
use crate::server::Shared;
use crate::sync::lock;

struct Console {
    shared: Arc<Shared>,
    config: ConsoleConfig,
    sign_ins: Mutex<HashMap<String, SignIn>>,
    /// Sign-ins at the identity provider not back yet, by their cookie.
    pending: Mutex<HashMap<String, (crate::identity::sso::PendingSignIn, Instant)>>,
    index: Mutex<index::SessionIndex>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

type St = State<Arc<Console>>;

/// Serves the console until the task is dropped.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    config: ConsoleConfig,
    listener: std::net::TcpListener,
) -> Result<(), String> {
    let console = Arc::new(Console {
        index: Mutex::new(index::SessionIndex::new(&shared.config.session_log)),
        shared,
        config: config.clone(),
        sign_ins: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/", get(|| async { Redirect::to("/sessions") }))
        .route("/login", get(sign_in::login_page).post(sign_in::login))
        .route("/login/oidc", get(sign_in::oidc_start))
        .route("/login/oidc/callback", get(sign_in::oidc_callback))
        .route("/logout", post(sign_in::logout))
        .route("/sessions", get(sessions))
        .route("/sessions.json", get(sessions_json))
        .route("/live", get(live))
        .route("/live.json", get(live_json))
        .route("/live/{id}/end", post(end_session))
        .route("/session/{id}", get(session))
        .route("/session/{id}/log/{n}", get(download))
        .route("/session/{id}/replay/{n}", get(replay))
        .route("/console.css", get(stylesheet))
        .route("/assets/{name}", get(asset))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(console);
    match &config.tls {
        None => {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
            tracing::info!(listen = %config.listen, "serving the console (plain HTTP, loopback only)");
            axum::serve(listener, app).await.map_err(|e| e.to_string())
        }
        Some((cert, key)) => {
            let tls = tls_config(cert, key)?;
            tracing::info!(listen = %config.listen, "serving the console (HTTPS)");
            axum_server::from_tcp_rustls(
                listener,
                axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)),
            )
            .map_err(|e| format!("cannot serve on {}: {e}", config.listen))?
            .serve(app.into_make_service())
            .await
            .map_err(|e| format!("cannot serve on {}: {e}", config.listen))
        }
    }
}

pub(crate) fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, String> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("console TLS {}: {e}", p.display()))
    };
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("console TLS {}: {e}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| format!("console TLS {}: {e}", key.display()))?
        .ok_or_else(|| format!("console TLS {}: no private key", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("console TLS: {e}"))
}

/// Headers every response carries.
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'; \
             style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The ended sessions (every replica's, with a shared store).
/// Shared, not copied: a page over 100,000 records clones none of them.
async fn ended(console: &Console) -> Result<Arc<Vec<crate::recording::SessionRecord>>, String> {
    if let Some(state) = &console.shared.state {
        return state
            .sessions(false)
            .await
            .map(Arc::new)
            .map_err(|e| e.to_string());
    }
    lock(&console.index).refresh().map_err(|e| e.to_string())
}

/// The running sessions (every replica's, with a shared store).
async fn running(console: &Console) -> Result<Vec<crate::recording::SessionRecord>, String> {
    if let Some(state) = &console.shared.state {
        return state.sessions(true).await.map_err(|e| e.to_string());
    }
    crate::recording::running_sessions(&console.shared.config.session_log)
        .map_err(|e| e.to_string())
}

async fn sessions(State(console): St, auditor: Auditor, Query(q): Query<index::Query>) -> Response {
    let all = match ended(&console).await {
        Ok(a) => a,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the sessions: {e}"),
            )
                .into_response();
        }
    };
    let rows = q.select(&all);
    tracing::debug!(target: "portcullis::console", auditor = %auditor.0.who, "viewed the sessions");
    Html(pages::sessions(&q, &rows, all.len(), &auditor.0.csrf)).into_response()
}

async fn sessions_json(
    State(console): St,
    _auditor: Auditor,
    Query(q): Query<index::Query>,
) -> Response {
    match ended(&console).await {
        Ok(all) => {
            let rows = q.select(&all);
            let page: Vec<_> = rows
                .iter()
                .skip(q.page * index::PAGE)
                .take(index::PAGE)
                .collect();
            axum::Json(serde_json::json!({ "total": rows.len(), "page": q.page, "sessions": page }))
                .into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

async fn live(State(console): St, auditor: Auditor) -> Response {
    match running(&console).await {
        Ok(rows) => Html(pages::live(&rows, &auditor.0.csrf)).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the running sessions: {e}"),
        )
            .into_response(),
    }
}

async fn live_json(State(console): St, _auditor: Auditor) -> Response {
    match running(&console).await {
        Ok(rows) => {
            let now = std::time::SystemTime::now();
            let rows: Vec<_> = rows.iter().map(|r| pages::live_row(r, now)).collect();
            axum::Json(serde_json::json!({ "sessions": rows })).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

async fn end_session(
    State(console): St,
    auditor: Auditor,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(r) = refused_post(&auditor, &headers, &form.csrf) {
        return r;
    }
    let reason = crate::text::sanitize(form.reason.trim(), 200);
    let reason = if reason.is_empty() {
        "no reason given".to_string()
    } else {
        reason
    };
    let why = format!("ended by an auditor: {reason}");
    let mut ended = console.shared.live.end(&id, why.clone());
    let mut held_by = console.shared.state.as_ref().map(|s| s.replica.clone());
    // Held by another replica: ask it, through the shared store.
    if !ended
        && let Some(state) = &console.shared.state
        && let Ok(running) = running(&console).await
        && let Some(r) = running.iter().find(|r| r.id == id)
    {
        held_by = Some(r.replica.clone());
        ended = match state.request_end(&id, &why).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(target: "portcullis::console", session = %id, "cannot ask replica {} to end the session: {e}", r.replica);
                false
            }
        };
    }
    tracing::warn!(target: "portcullis::console", auditor = %auditor.0.who, session = %id, %reason, ended, replica = %held_by.as_deref().unwrap_or(""), "auditor ended a session");
    if !ended {
        return (
            StatusCode::NOT_FOUND,
            Html(pages::message(
                "No such session is running (it ended, or the replica that holds it cannot be reached).",
            )),
        )
            .into_response();
    }
    Redirect::to("/live").into_response()
}

/// A session's record: ended, or running.
async fn find(console: &Console, id: &str) -> Option<(crate::recording::SessionRecord, bool)> {
    if let Ok(all) = ended(console).await
        && let Some(r) = all.iter().rev().find(|r| r.id == id).cloned()
    {
        return Some((r, false));
    }
    running(console)
        .await
        .ok()?
        .into_iter()
        .find(|r| r.id == id)
        .map(|r| (r, true))
}

/// A session's record and the name of its `n`-th command log, or what is missing.
async fn find_log(
    console: &Console,
    id: &str,
    n: usize,
) -> Result<(crate::recording::SessionRecord, String), &'static str> {
    let (record, _) = find(console, id).await.ok_or("no such session")?;
    let log = record
        .command_logs
        .get(n)
        .cloned()
        .ok_or("no such command log")?;
    Ok((record, log))
}

async fn session(State(console): St, auditor: Auditor, Path(id): Path<String>) -> Response {
    match find(&console, &id).await {
        Some((r, running)) => {
            tracing::info!(target: "portcullis::console", auditor = %auditor.0.who, session = %id, "viewed a session");
            Html(pages::session(&r, running, &auditor.0.csrf)).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            Html(pages::message("No such session.")),
        )
            .into_response(),
    }
}

/// The sealed bytes of a session's `n`-th command log, from the disk or the store.
async fn download(
    State(console): St,
    auditor: Auditor,
    Path((id, n)): Path<(String, usize)>,
) -> Response {
    let (_, log) = match find_log(&console, &id, n).await {
        Ok(found) => found,
        Err(missing) => return (StatusCode::NOT_FOUND, missing).into_response(),
    };
    let name = log
        .rsplit('/')
        .next()
        .unwrap_or("command.sshlog")
        .to_string();
    let dir = &console.shared.config.recording_dir;
    // A log is served from the recording directory only (a record names the file; it
    // must not be able to name another), or from the store.
    let local = dir.join(&name);
    let body = if local.is_file() && !name.contains("..") {
        match tokio::fs::File::open(&local).await {
            Ok(f) => Body::from_stream(tokio_util::io::ReaderStream::new(f)),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    } else {
        let Some((bucket, key)) = crate::recording::store::parse_url(&log) else {
            return (
                StatusCode::GONE,
                "the command log is no longer on this proxy's disk",
            )
                .into_response();
        };
        let store = match &console.shared.uploads {
            Some(u) if u.bucket() == bucket => u.store().clone(),
            _ => {
                return (
                    StatusCode::NOT_FOUND,
                    "the command log's bucket is not this proxy's store",
                )
                    .into_response();
            }
        };
        match store.stream(key).await {
            Ok(s) => Body::from_stream(s),
            Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        }
    };
    tracing::info!(target: "portcullis::console", auditor = %auditor.0.who, session = %id, log = %log, "downloaded a sealed command log");
    let disposition = format!(
        "attachment; filename=\"{}\"",
        name.replace(['"', '\\'], "_")
    );
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// The replay page of a session's `n`-th command log (the page decrypts; see
/// [`pages::replay`]).
async fn replay(
    State(console): St,
    auditor: Auditor,
    Path((id, n)): Path<(String, usize)>,
) -> Response {
    let (record, log) = match find_log(&console, &id, n).await {
        Ok(found) => found,
        Err(missing) => {
            return (StatusCode::NOT_FOUND, Html(pages::message(missing))).into_response();
        }
    };
    tracing::info!(target: "portcullis::console", auditor = %auditor.0.who, session = %id, log = %log, "opened a command log's replay");
    Html(pages::replay(&record, n, &log, &auditor.0.csrf)).into_response()
}

/// The replay page's assets, built into the binary by host/build.rs: the decryptor
/// (host/console-web built for WebAssembly), the page's script, and the terminal player
/// from npm. Served without sign-in: none of them holds anything of a session.
async fn asset(Path(name): Path<String>) -> Response {
    let (kind, bytes): (&str, &'static [u8]) = match name.as_str() {
        "decrypt.wasm" => (
            "application/wasm",
            include_bytes!(concat!(env!("OUT_DIR"), "/decrypt.wasm")),
        ),
        "player.js" => (
            "text/javascript",
            include_bytes!(concat!(env!("OUT_DIR"), "/player.js")),
        ),
        "player.css" => (
            "text/css",
            include_bytes!(concat!(env!("OUT_DIR"), "/player.css")),
        ),
        "replay.js" => (
            "text/javascript",
            include_bytes!("../../console-web/replay.js"),
        ),
        "live.js" => (
            "text/javascript",
            include_bytes!("../../console-web/live.js"),
        ),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], bytes).into_response()
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css")], pages::CSS).into_response()
}
