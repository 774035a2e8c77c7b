//! Scans of tags, recorded as events so that first scans, scan counts and fraud signals
//! survive the loss of any read model. The scan API observes; the scans worker records
//! observations in batches on one `ScanLog` aggregate per batch of tags.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{RuleCode, RuleKind};

/// One scan as the scan API saw it. No IP address or precise location: a coarse country
/// and region from the load balancer, and a salted hash of device signals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRecord {
    /// Unique per observation, so a redelivered observation is recorded once.
    pub scan_id: Uuid,
    pub tag_id: Uuid,
    pub scanned_at: DateTime<Utc>,
    /// `authentic`, `suspicious`, `revoked` or `unknown`.
    pub verdict: String,
    #[serde(default)]
    pub reasons: Vec<String>,
    /// ISO 3166-1 alpha-2 from the load balancer, when known.
    #[serde(default)]
    pub country: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Salted SHA-256 of device signals, when any.
    #[serde(default)]
    pub device: Option<String>,
    /// The tag's scan count including this scan, as the scan model counted it.
    pub scan_number: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanLog {
    pub recorded: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScanLogCommand {
    RecordScans { scans: Vec<ScanRecord> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScanLogEvent {
    ScansRecorded { scans: Vec<ScanRecord> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanLogError {
    #[error("no scans to record")]
    Empty,
}

impl RuleCode for ScanLogError {
    fn code(&self) -> &'static str {
        "scan_log.empty"
    }
    fn kind(&self) -> RuleKind {
        RuleKind::Invalid
    }
}

impl DomainEvent for ScanLogEvent {
    fn event_type(&self) -> String {
        "ScansRecorded".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

impl Aggregate for ScanLog {
    const TYPE: &'static str = "ScanLog";
    type Command = ScanLogCommand;
    type Event = ScanLogEvent;
    type Error = ScanLogError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            ScanLogCommand::RecordScans { scans } => {
                if scans.is_empty() {
                    return Err(ScanLogError::Empty);
                }
                sink.write(ScanLogEvent::ScansRecorded { scans }, self)
                    .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ScanLogEvent::ScansRecorded { scans } => self.recorded += scans.len() as u64,
        }
    }
}
