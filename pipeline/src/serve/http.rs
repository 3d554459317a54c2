//! HTTP for the analytics API and the dashboard: the shared state of their
//! handlers, JSON errors, the bearer token, the seed's security headers, and a
//! listener that bounds what a client can make the server hold: headers read
//! within [`HEADER_TIMEOUT`] and no larger than [`MAX_HEADER_BYTES`], no request
//! bodies (every endpoint is a GET), at most [`MAX_CONNECTIONS`] connections, and
//! a panic in a handler answered as a 500 instead of dropping the connection.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use datafusion::arrow::array::RecordBatch;
use futures::FutureExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use sluice_gate::token::{Identity, Refusal, Role, Verifier};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::lake::ServedLake;
use super::limits::Budget;

/// A client has this long to send a request's headers (a slow sender holds nothing longer).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a request's line and headers may take.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// HTTP connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 512;

/// What every HTTP handler shares.
pub struct Api {
    pub lake: Arc<ServedLake>,
    pub verifier: Verifier,
    pub budget: Arc<Budget>,
}

/// Serves `router` on `listener` until the process ends, within the limits above.
pub async fn serve(listener: TcpListener, router: Router) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = connections.clone().acquire_owned().await else { return };
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("http listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                tower_service::Service::call(&mut router.clone(), request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(socket), service);
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "http connection ended: {e}");
            }
            drop(permit);
        });
    }
}

/// The layers every route goes through, outermost last.
pub fn guarded(router: Router<Arc<Api>>, api: Arc<Api>) -> Router {
    router
        .layer(axum::middleware::from_fn(tokens_stay_local))
        .layer(axum::middleware::from_fn(no_bodies))
        .layer(axum::middleware::from_fn(panics_answered))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(api)
}

/// A bearer token over plain HTTP from another machine is refused, as over
/// Postgres: put the API behind a TLS proxy on this machine to expose it.
async fn tokens_stay_local(ConnectInfo(peer): ConnectInfo<SocketAddr>, request: axum::extract::Request, next: Next) -> Response {
    if request.headers().contains_key(header::AUTHORIZATION) && !peer.ip().is_loopback() {
        let why = "a token over unencrypted HTTP from another machine is refused: reach the API through a TLS proxy on the server, or over loopback";
        return Failure::new(StatusCode::UNAUTHORIZED, why).into_response();
    }
    next.run(request).await
}

/// Every endpoint is a GET without a body: one sent is refused before it is read.
async fn no_bodies(request: axum::extract::Request, next: Next) -> Response {
    let headers = request.headers();
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if headers.contains_key(header::TRANSFER_ENCODING) || length.is_some_and(|l| l > 0) || (headers.contains_key(header::CONTENT_LENGTH) && length.is_none()) {
        return Failure::new(StatusCode::PAYLOAD_TOO_LARGE, "this API takes no request body").into_response();
    }
    next.run(request).await
}

/// A panic in a handler is a bug: the client gets a 500, the server goes on.
async fn panics_answered(request: axum::extract::Request, next: Next) -> Response {
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("an HTTP handler panicked (the server goes on)");
            Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error (a bug in Sluice; the server goes on)").into_response()
        }
    }
}

/// The seed's security headers, on every answer.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("x-xss-protection", HeaderValue::from_static("1; mode=block"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The answer to a path no route takes.
pub async fn not_found() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "no such endpoint (see /api/v1/health, /api/v1/analytics/{learner,trainer,organization})")
}

/// `GET /api/v1/health`, for anyone: whether the lake can be listed, and how many tables it has
/// (not where it is: that is the operator's to know).
pub async fn health(State(api): State<Arc<Api>>) -> Response {
    match api.lake.tables().await {
        Ok(tables) => Json(json!({ "status": "ok", "tables": tables.len() })).into_response(),
        Err(e) => {
            tracing::warn!("health: {}", crate::catalog::storage::redact(&e.to_string()));
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "error": "the lake cannot be read (see the server's log)" }))).into_response()
        }
    }
}

/// An error answer: its status and `{"error": "..."}`.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<crate::error::Error> for Failure {
    fn from(e: crate::error::Error) -> Self {
        let message = crate::catalog::storage::redact(&e.to_string());
        Failure::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<super::session::Unanswered> for Failure {
    fn from(e: super::session::Unanswered) -> Self {
        match e {
            super::session::Unanswered::Stopped(message) => Failure::new(StatusCode::SERVICE_UNAVAILABLE, message),
            super::session::Unanswered::Failed(message) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, message),
        }
    }
}

/// The bearer token's identity, or 401 naming what is wrong with it.
pub fn authenticate(verifier: &Verifier, headers: &HeaderMap) -> Result<Identity, Failure> {
    let unauthorized = |why: String| Failure::new(StatusCode::UNAUTHORIZED, why);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(Refusal::Missing.to_string()));
    };
    let value = value.to_str().map_err(|_| unauthorized("the Authorization header is not text".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`".into()))?;
    verifier.verify(token).map_err(|r| unauthorized(r.to_string()))
}

/// 403 unless the identity has one of `roles`.
pub fn allow(identity: &Identity, endpoint: &str, roles: &[Role]) -> Result<(), Failure> {
    if roles.contains(&identity.role) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    Err(Failure::new(StatusCode::FORBIDDEN, format!("role {} may not call {endpoint} (roles that may: {})", identity.role.name(), names.join(", "))))
}

/// Rows as a JSON array of objects (nulls explicit).
pub fn to_json(batches: &[RecordBatch]) -> Result<Value, Failure> {
    let mut writer = datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, datafusion::arrow::json::writer::JsonArray>(Vec::new());
    for batch in batches {
        writer.write(batch).map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    }
    writer.finish().map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(json!([]));
    }
    serde_json::from_slice(&bytes).map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
