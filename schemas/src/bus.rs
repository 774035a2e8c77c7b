//! What travels on the bus: committed events in a versioned envelope, with the attributes
//! every message carries so that consumers (and Pub/Sub filters) need not parse the body.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Topic of every committed event. A persistent contract: never rename.
pub const EVENTS_TOPIC: &str = "voketag.events.v1";

/// One committed event as the relay publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Position in the store's global order (`events.global_position`).
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The aggregate's version after this event; consumers apply only the next one.
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: HashMap<String, String>,
    pub recorded_at: DateTime<Utc>,
}

impl EventEnvelope {
    /// Bus attributes: identity and order of the event, and the metadata (actor, factory,
    /// request, correlation, causation, trace context).
    pub fn attributes(&self) -> BTreeMap<String, String> {
        let mut a: BTreeMap<String, String> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        a.insert("aggregate_type".into(), self.aggregate_type.clone());
        a.insert("aggregate_id".into(), self.aggregate_id.clone());
        a.insert("sequence".into(), self.sequence.to_string());
        a.insert("position".into(), self.position.to_string());
        a.insert("event_type".into(), self.event_type.clone());
        a.insert("event_version".into(), self.event_version.clone());
        a
    }

    /// Ordering key: events of one aggregate stay in order.
    pub fn ordering_key(&self) -> String {
        format!("{}:{}", self.aggregate_type, self.aggregate_id)
    }
}
