//! Errors become HTTP statuses here, and only here: [`ApiError`] wraps a [`GatewayError`]
//! (whose kind decides the status) or one of the few refusals that only HTTP has.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cleave_gateway::GatewayError;

/// What a handler fails with. The body is always `{"error": "..."}`.
#[derive(Debug)]
pub enum ApiError {
    Gateway(GatewayError),
    /// No credentials, or wrong ones (401).
    Unauthorized(String),
    /// Too many failed logins for a name (429).
    TooManyRequests(String),
    /// A child control that does not answer (502).
    BadGateway(String),
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        ApiError::Gateway(e)
    }
}

/// The status of each kind of gateway error.
pub fn status(e: &GatewayError) -> StatusCode {
    match e {
        GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
        GatewayError::Conflict(_) => StatusCode::CONFLICT,
        GatewayError::Invalid(_) => StatusCode::BAD_REQUEST,
        GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
        GatewayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, message) = match self {
            ApiError::Gateway(e) => (status(&e), e.message().to_string()),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, m),
        };
        (code, Json(crate::model::ErrorBody { error: message })).into_response()
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;
