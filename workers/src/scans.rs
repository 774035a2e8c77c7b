//! The scans worker (`voketag work scans`): turns `ScanObserved` messages into
//! `ScansRecorded` events, in batches, one `ScanLog` aggregate per batch of tags (scans of
//! unknown tags go to the nil id), so scan history survives the loss of any read model.
//! Observations already recorded (redeliveries) are skipped by `scan_id`, and the ids are
//! stored in the same transaction as the events.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use voketag_commands::store::{CommandError, EventStore};
use voketag_domain::scan::{ScanLog, ScanLogCommand, ScanRecord};
use voketag_platform::bus::{Bus, Delivery};
use voketag_schemas::EventMetadata;
use voketag_schemas::bus::{SCANS_TOPIC, ScanObserved};

/// The subscription name. A persistent contract.
pub const SUBSCRIPTION: &str = "scans-recorder";

pub struct ScanRecorder {
    store: EventStore,
    /// Most observations recorded in one pass.
    pub max_batch: usize,
    /// How long to wait for more observations before recording what arrived.
    pub linger: Duration,
}

impl ScanRecorder {
    pub fn new(store: EventStore) -> Self {
        ScanRecorder {
            store,
            max_batch: 500,
            linger: Duration::from_millis(100),
        }
    }

    pub async fn run(
        self: Arc<Self>,
        bus: Arc<dyn Bus>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let subscriber = bus.subscribe(SCANS_TOPIC, SUBSCRIPTION).await?;
        tokio::pin!(shutdown);
        tracing::info!("scans worker started");
        loop {
            let first = tokio::select! {
                _ = &mut shutdown => break,
                d = subscriber.next() => d,
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.linger;
            while batch.len() < self.max_batch {
                match tokio::time::timeout_at(deadline, subscriber.next()).await {
                    Ok(Some(d)) => batch.push(d),
                    Ok(None) | Err(_) => break,
                }
            }
            self.record(batch).await;
        }
        tracing::info!("scans worker stopped");
        Ok(())
    }

    /// Records a batch of deliveries; acknowledges them once their events committed.
    pub async fn record(&self, deliveries: Vec<Delivery>) {
        let mut by_log: BTreeMap<Uuid, Vec<(Delivery, ScanObserved)>> = BTreeMap::new();
        for d in deliveries {
            match serde_json::from_slice::<ScanObserved>(&d.message.data) {
                Ok(o) => by_log
                    .entry(o.batch_id.unwrap_or(Uuid::nil()))
                    .or_default()
                    .push((d, o)),
                Err(e) => {
                    // An observation that is not one can never be recorded; say so loudly.
                    tracing::error!(error = %e, "dropping a message that is not a ScanObserved");
                    metrics::counter!("scan_observations_unreadable_total").increment(1);
                    d.ack();
                }
            }
        }
        for (log, items) in by_log {
            let observations: Vec<&ScanObserved> = items.iter().map(|(_, o)| o).collect();
            match self.record_log(log, &observations).await {
                Ok(n) => {
                    metrics::counter!("scans_recorded_total").increment(n as u64);
                    items.into_iter().for_each(|(d, _)| d.ack());
                }
                Err(e) => {
                    tracing::warn!(error = %e, scan_log = %log, "recording scans failed; they will be redelivered");
                    items.into_iter().for_each(|(d, _)| d.nack());
                }
            }
        }
    }

    async fn record_log(
        &self,
        log: Uuid,
        observations: &[&ScanObserved],
    ) -> Result<usize, CommandError> {
        let ids: Vec<Uuid> = observations.iter().map(|o| o.scan_id).collect();
        let known: HashSet<Uuid> =
            sqlx::query_scalar("SELECT scan_id FROM recorded_scans WHERE scan_id = ANY($1)")
                .bind(&ids)
                .fetch_all(self.store.pool())
                .await?
                .into_iter()
                .collect();
        let mut seen = HashSet::new();
        let scans: Vec<ScanRecord> = observations
            .iter()
            .filter(|o| !known.contains(&o.scan_id) && seen.insert(o.scan_id))
            .map(|o| ScanRecord {
                scan_id: o.scan_id,
                tag_id: o.tag_id,
                scanned_at: o.scanned_at,
                verdict: o.verdict.clone(),
                reasons: o.reasons.clone(),
                country: o.country.clone(),
                region: o.region.clone(),
                device: o.device.clone(),
                scan_number: o.scan_number,
            })
            .collect();
        if scans.is_empty() {
            return Ok(0);
        }
        let n = scans.len();
        let fresh: Vec<Uuid> = scans.iter().map(|s| s.scan_id).collect();
        let metadata = EventMetadata {
            actor: "worker:scans".into(),
            factory_id: String::new(),
            request_id: format!("scans:{}", Uuid::now_v7()),
            correlation_id: format!("scan_log:{log}"),
            causation_id: format!("scan:{}", scans[0].scan_id),
            traceparent: voketag_platform::http::new_traceparent(),
        };
        let mut unit = self
            .store
            .begin::<ScanLog>(&log.to_string(), &metadata)
            .await?;
        unit.handle(ScanLogCommand::RecordScans { scans }).await?;
        sqlx::query("INSERT INTO recorded_scans (scan_id) SELECT * FROM UNNEST($1::uuid[])")
            .bind(&fresh)
            .execute(unit.conn())
            .await?;
        unit.commit().await?;
        Ok(n)
    }
}
