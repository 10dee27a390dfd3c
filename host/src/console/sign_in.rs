//! Signing auditors in and out: at the identity provider (authorization code with
//! PKCE) or with the token; the session cookie, the CSRF token every form carries,
//! and the `Auditor` every page asks for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Console, St, pages};
use crate::sync::lock;

const COOKIE: &str = "portcullis_console";

/// A signed-in auditor.
#[derive(Debug, Clone)]
pub(super) struct SignIn {
    /// Who, for the audit log: the sign-in's short id (the token is shared).
    pub(super) who: String,
    pub(super) csrf: String,
    pub(super) expires: Instant,
}

/// The auditor a request comes from, by its cookie; others go to the sign-in page.
pub(super) struct Auditor(pub(super) SignIn);

impl FromRequestParts<Arc<Console>> for Auditor {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Response> {
        let id = cookie(&parts.headers).ok_or_else(|| Redirect::to("/login").into_response())?;
        let mut sign_ins = lock(&console.sign_ins);
        let now = Instant::now();
        sign_ins.retain(|_, s| s.expires > now);
        sign_ins
            .get(&id)
            .cloned()
            .map(Auditor)
            .ok_or_else(|| Redirect::to("/login").into_response())
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    named_cookie(headers, COOKIE)
}

fn named_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The refusal of a POST whose CSRF token is not the sign-in's, or that a browser says
/// comes from another origin; none for a good one.
pub(super) fn refused_post(auditor: &Auditor, headers: &HeaderMap, csrf: &str) -> Option<Response> {
    let foreign = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s != "same-origin" && s != "none");
    if foreign || !same(csrf.as_bytes(), auditor.0.csrf.as_bytes()) {
        tracing::warn!(target: "portcullis::console", auditor = %auditor.0.who, "refused a form without this sign-in's CSRF token");
        return Some(
            (
                StatusCode::FORBIDDEN,
                "refused: the form did not come from this console",
            )
                .into_response(),
        );
    }
    None
}

/// Compares in time independent of where the bytes differ.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// How auditors may sign in here: with the token, at the identity provider.
fn methods(console: &Console) -> (bool, bool) {
    (
        console.config.token.is_some(),
        console.config.auditors_group.is_some() && console.shared.sso.is_some(),
    )
}

pub(super) async fn login_page(State(console): St) -> Html<String> {
    Html(pages::login(None, methods(&console)))
}

/// Starts a new sign-in for `who`: the session cookie, on `response`.
fn signed_in(console: &Console, who: String, mut response: Response) -> Response {
    let id = random_hex();
    lock(&console.sign_ins).insert(
        id.clone(),
        SignIn {
            who: who.clone(),
            csrf: random_hex(),
            expires: Instant::now() + console.config.sign_in_ttl,
        },
    );
    tracing::info!(target: "portcullis::console", auditor = %who, "auditor signed in to the console");
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        console.config.sign_in_ttl.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

const PENDING_COOKIE: &str = "portcullis_console_pending";
/// How long a browser may take at the identity provider.
const PENDING_TTL: Duration = Duration::from_secs(600);

/// Sends the browser to the identity provider (authorization code with PKCE).
pub(super) async fn oidc_start(State(console): St) -> Response {
    let (Some(sso), true) = (&console.shared.sso, methods(&console).1) else {
        return (
            StatusCode::NOT_FOUND,
            "sign-in at the identity provider is not set up",
        )
            .into_response();
    };
    let back = format!("{}/login/oidc/callback", console.config.public_url);
    let (url, pending) = match sso.sign_in_url(&back).await {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(target: "portcullis::console", "console sign-in: {e}");
            return (
                StatusCode::BAD_GATEWAY,
                Html(pages::message("The identity provider cannot be reached.")),
            )
                .into_response();
        }
    };
    let id = random_hex();
    {
        let mut all = lock(&console.pending);
        let now = Instant::now();
        all.retain(|_, (_, at)| now.duration_since(*at) < PENDING_TTL);
        if all.len() >= 1000 {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sign-ins in progress",
            )
                .into_response();
        }
        all.insert(id.clone(), (pending, now));
    }
    // Lax: the provider sends the browser back with a cross-site navigation.
    let cookie = format!(
        "{PENDING_COOKIE}={id}; Path=/login/oidc; HttpOnly; Secure; SameSite=Lax; Max-Age={}",
        PENDING_TTL.as_secs()
    );
    let mut response = Redirect::to(&url).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

#[derive(Deserialize)]
pub(super) struct Callback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
}

/// Where the identity provider sends the browser back: the code is exchanged, the ID
/// token checked, and a member of the auditors group signed in.
pub(super) async fn oidc_callback(
    State(console): St,
    headers: HeaderMap,
    Query(back): Query<Callback>,
) -> Response {
    let refuse =
        |status: StatusCode, text: &str| (status, Html(pages::message(text))).into_response();
    let (Some(sso), Some(group)) = (&console.shared.sso, &console.config.auditors_group) else {
        return refuse(
            StatusCode::NOT_FOUND,
            "Sign-in at the identity provider is not set up.",
        );
    };
    let pending = named_cookie(&headers, PENDING_COOKIE)
        .and_then(|id| lock(&console.pending).remove(&id))
        .filter(|(_, at)| at.elapsed() < PENDING_TTL);
    let Some((pending, _)) = pending else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started here, or took too long: sign in again.",
        );
    };
    if !back.error.is_empty() {
        tracing::warn!(target: "portcullis::console", error = %crate::text::sanitize(&back.error, 100), "console sign-in refused at the identity provider");
        return refuse(
            StatusCode::FORBIDDEN,
            "The identity provider refused the sign-in.",
        );
    }
    if !same(back.state.as_bytes(), pending.state.as_bytes()) {
        tracing::warn!(target: "portcullis::console", "console sign-in refused: the state does not match");
        return refuse(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started here: sign in again.",
        );
    }
    let redirect = format!("{}/login/oidc/callback", console.config.public_url);
    let claims = match sso.finish_sign_in(&redirect, &back.code, pending).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(target: "portcullis::console", "console sign-in refused: {e}");
            return refuse(StatusCode::FORBIDDEN, &e.user_message());
        }
    };
    if !claims.groups.iter().any(|g| g == group) {
        tracing::warn!(target: "portcullis::console", user = %claims.email, %group, "console sign-in refused: not in the auditors group");
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("{} is not in the auditors group.", claims.email),
        );
    }
    // A page that moves on by itself: a SameSite=Strict cookie set at the end of a
    // cross-site redirect is not sent on a redirect that follows it.
    signed_in(
        &console,
        claims.email,
        Html(pages::moving_on("/sessions")).into_response(),
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

pub(super) async fn login(
    State(console): St,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(token) = &console.config.token else {
        return (StatusCode::NOT_FOUND, "token sign-in is off").into_response();
    };
    if !same(form.token.trim().as_bytes(), token.as_bytes()) {
        tracing::warn!(target: "portcullis::console", peer = ?headers.get("x-forwarded-for"), "console sign-in refused: wrong token");
        // Slows guessing down.
        tokio::time::sleep(Duration::from_secs(1)).await;
        return (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(
                Some("That is not the console's token."),
                methods(&console),
            )),
        )
            .into_response();
    }
    let who = format!(
        "token-sign-in-{}",
        random_hex().get(..8).unwrap_or_default()
    );
    signed_in(&console, who, Redirect::to("/sessions").into_response())
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    pub(super) csrf: String,
    #[serde(default)]
    pub(super) reason: String,
}

pub(super) async fn logout(
    State(console): St,
    auditor: Auditor,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(r) = refused_post(&auditor, &headers, &form.csrf) {
        return r;
    }
    lock(&console.sign_ins).retain(|_, s| s.csrf != auditor.0.csrf);
    tracing::info!(target: "portcullis::console", auditor = %auditor.0.who, "auditor signed out");
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "portcullis_console=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}
