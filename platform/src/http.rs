//! HTTP conventions shared by every VokeTag API: request and correlation ids, W3C trace
//! context, access logs with `latency_ms`, request metrics, the single JSON error envelope,
//! a JSON extractor whose rejections use it, and the health endpoints.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Instant;
use tracing::Instrument;
use voketag_schemas::{ErrorBody, ErrorEnvelope};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Identity of the request being served, visible to handlers and to [`ApiError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: String,
    pub traceparent: String,
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

impl RequestContext {
    /// The context of the request this task is serving, if any.
    pub fn current() -> Option<RequestContext> {
        CONTEXT.try_with(Clone::clone).ok()
    }

    /// A context for work that does not start from a request (workers, CLI).
    pub fn background() -> RequestContext {
        let id = uuid::Uuid::now_v7().to_string();
        RequestContext {
            request_id: id.clone(),
            correlation_id: id,
            traceparent: new_traceparent(),
        }
    }
}

/// An id a client may choose: 1 to 128 visible ASCII characters.
fn acceptable_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_string())
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
fn valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// Middleware: ids, trace context, span, access log and metrics for every request.
pub async fn observe(service: &'static str, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let headers = request.headers();
    let request_id = headers
        .get(&X_REQUEST_ID)
        .and_then(acceptable_id)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let correlation_id = headers
        .get(&X_CORRELATION_ID)
        .and_then(acceptable_id)
        .unwrap_or_else(|| request_id.clone());
    let traceparent = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|s| valid_traceparent(s))
        .map(str::to_string)
        .unwrap_or_else(new_traceparent);
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        correlation_id = %correlation_id,
        http.method = %method,
        http.route = %route,
    );
    let context = RequestContext {
        request_id: request_id.clone(),
        correlation_id: correlation_id.clone(),
        traceparent,
    };
    let mut response = CONTEXT
        .scope(context, next.run(request).instrument(span.clone()))
        .await;
    let latency = started.elapsed();
    let status = response.status().as_u16();
    let _entered = span.enter();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::error!(http.status = status, latency_ms, "request failed");
    } else {
        tracing::info!(http.status = status, latency_ms, "request completed");
    }
    let labels = [
        ("service", service.to_string()),
        ("method", method.to_string()),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels[..3])
        .record(latency.as_secs_f64());
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        h.insert(X_CORRELATION_ID, v);
    }
    response
}

/// Every failed request answers with this, rendered as the JSON error envelope.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub details: serde_json::Value,
    /// Extra response headers (`Retry-After`, `WWW-Authenticate`); rarely more than one.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            details: serde_json::Value::Object(Default::default()),
            headers: Vec::new(),
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// Not found, also for another factory's resources, so nothing about them leaks.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// Logs the cause and answers without exposing it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; quote the request_id to support",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = RequestContext::current()
            .map(|c| c.request_id)
            .unwrap_or_default();
        let body = ErrorEnvelope {
            error: ErrorBody {
                code: self.code,
                message: self.message,
                request_id,
                details: self.details,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// `axum::Json` whose rejections answer with the error envelope and say what was wrong.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::JsonDataError(e) => ApiError::unprocessable(
            "invalid_body",
            format!("the body does not match the schema: {}", e.body_text()),
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {}", e.body_text()),
        ),
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path` whose rejection names the bad segment in the envelope.
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(ApiError::bad_request("invalid_path", rejection.body_text())),
        }
    }
}

/// `axum::extract::Query` whose rejection says which parameter is wrong, in the envelope.
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_query",
                rejection.body_text(),
            )),
        }
    }
}

/// Finishes an API's router the way every VokeTag API is served: unknown routes and
/// methods answer in the envelope, a request that takes longer than `timeout` answers 503,
/// and every request goes through [`observe`] as `service`.
pub fn conventions<S>(
    api: axum::Router<S>,
    state: S,
    service: &'static str,
    timeout: std::time::Duration,
) -> axum::Router
where
    S: Clone + Send + Sync + 'static,
{
    api.fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| observe(service, req, next),
        ))
}

/// Fallback for unknown routes, in the envelope.
pub async fn route_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// `/v1/health`: the process is alive.
pub async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// `/metrics` in Prometheus text format.
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::metrics_handle().render(),
    )
        .into_response()
}

/// Builds the `/v1/ready` answer from named dependency checks.
pub fn readiness(checks: Vec<(&'static str, Result<(), String>)>) -> Response {
    let failing: Vec<_> = checks
        .iter()
        .filter_map(|(name, r)| {
            r.as_ref()
                .err()
                .map(|e| serde_json::json!({"dependency": name, "error": e}))
        })
        .collect();
    if failing.is_empty() {
        let ok: serde_json::Map<_, _> = checks
            .iter()
            .map(|(n, _)| (n.to_string(), serde_json::Value::from("ok")))
            .collect();
        axum::Json(serde_json::json!({"status": "ready", "checks": ok})).into_response()
    } else {
        ApiError::unavailable("a dependency is unreachable")
            .with_details(serde_json::json!({ "failing": failing }))
            .into_response()
    }
}

pub async fn check_postgres(pool: &sqlx::PgPool) -> Result<(), String> {
    let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool);
    match tokio::time::timeout(std::time::Duration::from_secs(2), probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out after 2 s".into()),
    }
}

pub async fn check_redis(pool: &crate::redis::RedisPool) -> Result<(), String> {
    use fred::interfaces::ClientLike;
    let probe = pool.ping::<String>(None);
    match tokio::time::timeout(std::time::Duration::from_secs(1), probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out after 1 s".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation_follows_w3c() {
        assert!(valid_traceparent(&new_traceparent()));
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"
        ));
    }

    #[test]
    fn client_ids_are_bounded_and_visible_ascii() {
        assert_eq!(
            acceptable_id(&HeaderValue::from_static("abc-1")),
            Some("abc-1".into())
        );
        assert_eq!(acceptable_id(&HeaderValue::from_static("a b")), None);
        assert_eq!(
            acceptable_id(&HeaderValue::from_str(&"x".repeat(129)).unwrap()),
            None
        );
    }
}
