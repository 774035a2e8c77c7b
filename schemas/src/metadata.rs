//! Metadata stored with every event and copied onto every bus message's attributes.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Who did what, on whose behalf, as part of which request and trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// `user:<sub>`, `api_key:<id>`, `worker:<name>` or `system`.
    pub actor: String,
    /// The factory (tenant) the event belongs to.
    pub factory_id: String,
    pub request_id: String,
    pub correlation_id: String,
    /// The id of the command (or event) that caused this one.
    pub causation_id: String,
    /// W3C trace context of the request that issued the command.
    pub traceparent: String,
}

impl EventMetadata {
    pub const KEYS: [&'static str; 6] = [
        "actor",
        "factory_id",
        "request_id",
        "correlation_id",
        "causation_id",
        "traceparent",
    ];

    /// The map form cqrs-es stores in the `metadata` column.
    pub fn to_map(&self) -> HashMap<String, String> {
        HashMap::from([
            ("actor".to_string(), self.actor.clone()),
            ("factory_id".to_string(), self.factory_id.clone()),
            ("request_id".to_string(), self.request_id.clone()),
            ("correlation_id".to_string(), self.correlation_id.clone()),
            ("causation_id".to_string(), self.causation_id.clone()),
            ("traceparent".to_string(), self.traceparent.clone()),
        ])
    }
}
