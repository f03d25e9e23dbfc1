//! API errors: a status and a message, answered as JSON `{"error": message, "status": code}`
//! (with `Retry-After` when the server asks the client to come back later).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error answer of the API: its HTTP status and a message for people. Handlers return
/// it; axum turns it into the JSON body (and `Retry-After` header) of the response.
#[derive(Debug)]
pub struct ApiError {
    /// the HTTP status (4xx: the request's fault, 5xx: the server's or the model's)
    pub status: StatusCode,
    /// what went wrong and, where it can, what to do about it
    pub message: String,
    /// seconds for a `Retry-After` header (busy or overloaded answers)
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with any status and no `Retry-After`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    /// 400: the request is malformed (a bad parameter, body or name).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    /// 404: no such unit, graph, page or endpoint, or not in this kind of directory.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    /// 503: the view cannot run here (no model named or in the cache, a dictionary that
    /// does not fit the model, a graph file missing what it needs).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    /// 500: the server failed (I/O, SQLite, a model error, a poisoned lock).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    /// Adds `Retry-After: seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(serde_json::json!({"error": self.message, "status": self.status.as_u16()})),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
