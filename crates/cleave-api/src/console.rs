//! The web console: one page, a stylesheet and a script, embedded in the binary and served
//! by control. No build step: the script is plain JavaScript that calls the admin API with
//! the login session; the API decides what each role may do, the page only hides what the
//! role cannot use.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Shared;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/style.css");

/// Only our own script and style; no framing, no sniffing, no referrer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `/`: to the console.
#[utoipa::path(get, path = "/", tag = "console", responses((status = 303, description = "To `/console/`.")))]
async fn root() -> Redirect {
    Redirect::to("/console/")
}

/// `/console`: to the console.
#[utoipa::path(get, path = "/console", tag = "console", responses((status = 303, description = "To `/console/`.")))]
async fn console() -> Redirect {
    Redirect::to("/console/")
}

/// The console's page.
#[utoipa::path(get, path = "/console/", tag = "console",
    responses((status = 200, description = "The page.", content_type = "text/html", body = String)))]
async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// The console's script.
#[utoipa::path(get, path = "/console/app.js", tag = "console",
    responses((status = 200, description = "The script.", content_type = "text/javascript", body = String)))]
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The console's stylesheet.
#[utoipa::path(get, path = "/console/style.css", tag = "console",
    responses((status = 200, description = "The stylesheet.", content_type = "text/css", body = String)))]
async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The console's files, public: the page asks for a login before it shows anything.
pub(crate) fn routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::default()
        .routes(routes!(root))
        .routes(routes!(console))
        .routes(routes!(index))
        .routes(routes!(script))
        .routes(routes!(style))
}
