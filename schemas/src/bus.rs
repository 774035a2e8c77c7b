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

/// Topic of scans observed by the scan API. A persistent contract: never rename.
pub const SCANS_TOPIC: &str = "voketag.scans.v1";

/// One scan as the scan API answered it, published on [`SCANS_TOPIC`] for the scans worker
/// to record as an event. Personal data stays out (LGPD): no IP address, no precise
/// location, no raw device signals — a coarse country and region from the load balancer
/// and a salted hash of the device signals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanObserved {
    /// UUID v7, unique per observation, so a redelivered observation is recorded once.
    pub scan_id: uuid::Uuid,
    pub tag_id: uuid::Uuid,
    /// The tag's batch; `None` when no read model knows the tag.
    pub batch_id: Option<uuid::Uuid>,
    pub scanned_at: DateTime<Utc>,
    /// `authentic`, `suspicious`, `revoked` or `unknown`.
    pub verdict: String,
    /// Machine-readable reasons for the verdict, e.g. `tag_revoked`.
    pub reasons: Vec<String>,
    /// ISO 3166-1 alpha-2 country from the load balancer, when known.
    pub country: Option<String>,
    /// The load balancer's subdivision code (e.g. `BRSP`), when known.
    pub region: Option<String>,
    /// Hex SHA-256 of the salted device signals (user agent, accept-language), when any.
    pub device: Option<String>,
    /// The tag's scan count including this scan as the answering read model counted it;
    /// 0 for an unknown tag.
    pub scan_number: u64,
    /// Which read model answered: `cache` (Redis) or `database` (Postgres views).
    pub source: String,
}
