//! The router: public routes (login, the OpenAPI document, the console) and the private ones
//! behind authentication, each module's routes stating their roles. The same routes give the
//! OpenAPI document ([`document`]), so the two cannot differ.

use axum::middleware;
use axum::Router;
use utoipa::openapi::OpenApi as Document;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Shared;
use crate::openapi::{self, ApiDoc};
use crate::{auth, console, groups, hierarchy, initiators, metrics, mirrors, users, volumes, webhook};

/// The routes anyone may call.
fn public() -> OpenApiRouter<Shared> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi::serve))
        .routes(routes!(users::login))
        .merge(console::routes())
}

/// The routes behind authentication.
fn private() -> OpenApiRouter<Shared> {
    OpenApiRouter::default()
        .merge(hierarchy::routes())
        .merge(volumes::routes())
        .merge(mirrors::routes())
        .merge(groups::routes())
        .merge(initiators::routes())
        .merge(users::routes())
        .merge(metrics::routes())
        .merge(webhook::routes())
}

/// The OpenAPI document of the API that [`router`] serves.
pub fn document() -> Document {
    let (_, public) = public().split_for_parts();
    let (_, private) = private().split_for_parts();
    openapi::finish(public, private)
}

/// The whole API: public routes (login, the OpenAPI document, the console) and the private
/// ones behind authentication.
pub fn router(gw: Shared) -> Router {
    let (public, public_doc) = public().split_for_parts();
    let (private, private_doc) = private().split_for_parts();
    openapi::publish(&openapi::finish(public_doc, private_doc));
    let private = private.layer(middleware::from_fn_with_state(gw.clone(), auth::authenticate)).with_state(gw.clone());
    public.with_state(gw).merge(private)
}
