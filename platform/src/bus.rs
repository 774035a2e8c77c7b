//! The bus between the relay and the consumers. One interface, two backends: in-process
//! (the embedded default, `VOKETAG_BUS=inproc`) and Google Pub/Sub (next).
//!
//! Semantics every backend gives and every consumer relies on: at-least-once delivery,
//! possibly duplicated and, across aggregates, reordered; a message is done only when its
//! consumer acknowledges it; a nack redelivers it. Consumers are idempotent and
//! version-gated, so they never lean on the broker for order or exactly-once.

pub mod pubsub;

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub ordering_key: String,
    pub attributes: BTreeMap<String, String>,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus is closed")]
    Closed,
    #[error("the bus refused the message: {0}")]
    Refused(String),
}

/// A message handed to a consumer, to be acknowledged or refused.
pub struct Delivery {
    pub message: Message,
    /// 1 on first delivery, then 2, 3, … after each nack.
    pub attempt: u32,
    done: Option<oneshot::Sender<bool>>,
}

impl Delivery {
    /// The consumer has durably applied (or parked) the message.
    pub fn ack(mut self) {
        if let Some(d) = self.done.take() {
            let _ = d.send(true);
        }
    }

    /// The consumer could not apply it now: deliver it again.
    pub fn nack(mut self) {
        if let Some(d) = self.done.take() {
            let _ = d.send(false);
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        // Dropped without an answer (the consumer panicked or stopped): redeliver.
        if let Some(d) = self.done.take() {
            let _ = d.send(false);
        }
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes in order and returns once the bus has accepted every message.
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), BusError>;

    /// Attaches to the named subscription of a topic, creating it when missing. Several
    /// attachments to one subscription share its messages.
    async fn subscribe(&self, topic: &str, subscription: &str) -> Result<Subscriber, BusError>;
}

/// Deliveries of one subscription.
pub struct Subscriber {
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>>,
}

impl Subscriber {
    /// The next delivery; `None` once the bus is gone.
    pub async fn next(&self) -> Option<Delivery> {
        self.rx.lock().await.recv().await
    }
}

type Queue = (
    mpsc::UnboundedSender<Delivery>,
    Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Delivery>>>,
);

/// The in-process bus. `publish` returns only when every subscription has acknowledged
/// every message: in one process there is no broker to hold messages across a crash, so
/// "accepted by the bus" has to mean "applied by its consumers", or the relay's checkpoint
/// could pass events that a crash then loses.
#[derive(Default, Clone)]
pub struct InProcBus {
    topics: Arc<Mutex<HashMap<String, BTreeMap<String, Queue>>>>,
}

impl InProcBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn queues(&self, topic: &str) -> Vec<mpsc::UnboundedSender<Delivery>> {
        self.topics
            .lock()
            .map(|t| {
                t.get(topic)
                    .map(|subs| subs.values().map(|(tx, _)| tx.clone()).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }
}

#[async_trait]
impl Bus for InProcBus {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), BusError> {
        let queues = self.queues(topic);
        for message in messages {
            for queue in &queues {
                let mut attempt = 1;
                loop {
                    let (done, acked) = oneshot::channel();
                    let delivery = Delivery {
                        message: message.clone(),
                        attempt,
                        done: Some(done),
                    };
                    queue.send(delivery).map_err(|_| BusError::Closed)?;
                    match acked.await {
                        Ok(true) => break,
                        // Nacked or dropped: deliver again, as a broker would, after a
                        // pause that grows with the attempts (at most 2 s).
                        Ok(false) | Err(_) => {
                            tokio::time::sleep(redelivery_delay(attempt)).await;
                            attempt += 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &str, subscription: &str) -> Result<Subscriber, BusError> {
        let mut topics = self.topics.lock().map_err(|_| BusError::Closed)?;
        let subs = topics.entry(topic.to_string()).or_default();
        let (_, rx) = subs.entry(subscription.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            (tx, Arc::new(tokio::sync::Mutex::new(rx)))
        });
        Ok(Subscriber { rx: rx.clone() })
    }
}

/// Pause before delivering a refused message again.
pub fn redelivery_delay(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(20u64.saturating_mul(1 << attempt.min(7)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8) -> Message {
        Message {
            ordering_key: "k".into(),
            attributes: BTreeMap::new(),
            data: vec![n],
        }
    }

    #[tokio::test]
    async fn every_subscription_gets_every_message_and_publish_waits_for_acks() {
        let bus = InProcBus::new();
        let a = bus.subscribe("t", "a").await.unwrap();
        let b = bus.subscribe("t", "b").await.unwrap();
        let consumer = |s: Subscriber| {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(d) = s.next().await {
                    seen.push(d.message.data[0]);
                    d.ack();
                    if seen.len() == 3 {
                        break;
                    }
                }
                seen
            })
        };
        let (ca, cb) = (consumer(a), consumer(b));
        bus.publish("t", vec![msg(1), msg(2), msg(3)])
            .await
            .unwrap();
        assert_eq!(ca.await.unwrap(), [1, 2, 3]);
        assert_eq!(cb.await.unwrap(), [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_nacked_or_dropped_message_is_delivered_again_with_a_higher_attempt() {
        let bus = InProcBus::new();
        let s = bus.subscribe("t", "a").await.unwrap();
        let consumer = tokio::spawn(async move {
            let first = s.next().await.unwrap();
            assert_eq!(first.attempt, 1);
            first.nack();
            let second = s.next().await.unwrap();
            assert_eq!(second.attempt, 2);
            drop(second);
            let third = s.next().await.unwrap();
            let attempt = third.attempt;
            third.ack();
            attempt
        });
        bus.publish("t", vec![msg(9)]).await.unwrap();
        assert_eq!(consumer.await.unwrap(), 3);
    }
}
