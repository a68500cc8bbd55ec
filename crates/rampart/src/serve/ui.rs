//! The web dashboard: a page shell, one script and one stylesheet, all compiled into
//! the binary (no CDN, nothing fetched from elsewhere), behind the same tokens as the
//! API. Signing in stores the token in an HttpOnly, SameSite=Strict cookie; changes
//! made with it also need the `X-Rampart-UI` header, which other sites cannot send.
//!
//! Owns the sign-in flow and serving the assets. The page reads the public API.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::auth::Caller;
use super::error::ApiError;
use super::{App, SESSION_COOKIE};

const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

/// The page's content security policy: only this server's own script, style and API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The sign-in page has no script and one inline style.
const LOGIN_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const SHELL: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>rampart</title><link rel="stylesheet" href="/ui/app.css"></head>
<body><header><h1>rampart</h1><span class="spacer"></span><span id="who"></span>
<button id="logout" type="button">Sign out</button></header>
<main id="view"><p>Loading…</p></main>
<script src="/ui/app.js"></script></body></html>
"#;

fn login_page(message: &str) -> String {
    let note = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"err\">{message}</p>")
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>rampart: sign in</title>
<style>body{{font:14px system-ui,sans-serif;background:#f7f8fa;display:flex;justify-content:center;padding-top:12vh}}
form{{background:#fff;border:1px solid #e4e7ec;border-radius:8px;padding:24px;width:420px}}
input{{width:100%;padding:8px;margin:8px 0 12px;box-sizing:border-box}}button{{padding:8px 16px}}.err{{color:#c4320a}}</style></head>
<body><form method="post" action="/ui/login"><h1>rampart</h1>
<p>Sign in with an API token (<code>rampart token create --role viewer --name NAME</code>).</p>{note}
<label for="token">Token</label><input id="token" name="token" type="password" autocomplete="off" autofocus>
<button id="sign-in" type="submit">Sign in</button></form></body></html>
"#
    )
}

fn html(status: StatusCode, body: String, csp: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// `GET /`: the dashboard, or (401) the sign-in page for a browser, or the JSON
/// error for anything else.
pub async fn index(headers: HeaderMap, caller: Result<Caller, ApiError>) -> Response {
    match caller {
        Ok(_) => html(StatusCode::OK, SHELL.to_string(), CSP),
        Err(_) if wants_html(&headers) => html(StatusCode::UNAUTHORIZED, login_page(""), LOGIN_CSP),
        Err(e) => e.into_response(),
    }
}

/// `GET /ui/app.js`.
pub async fn script(caller: Caller) -> Response {
    let _ = caller;
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
        .into_response()
}

/// `GET /ui/app.css`.
pub async fn style(caller: Caller) -> Response {
    let _ = caller;
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
        .into_response()
}

/// Decodes `application/x-www-form-urlencoded` and returns the value of `key`.
fn form_value(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let raw = text
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)?
        .1;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// How long a dashboard session lasts.
const SESSION_SECONDS: u32 = 12 * 3600;

/// Whether a browser says the request came from another site. Browsers send
/// `Sec-Fetch-Site`, which then decides alone (anything but `same-origin` or `none`);
/// without it, an `Origin` that is not this server (`null` included), compared with
/// `X-Forwarded-Host` when a proxy in front set one, else `Host`. A client that sends
/// neither (curl, a script) is not a browser led there.
fn from_another_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("?"));
    if let Some(site) = text("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = text("origin") else {
        return false;
    };
    let Some(host) = text("x-forwarded-host").or_else(|| text("host")) else {
        return true;
    };
    let host = host.split(',').next().unwrap_or_default().trim();
    origin
        .split_once("://")
        .is_none_or(|(_, authority)| !authority.eq_ignore_ascii_case(host))
}

/// `POST /ui/login`: a form with `token`. One posted from another site's page is
/// refused: it would sign the browser in with that site's token (login CSRF).
pub async fn login(
    State(app): State<App>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if from_another_site(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            login_page("Sign in from this server's own page."),
            LOGIN_CSP,
        );
    }
    let token = form_value(&body, "token").unwrap_or_default();
    let token = token.trim();
    let known = !token.is_empty()
        && token.len() <= 200
        && token.bytes().all(|b| b.is_ascii_graphic())
        && matches!(app.store.token(token).await, Ok(Some(_)));
    if !known {
        return html(
            StatusCode::UNAUTHORIZED,
            login_page("That token is unknown or revoked."),
            LOGIN_CSP,
        );
    }
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_SECONDS}"
    );
    let mut response = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `POST /ui/logout`.
pub async fn logout(caller: Caller) -> Response {
    let _ = caller;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("rampart_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    response
}
