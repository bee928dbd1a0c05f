//! The OpenAPI document, generated from the routes and the types: each handler states its
//! path, parameters, bodies and the statuses its own code answers (`#[utoipa::path]`), and
//! the router (`utoipa_axum`) collects them as it routes them, so that the document lists
//! exactly the routes served. What the layers around the handlers add is stated here, once:
//! the credentials and the 401 and 403 of authentication, and the refusals of axum's
//! extractors (a body that is not JSON, or not of the declared type; a malformed query or
//! path).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, ContentBuilder, ObjectBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder, Type};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::auth::{operations, COOKIE};
use crate::model::{ErrorBody, Notification};

/// The parts of the document that no route gives: its title and description, the schemes of
/// credentials, the body of refusals.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cleave admin API",
        description = "Volumes, their mirrors on peer gateways, storage nodes, child control servers, tasks, \
events, clients, groups and users. Every call but the login, this document and the console needs credentials: \
`Authorization: Bearer <token>` with DIR/admin.token (admin) or a user's API token (that user's \
role), or the console's session cookie plus the X-Cleave-CSRF header on calls that change \
something. Roles: viewer reads; operator also runs volumes and tasks; admin also manages users, \
clients, groups, mirrors, the webhook and child controls (each operation names its role, also as `x-cleave-role`). A \
child control server also accepts the two tokens its parent derives from the cluster secret: \
one for GET calls only, and one with which the parent acts on it. Refusals carry \
`{\"error\": \"...\"}`; axum's own refusals of a malformed body, query or path are plain text."
    ),
    components(schemas(ErrorBody, Notification)),
    modifiers(&Credentials),
    tags(
        (name = "volumes", description = "Volumes and their upkeep"),
        (name = "mirrors", description = "Volumes mirrored to and from a peer gateway"),
        (name = "tasks", description = "Long work in the background"),
        (name = "access", description = "Clients (certificates), groups and grants"),
        (name = "users", description = "Login, one's own account, users and API tokens"),
        (name = "hierarchy", description = "Storage nodes, child controls, events"),
        (name = "webhook", description = "Events sent to an administrator's URL, signed"),
        (name = "console", description = "The web console (static files)"),
        (name = "meta", description = "This document"),
    )
)]
pub(crate) struct ApiDoc;

struct Credentials;

impl Modify for Credentials {
    fn modify(&self, doc: &mut Document) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        c.add_security_scheme("session", SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(COOKIE))));
    }
}

fn error_json() -> Content {
    ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorBody::name()))).build()
}

fn plain_text() -> Content {
    ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build()
}

/// Adds `status` to an operation's responses, or `content_type` to the ones it has.
fn answer(
    responses: &mut utoipa::openapi::Responses,
    status: u16,
    description: &str,
    content_type: &str,
    content: Content,
) {
    let entry = responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| RefOr::T(ResponseBuilder::new().description(description).build()));
    if let RefOr::T(r) = entry {
        r.content.entry(content_type.to_string()).or_insert(content);
    }
}

/// The finished document: the public routes as they are, the private ones with the
/// credentials they need and the refusals of authentication; every route with the refusals of
/// its extractors.
pub(crate) fn finish(mut public: Document, private: Document) -> Document {
    let mut private = private;
    for item in private.paths.paths.values_mut() {
        for op in operations(item) {
            op.security = Some(vec![
                SecurityRequirement::new("bearer", Vec::<String>::new()),
                SecurityRequirement::new("session", Vec::<String>::new()),
            ]);
            let r = &mut op.responses;
            answer(r, 401, "No credentials, or wrong ones.", "application/json", error_json());
            answer(
                r,
                403,
                "The caller's role is below the one the route needs, or a session's X-Cleave-CSRF header is \
                 missing or wrong.",
                "application/json",
                error_json(),
            );
        }
    }
    public.merge(private);
    for item in public.paths.paths.values_mut() {
        for op in operations(item) {
            let params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let body = op.request_body.is_some();
            let r = &mut op.responses;
            if params || body {
                answer(r, 400, "A malformed request.", "text/plain", plain_text());
            }
            if body {
                answer(r, 415, "The body is not sent as application/json.", "text/plain", plain_text());
                answer(r, 422, "The body is JSON but not of the declared type.", "text/plain", plain_text());
            }
        }
    }
    public
}

static DOCUMENT: OnceLock<String> = OnceLock::new();

/// Keeps the document that [`serve`] answers with (the first one given wins: the router's
/// routes are the same every time). Given by the router, so that this module needs none.
pub(crate) fn publish(doc: &Document) {
    DOCUMENT.get_or_init(|| doc.to_pretty_json().expect("the document serialises"));
}

/// `GET /api/v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document of this API.", content_type = "application/json", body = Object))
)]
pub(crate) async fn serve() -> Response {
    // Published by the router that routes here, before it serves anything.
    let doc = DOCUMENT.get().map_or("{}", String::as_str);
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}
