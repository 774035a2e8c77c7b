//! CSV tag imports: the upload is read as it arrives and its rows are stored packed, in
//! one transaction with the import's record (ADR 0015); the imports worker takes it from
//! there.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use uuid::Uuid;
use voketag_domain::batch::BatchStatus;
use voketag_platform::http::{ApiError, ApiPath as Path};
use voketag_schemas::ErrorEnvelope;
use voketag_schemas::factory_api::{ImportDto, ImportErrorDto};

use super::batches::visible_batch;
use super::context::{Caller, Idempotency, command_error, once};
use super::{AppState, db_error};
use crate::import::{MAX_ERRORS_KEPT, NOTIFY_CHANNEL, packed};
use crate::store::CommandError;

fn payload_too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!(
            "the file is larger than the limit of {limit} bytes; split it into several imports"
        ),
    )
    .with_details(serde_json::json!({ "limit_bytes": limit }))
}

/// Upload a CSV of tags (`tag_id` column required, `serial` optional) for a batch.
#[utoipa::path(post, path = "/v1/batches/{id}/imports", tag = "imports",
    params(("id" = Uuid, Path, description = "batch id"), ("Idempotency-Key" = Option<String>, Header, description = "retries with the same key get the first answer")),
    request_body(content = String, content_type = "text/csv", description = "header row, then one tag per line"),
    responses((status = 202, body = ImportDto), (status = 409, body = ErrorEnvelope), (status = 413, body = ErrorEnvelope),
        (status = 415, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn create_import(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(batch_id): Path<Uuid>,
    body: Body,
) -> Result<Response, ApiError> {
    caller.require_write()?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "text/csv" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the file with `Content-Type: text/csv`{}",
                if content_type.is_empty() {
                    String::new()
                } else {
                    format!(", not `{content_type}`")
                }
            ),
        ));
    }
    let limit = state.settings.import_max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(payload_too_large(limit));
    }
    let (batch, _) = visible_batch(&state, &caller, batch_id).await?;
    let Some(s) = batch.state.as_ref() else {
        return Err(ApiError::not_found("batch"));
    };
    if matches!(s.status, BatchStatus::Recalled | BatchStatus::Closed) {
        return Err(command_error(CommandError::rule(
            voketag_domain::batch::BatchError::IssueIntoFinishedBatch(s.status.as_str()),
        )));
    }
    let factory_id = s.factory_id;
    // The body cannot be hashed before it is read; the key alone identifies the request.
    let route = format!("POST /v1/batches/{batch_id}/imports");
    let idem = Idempotency::from_request(&headers, &caller, &route, &serde_json::Value::Null)?;
    once(&state, idem.as_ref(), || async {
        let import_id = Uuid::now_v7();
        let mut tx = state.pool.begin().await.map_err(db_error)?;
        let meta = caller.metadata(factory_id);
        sqlx::query(
            "INSERT INTO imports (import_id, factory_id, batch_id, content_bytes, actor, request_id, correlation_id, traceparent)
             VALUES ($1, $2, $3, 0, $4, $5, $6, $7)",
        )
        .bind(import_id)
        .bind(factory_id)
        .bind(batch_id)
        .bind(&meta.actor)
        .bind(&meta.request_id)
        .bind(&meta.correlation_id)
        .bind(&meta.traceparent)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        // The file is read as it arrives, on a blocking thread, and its good rows are
        // stored packed, while the rest of the body is received, in the transaction that
        // records the import (ADR 0015).
        let (feed, mut pieces, reader) = packed::start_reading::<bytes::Bytes>(MAX_ERRORS_KEPT);
        let receive = async move {
            let mut stream = body.into_data_stream();
            let mut total: u64 = 0;
            while let Some(frame) = stream.next().await {
                let bytes = frame.map_err(|e| ApiError::bad_request("upload_interrupted", format!("the upload broke off: {e}")))?;
                total += bytes.len() as u64;
                if total > limit {
                    return Err(payload_too_large(limit));
                }
                // Closed once the reader stopped early (a file without its header, or
                // storing failed): the rest is received and counted all the same.
                let _ = feed.send(bytes).await;
            }
            Ok(total)
        };
        let store = async { packed::store(&mut tx, import_id, &mut pieces).await.map_err(db_error) };
        let (total, _) = tokio::try_join!(receive, store)?;
        if total == 0 {
            return Err(ApiError::unprocessable("empty_file", "the file is empty: send a header row naming `tag_id`, then one tag per line"));
        }
        let report = reader.await.map_err(ApiError::internal)?;
        packed::record(&mut tx, import_id, &report).await.map_err(db_error)?;
        sqlx::query("UPDATE imports SET content_bytes = $2 WHERE import_id = $1")
            .bind(import_id)
            .bind(total as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let dto = load(&mut tx, import_id).await?.ok_or_else(|| ApiError::internal("import vanished"))?;
        if let Some(i) = &idem {
            let value = serde_json::to_value(&dto).map_err(ApiError::internal)?;
            i.remember(&mut tx, StatusCode::ACCEPTED, &value).await.map_err(command_error)?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(import_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        let mut response = (StatusCode::ACCEPTED, axum::Json(dto)).into_response();
        if let Ok(v) = format!("/v1/imports/{import_id}").parse() {
            response.headers_mut().insert(header::LOCATION, v);
        }
        Ok(response)
    })
    .await
}

type ImportRow = (
    Uuid,
    Uuid,
    Uuid,
    String,
    i64,
    i64,
    i64,
    i64,
    serde_json::Value,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

pub(crate) async fn load(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
) -> Result<Option<ImportDto>, ApiError> {
    let row: Option<ImportRow> = sqlx::query_as(
        "SELECT import_id, batch_id, factory_id, status, content_bytes, rows_read, tags_issued, error_count, errors, created_at, finished_at
           FROM imports WHERE import_id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(db_error)?;
    let Some((
        id,
        batch_id,
        factory_id,
        status,
        content_bytes,
        rows_read,
        tags_issued,
        error_count,
        errors,
        created_at,
        finished_at,
    )) = row
    else {
        return Ok(None);
    };
    let errors: Vec<ImportErrorDto> = serde_json::from_value(errors).map_err(ApiError::internal)?;
    Ok(Some(ImportDto {
        id,
        batch_id,
        factory_id,
        status,
        content_bytes: content_bytes as u64,
        rows_read: rows_read as u64,
        tags_issued: tags_issued as u64,
        error_count: error_count as u64,
        errors,
        created_at,
        finished_at,
    }))
}

/// An import's progress and, if rejected, why (the first 1,000 errors and their count).
#[utoipa::path(get, path = "/v1/imports/{id}", tag = "imports",
    params(("id" = Uuid, Path, description = "import id")),
    responses((status = 200, body = ImportDto), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = []), ("api_key" = [])))]
pub(crate) async fn get_import(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<ImportDto>, ApiError> {
    let mut conn = state.pool.acquire().await.map_err(db_error)?;
    match load(&mut conn, id).await? {
        Some(dto) if caller.sees(dto.factory_id) => Ok(axum::Json(dto)),
        _ => Err(ApiError::not_found("import")),
    }
}
