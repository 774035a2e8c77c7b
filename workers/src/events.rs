//! Events as read back from the store by the workers (relay, projectors, replay).

use chrono::{DateTime, Utc};
use std::collections::HashMap;
use voketag_schemas::bus::EventEnvelope;

/// The columns every worker selects, in [`StoredEvent`]'s order.
pub const COLUMNS: &str = "global_position, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata, recorded_at";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub global_position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The envelope the relay publishes for this event.
    pub fn into_envelope(self) -> Result<EventEnvelope, String> {
        let metadata: HashMap<String, String> = serde_json::from_value(self.metadata)
            .map_err(|e| format!("event at position {}: metadata: {e}", self.global_position))?;
        Ok(EventEnvelope {
            position: self.global_position,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: self.payload,
            metadata,
            recorded_at: self.recorded_at,
        })
    }
}
