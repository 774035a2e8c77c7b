//! Decoding a bus envelope into the domain event a read model follows, shared by every model
//! so that they agree on what is poison and what is ignored.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;
use voketag_domain::batch::BatchEvent;
use voketag_domain::product::ProductEvent;
use voketag_domain::scan::ScanLogEvent;
use voketag_schemas::bus::EventEnvelope;

use crate::ProjectionError;

/// Aggregate type names as the event store records them (`Aggregate::TYPE`).
pub(crate) const PRODUCT: &str = "Product";
pub(crate) const BATCH: &str = "Batch";
pub(crate) const SCAN_LOG: &str = "ScanLog";

/// An event of an aggregate the read models follow.
#[derive(Debug)]
pub(crate) enum ModelEvent {
    Product(Uuid, ProductEvent),
    Batch(Uuid, BatchEvent),
    /// The scan log of a batch: its id is the batch id.
    ScanLog(Uuid, ScanLogEvent),
}

/// Whether the read models follow events of this aggregate type (the others are answered
/// `Applied::Ignored` and keep no version).
pub fn follows(aggregate_type: &str) -> bool {
    matches!(aggregate_type, PRODUCT | BATCH | SCAN_LOG)
}

/// `Ok(None)`: an aggregate no read model follows (factories, API keys, ...), to be
/// answered `Applied::Ignored`. An envelope of a followed aggregate that cannot be read is
/// poison: retrying will not change it.
pub(crate) fn decode(e: &EventEnvelope) -> Result<Option<ModelEvent>, ProjectionError> {
    if !follows(&e.aggregate_type) {
        return Ok(None);
    }
    if e.sequence < 1 {
        return Err(poison(
            e,
            format!("sequence {} is not a version (they start at 1)", e.sequence),
        ));
    }
    let id = Uuid::parse_str(&e.aggregate_id).map_err(|err| {
        poison(
            e,
            format!("aggregate id {:?} is not a UUID: {err}", e.aggregate_id),
        )
    })?;
    let payload = |err: serde_json::Error| {
        poison(
            e,
            format!(
                "payload of {} (event_type {:?}, version {:?}) does not deserialize: {err}",
                e.aggregate_type, e.event_type, e.event_version
            ),
        )
    };
    let event = match e.aggregate_type.as_str() {
        PRODUCT => ModelEvent::Product(id, ProductEvent::deserialize(&e.payload).map_err(payload)?),
        BATCH => ModelEvent::Batch(id, BatchEvent::deserialize(&e.payload).map_err(payload)?),
        _ => ModelEvent::ScanLog(id, ScanLogEvent::deserialize(&e.payload).map_err(payload)?),
    };
    Ok(Some(event))
}

pub(crate) fn poison(e: &EventEnvelope, reason: String) -> ProjectionError {
    ProjectionError::Poison {
        aggregate_type: e.aggregate_type.clone(),
        aggregate_id: e.aggregate_id.clone(),
        sequence: e.sequence,
        reason,
    }
}

/// The version key of an aggregate: models keep versions per (aggregate type, id), so a
/// batch and its scan log (same id) have separate versions.
pub(crate) fn version_key(e: &EventEnvelope) -> String {
    aggregate_key(&e.aggregate_type, &e.aggregate_id)
}

pub(crate) fn aggregate_key(aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{aggregate_type}:{aggregate_id}")
}

/// Scan times are kept to the whole second in every read model (the event store keeps the
/// exact instant), so that Redis and Postgres answer the same `first_scan_at`.
pub(crate) fn epoch_seconds(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

pub(crate) fn from_epoch_seconds(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

/// `t` truncated to the whole second.
pub(crate) fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    from_epoch_seconds(epoch_seconds(t)).unwrap_or(t)
}
