//! Publishes `ScanObserved` on the bus without making the scan's answer wait for the bus:
//! observations go into a bounded queue that a background task drains in batches. When the
//! queue is full the request publishes inline (backpressure: slower answers, never a
//! silently dropped observation); a batch the bus refuses is retried, then counted and
//! logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use voketag_platform::bus::{Bus, Message};
use voketag_platform::http::RequestContext;
use voketag_schemas::bus::{SCANS_TOPIC, ScanObserved};

/// Observations the queue holds before requests publish inline.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Most observations one bus call carries.
pub const MAX_BATCH: usize = 500;
/// Bus calls per batch before its observations are given up (counted and logged).
const ATTEMPTS: u32 = 3;

#[derive(Clone)]
pub struct ScanPublisher {
    queue: mpsc::Sender<Message>,
    bus: Arc<dyn Bus>,
}

/// Stops the background task after it has published what is queued.
pub struct Drainer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ScanPublisher {
    /// Starts the background task; it runs until [`Drainer::finish`] (or the drainer is
    /// dropped), then publishes what is left in the queue.
    pub fn start(bus: Arc<dyn Bus>, capacity: usize) -> (ScanPublisher, Drainer) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(drain(rx, bus.clone(), stopped));
        (ScanPublisher { queue, bus }, Drainer { stop, task })
    }

    /// Queues the observation, or publishes it inline when the queue is full or closed.
    pub async fn publish(&self, scan: &ScanObserved) {
        let message = match message(scan, RequestContext::current()) {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("scan_observations_failed_total").increment(1);
                tracing::error!(scan.id = %scan.scan_id, error = %e, "scan observation not encodable");
                return;
            }
        };
        match self.queue.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m)) => {
                metrics::counter!("scan_observations_inline_total").increment(1);
                publish_batch(&*self.bus, vec![m]).await;
            }
        }
    }
}

impl Drainer {
    /// Publishes what is queued and stops; waits at most `grace`.
    pub async fn finish(self, grace: Duration) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            abort.abort();
            tracing::error!("scan observations still queued at shutdown were not published");
        }
    }
}

fn message(scan: &ScanObserved, context: Option<RequestContext>) -> serde_json::Result<Message> {
    let mut attributes = BTreeMap::from([
        ("scan_id".to_string(), scan.scan_id.to_string()),
        ("tag_id".to_string(), scan.tag_id.to_string()),
        ("verdict".to_string(), scan.verdict.clone()),
        ("source".to_string(), scan.source.clone()),
    ]);
    if let Some(c) = context {
        attributes.insert("request_id".into(), c.request_id);
        attributes.insert("correlation_id".into(), c.correlation_id);
        attributes.insert("traceparent".into(), c.traceparent);
    }
    Ok(Message {
        // Scans of one tag stay in order, so scan numbers arrive rising.
        ordering_key: scan.tag_id.to_string(),
        attributes,
        data: {
            // Room for a whole observation (~450 bytes) from the start.
            let mut data = Vec::with_capacity(512);
            serde_json::to_writer(&mut data, scan)?;
            data
        },
    })
}

async fn drain(mut rx: mpsc::Receiver<Message>, bus: Arc<dyn Bus>, stopped: oneshot::Receiver<()>) {
    tokio::pin!(stopped);
    let mut stopping = false;
    loop {
        let first = if stopping {
            rx.recv().await
        } else {
            tokio::select! {
                m = rx.recv() => m,
                _ = &mut stopped => {
                    // Refuse new observations (their requests publish inline) and empty
                    // the queue.
                    stopping = true;
                    rx.close();
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        publish_batch(&*bus, batch).await;
    }
}

async fn publish_batch(bus: &dyn Bus, batch: Vec<Message>) {
    let n = batch.len() as u64;
    for attempt in 1..=ATTEMPTS {
        match bus.publish(SCANS_TOPIC, batch.clone()).await {
            Ok(()) => {
                metrics::counter!("scan_observations_published_total").increment(n);
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(error = %e, attempt, observations = n, "publishing scan observations failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => {
                metrics::counter!("scan_observations_failed_total").increment(n);
                let scan_ids: Vec<&str> = batch
                    .iter()
                    .filter_map(|m| m.attributes.get("scan_id").map(String::as_str))
                    .collect();
                tracing::error!(error = %e, observations = n, ?scan_ids, "scan observations not published");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::Mutex;
    use voketag_platform::bus::{BusError, InProcBus, Subscriber};

    fn observation(n: u64) -> ScanObserved {
        ScanObserved {
            scan_id: uuid::Uuid::now_v7(),
            tag_id: uuid::Uuid::now_v7(),
            batch_id: None,
            scanned_at: chrono::Utc::now(),
            verdict: "unknown".into(),
            reasons: vec!["tag_not_found".into()],
            country: None,
            region: None,
            device: None,
            scan_number: n,
            source: "cache".into(),
        }
    }

    /// Records every publish call; refuses the first `refuse` of them.
    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<usize>>,
        refuse: Mutex<u32>,
    }

    #[async_trait]
    impl Bus for Recording {
        async fn publish(&self, _topic: &str, messages: Vec<Message>) -> Result<(), BusError> {
            let mut refuse = self.refuse.lock().unwrap();
            if *refuse > 0 {
                *refuse -= 1;
                return Err(BusError::Refused("test".into()));
            }
            self.calls.lock().unwrap().push(messages.len());
            Ok(())
        }
        async fn subscribe(&self, _: &str, _: &str) -> Result<Subscriber, BusError> {
            Err(BusError::Closed)
        }
    }

    #[tokio::test]
    async fn queued_observations_are_published_in_batches_and_flushed_on_finish() {
        let bus = Arc::new(Recording::default());
        let (publisher, drainer) = ScanPublisher::start(bus.clone(), 100);
        for n in 0..50 {
            publisher.publish(&observation(n)).await;
        }
        drainer.finish(Duration::from_secs(5)).await;
        let calls = bus.calls.lock().unwrap().clone();
        assert_eq!(calls.iter().sum::<usize>(), 50);
        assert!(calls.len() < 50, "batched: {calls:?}");
    }

    #[tokio::test]
    async fn a_full_queue_publishes_inline_instead_of_dropping() {
        // A subscriber that never acknowledges blocks the drain task on its first batch.
        let bus = InProcBus::new();
        let sub = bus.subscribe(SCANS_TOPIC, "slow").await.unwrap();
        let (publisher, _drainer) = ScanPublisher::start(Arc::new(bus.clone()), 2);
        // One in flight (the drain task waits for its ack), two queued; the fourth must go
        // inline and so waits for the bus.
        publisher.publish(&observation(0)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        for n in 1..3 {
            publisher.publish(&observation(n)).await;
        }
        let mut inline = tokio::spawn({
            let p = publisher.clone();
            async move { p.publish(&observation(3)).await }
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut inline)
                .await
                .is_err(),
            "the fourth observation waits for the bus"
        );
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let d = sub.next().await.unwrap();
            let s: ScanObserved = serde_json::from_slice(&d.message.data).unwrap();
            seen.push(s.scan_number);
            d.ack();
        }
        inline.await.unwrap();
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_refused_batch_is_retried() {
        let bus = Arc::new(Recording::default());
        *bus.refuse.lock().unwrap() = 2;
        let (publisher, drainer) = ScanPublisher::start(bus.clone(), 10);
        publisher.publish(&observation(1)).await;
        drainer.finish(Duration::from_secs(5)).await;
        assert_eq!(*bus.calls.lock().unwrap(), [1]);
    }

    #[test]
    fn messages_carry_the_request_identity_and_no_personal_data() {
        let mut s = observation(1);
        s.country = Some("BR".into());
        let m = message(
            &s,
            Some(RequestContext {
                request_id: "r".into(),
                correlation_id: "c".into(),
                traceparent: "t".into(),
            }),
        )
        .unwrap();
        assert_eq!(m.ordering_key, s.tag_id.to_string());
        assert_eq!(m.attributes["correlation_id"], "c");
        assert_eq!(m.attributes["scan_id"], s.scan_id.to_string());
        let back: ScanObserved = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(back, s);
    }
}
