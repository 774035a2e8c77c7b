//! Who is calling (JWT or API key, with the rate limit applied to keys), what they may
//! see, the metadata their commands' events carry, idempotent POSTs, and how command
//! errors become HTTP answers.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;
use voketag_domain::{Role, RuleKind};
use voketag_platform::http::{ApiError, RequestContext};
use voketag_schemas::EventMetadata;

use super::{AppState, db_error};
use crate::auth::rate_limit::RateDecision;
use crate::auth::{self, AuthError, AuthMethod, Principal};
use crate::store::{Arg, CommandError, Write};

/// An authenticated caller and the request it made.
pub struct Caller {
    pub principal: Principal,
    pub context: RequestContext,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let context = RequestContext::current().unwrap_or_else(RequestContext::background);
        let principal = authenticate(&parts.headers, state).await?;
        Ok(Caller { principal, context })
    }
}

async fn authenticate(headers: &HeaderMap, state: &AppState) -> Result<Principal, ApiError> {
    if let Some(key) = headers.get("x-api-key") {
        let key = key
            .to_str()
            .map_err(|_| auth_error(AuthError::UnknownKey))?;
        let principal = auth::api_key::authenticate(&state.pool, key)
            .await
            .map_err(auth_error)?;
        if let AuthMethod::ApiKey { key_id } = principal.method {
            match state.limiter.check(key_id).await {
                Ok(RateDecision::Allowed { .. }) => {}
                Ok(RateDecision::Limited { retry_after }) => {
                    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                    return Err(ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        format!(
                            "this API key is limited to {} requests per minute; retry in {secs} s",
                            state.settings.api_key_requests_per_minute
                        ),
                    )
                    .with_details(serde_json::json!({ "retry_after_seconds": secs }))
                    .with_header(header::RETRY_AFTER, HeaderValue::from(secs)));
                }
                // The shared counter is unreachable: refuse rather than run unlimited.
                Err(e) => {
                    tracing::error!(error = %e, "rate limiter unavailable");
                    return Err(ApiError::unavailable(e.public_message()));
                }
            }
        }
        return Ok(principal);
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(auth_error(AuthError::Missing));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <JWT>`"))?;
    let claims = state
        .verifier
        .verify(token.trim())
        .await
        .map_err(auth_error)?;
    Ok(Principal {
        subject: claims.sub,
        factory_id: claims.factory_id,
        role: claims.role,
        method: AuthMethod::Jwt,
    })
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Missing => ApiError::unauthorized(
            "credentials required: send `Authorization: Bearer <JWT>` or `X-API-Key: <key>`",
        ),
        e if e.is_client_error() => ApiError::unauthorized(e.to_string()),
        // Our own failure: the detail goes to the logs, not to the caller.
        e => {
            tracing::error!(error = %e, "credentials could not be checked");
            ApiError::unavailable(e.public_message())
        }
    }
}

impl Caller {
    /// Refuses read-only callers.
    pub fn require_write(&self) -> Result<(), ApiError> {
        if self.principal.role.can_write() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the {} role can only read",
                self.principal.role
            )))
        }
    }

    pub fn is_admin(&self) -> bool {
        self.principal.role == Role::Admin
    }

    /// Whether this caller may see the factory's data; callers who may not get a 404.
    pub fn sees(&self, factory_id: Uuid) -> bool {
        self.is_admin() || self.principal.factory_id == factory_id
    }

    /// The factory a write acts for: admins name it, everyone else acts for their own.
    pub fn acting_for(&self, requested: Option<Uuid>) -> Result<Uuid, ApiError> {
        match (self.is_admin(), requested) {
            (true, Some(f)) => Ok(f),
            (true, None) => Err(ApiError::unprocessable(
                "factory_id_required",
                "admins act for every factory: name one in `factory_id`",
            )
            .with_details(serde_json::json!({"field": "factory_id"}))),
            (false, Some(f)) if f != self.principal.factory_id => {
                Err(ApiError::not_found("factory"))
            }
            (false, _) => Ok(self.principal.factory_id),
        }
    }

    pub fn actor(&self) -> String {
        match self.principal.method {
            AuthMethod::Jwt => format!("user:{}", self.principal.subject),
            AuthMethod::ApiKey { key_id } => format!("api_key:{key_id}"),
        }
    }

    /// Metadata for the events of one command acting on `factory_id`.
    pub fn metadata(&self, factory_id: Uuid) -> EventMetadata {
        EventMetadata {
            actor: self.actor(),
            factory_id: factory_id.to_string(),
            request_id: self.context.request_id.clone(),
            correlation_id: self.context.correlation_id.clone(),
            causation_id: format!("command:{}", Uuid::now_v7()),
            traceparent: self.context.traceparent.clone(),
        }
    }
}

pub(crate) fn command_error(e: CommandError) -> ApiError {
    match e {
        CommandError::Rule { code, kind, message } => {
            let status = match kind {
                RuleKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
                RuleKind::State => StatusCode::CONFLICT,
                RuleKind::Missing => StatusCode::NOT_FOUND,
            };
            ApiError::new(status, code, message)
        }
        CommandError::Conflict { current_version } => ApiError::conflict(
            "version_conflict",
            format!("the resource changed meanwhile: it is now at version {current_version}; reload and retry"),
        )
        .with_details(serde_json::json!({ "current_version": current_version })),
        CommandError::Taken { code, message } => ApiError::conflict(code, message),
        CommandError::Corrupt(why) => ApiError::internal(why),
        CommandError::Database(e) => db_error(e),
    }
}

/// `If-Match: "<version>"` (or a bare number) for optimistic concurrency.
pub(crate) fn expected_version(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|s| s.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_if_match",
                "If-Match must be a version number, e.g. \"3\"",
            )
        })
}

/// A POST's `Idempotency-Key`: the first successful answer is stored with the events it
/// caused and given again to every retry with the same key and the same request.
pub struct Idempotency {
    scope: String,
    key: String,
    request_hash: String,
}

impl Idempotency {
    pub fn from_request(
        headers: &HeaderMap,
        caller: &Caller,
        route: &str,
        body: &impl serde::Serialize,
    ) -> Result<Option<Self>, ApiError> {
        let Some(v) = headers.get("idempotency-key") else {
            return Ok(None);
        };
        let key = v
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible characters",
                )
            })?;
        let mut hasher = Sha256::new();
        hasher.update(route.as_bytes());
        hasher.update([0]);
        hasher.update(serde_json::to_vec(body).map_err(ApiError::internal)?);
        Ok(Some(Idempotency {
            scope: format!("{}|{}", caller.actor(), caller.principal.factory_id),
            key: key.to_string(),
            request_hash: hex::encode(hasher.finalize()),
        }))
    }

    /// The stored answer to an earlier request with this key, if any.
    pub async fn replay(&self, state: &AppState) -> Result<Option<Response>, ApiError> {
        let row: Option<(String, i16, serde_json::Value)> = sqlx::query_as(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2",
        )
        .bind(&self.scope)
        .bind(&self.key)
        .fetch_optional(&state.pool)
        .await
        .map_err(db_error)?;
        let Some((hash, status, body)) = row else {
            return Ok(None);
        };
        if hash != self.request_hash {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request; use a new key",
            ));
        }
        if let Some(refusal) = body.get("replay_refused").and_then(|v| v.as_str()) {
            return Err(ApiError::conflict(
                "idempotency_secret_not_replayable",
                refusal.to_string(),
            )
            .with_details(body.get("details").cloned().unwrap_or_default()));
        }
        let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
        let mut response = (status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(Some(response))
    }

    /// The answer as a row to store with the events the command caused.
    pub fn write(&self, status: StatusCode, body: serde_json::Value) -> Write {
        Write::new(
            "INSERT INTO idempotency_keys (scope, key, request_hash, status, body) VALUES ($1, $2, $3, $4, $5)",
            vec![
                Arg::Text(self.scope.clone()),
                Arg::Text(self.key.clone()),
                Arg::Text(self.request_hash.clone()),
                Arg::SmallInt(status.as_u16() as i16),
                Arg::Jsonb(body),
            ],
        )
    }

    /// Stores the answer in the transaction that commits the command. A concurrent request
    /// with the same key that got there first is `Taken` (`idempotency_in_flight`).
    pub async fn remember(
        &self,
        conn: &mut PgConnection,
        status: StatusCode,
        body: &serde_json::Value,
    ) -> Result<(), CommandError> {
        self.write(status, body.clone()).run(conn).await
    }
}

/// Runs a POST once per Idempotency-Key: an earlier answer is replayed. Concurrent
/// duplicates need no lock: the events' primary key, the unique lookup rows and the
/// idempotency row itself make a loser wait for the winner's commit and then fail; once
/// it has failed, the winner's stored answer is what it gets.
pub(crate) async fn once<F, Fut>(
    state: &AppState,
    idem: Option<&Idempotency>,
    run: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let Some(i) = idem else {
        return run().await;
    };
    if let Some(r) = i.replay(state).await? {
        return Ok(r);
    }
    match run().await {
        Ok(r) => Ok(r),
        Err(e) => match i.replay(state).await {
            Ok(Some(r)) => Ok(r),
            _ => Err(e),
        },
    }
}

/// A JSON answer with the resource's version as its ETag.
pub(crate) fn versioned<T: serde::Serialize>(
    status: StatusCode,
    body: &T,
    version: u64,
) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// Which aggregate a command acts on.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// An id minted for this command: nothing to load.
    New(Uuid),
    Existing(Uuid),
}

/// Runs one command in one statement with its idempotency record; `respond` builds the
/// answer from the new state so that the answer commits with the events.
pub(crate) async fn decide<A, R>(
    state: &AppState,
    target: Target,
    command: A::Command,
    metadata: &EventMetadata,
    expected: Option<u64>,
    idem: Option<(&Idempotency, StatusCode)>,
    respond: impl FnOnce(&A, u64) -> R,
) -> Result<(R, u64), ApiError>
where
    A: crate::store::Indexed,
    A::Error: voketag_domain::RuleCode,
    R: serde::Serialize,
{
    let (id, new) = match target {
        Target::New(id) => (id.to_string(), true),
        Target::Existing(id) => (id.to_string(), false),
    };
    if new && expected.is_some_and(|v| v != 0) {
        return Err(command_error(CommandError::Conflict { current_version: 0 }));
    }
    let run = async {
        let mut decision = if new {
            state.store.decide_new::<A>(&id, command, metadata).await?
        } else {
            state
                .store
                .decide::<A>(&id, command, metadata, expected)
                .await?
        };
        let body = respond(decision.aggregate(), decision.version());
        if let Some((i, status)) = idem {
            let value =
                serde_json::to_value(&body).map_err(|e| CommandError::Corrupt(e.to_string()))?;
            decision.also(i.write(status, value));
        }
        // One statement: events, lookup rows, snapshot and the idempotency answer.
        let (_, version) = decision.commit().await?;
        Ok::<_, CommandError>((body, version))
    };
    match run.await {
        Ok(done) => Ok(done),
        Err(e) => Err(command_error(state.store.resolve::<A>(&id, e).await)),
    }
}
