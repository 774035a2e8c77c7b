//! The Google Pub/Sub backend of the bus (`VOKETAG_BUS=pubsub`), on the official SDK
//! (`google-cloud-pubsub`).
//!
//! - Topics and subscriptions are created when missing (admin calls go over REST, the data
//!   plane over gRPC; the local emulator, `deploy/local/pubsub-emulator`, answers both).
//! - `publish` returns only once the server acknowledged every message, so the relay's
//!   checkpoint never passes an event the broker does not hold. The ordering key and the
//!   attributes are carried as they are.
//! - Each subscriber keeps `streams` streaming pulls open (8 unless told otherwise), which
//!   together hold at most `max_outstanding` unanswered deliveries (the SDK's flow
//!   control, which the server enforces, and a semaphore here, since the emulator does
//!   not); `ack` acknowledges, `nack` (or dropping the delivery) hands the message back
//!   (a modify-ack-deadline of 0) after a pause that grows with the attempts, as the
//!   in-process bus does, so it is delivered again.
//! - `attempt` is Pub/Sub's delivery attempt when the subscription has a dead-letter policy,
//!   and otherwise the number of times this process has received the message: without a
//!   dead-letter policy (and in the emulator) Pub/Sub does not count.
//!
//! With an endpoint (`VOKETAG_PUBSUB_ENDPOINT=http://127.0.0.1:8085`) the clients use
//! anonymous credentials; without one they use Application Default Credentials against
//! Google's service.

use super::{Bus, BusError, Delivery, Message, Subscriber};
use async_trait::async_trait;
use google_cloud_auth::credentials::anonymous::Builder as Anonymous;
use google_cloud_pubsub::client::{Publisher, SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::Message as PsMessage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Streaming pulls per subscriber, unless told otherwise.
pub const DEFAULT_STREAMS: usize = 8;

/// Messages one subscriber holds unacknowledged at most, unless told otherwise.
pub const DEFAULT_MAX_OUTSTANDING: i64 = 256;

/// Seconds Pub/Sub waits for an acknowledgement before delivering again, unless told otherwise.
pub const DEFAULT_ACK_DEADLINE_SECONDS: u32 = 30;

/// Where and how to reach Pub/Sub.
#[derive(Debug, Clone)]
pub struct PubSubConfig {
    /// GCP project that holds the topics and subscriptions.
    pub project: String,
    /// `http://HOST:PORT` of an emulator (anonymous credentials); `None` for Google's service.
    pub endpoint: Option<String>,
    /// Bound on unacknowledged messages per subscriber.
    pub max_outstanding: i64,
    /// Streaming pulls each subscriber keeps open at once, sharing `max_outstanding`. One
    /// stream caps a subscriber's rate at what a single stream carries (the emulator hands
    /// a stream about one message every 10 ms).
    pub streams: usize,
    /// The ack deadline of the subscriptions this bus creates (10 to 600 s). It is also how
    /// long the messages a crashed consumer held wait before they are delivered again; an
    /// existing subscription keeps the deadline it was created with.
    pub ack_deadline_seconds: u32,
}

impl PubSubConfig {
    pub fn new(project: impl Into<String>, endpoint: Option<String>) -> Self {
        PubSubConfig {
            project: project.into(),
            endpoint,
            max_outstanding: DEFAULT_MAX_OUTSTANDING,
            streams: DEFAULT_STREAMS,
            ack_deadline_seconds: DEFAULT_ACK_DEADLINE_SECONDS,
        }
    }

    /// From `VOKETAG_PUBSUB_PROJECT`, `VOKETAG_PUBSUB_ENDPOINT` and
    /// `VOKETAG_PUBSUB_ACK_DEADLINE_SECONDS`.
    pub fn from_settings(settings: &crate::settings::Settings) -> Result<Self, BusError> {
        let project = settings.pubsub_project.clone().ok_or_else(|| {
            BusError::Refused("VOKETAG_PUBSUB_PROJECT is required with VOKETAG_BUS=pubsub".into())
        })?;
        let mut config = Self::new(project, settings.pubsub_endpoint.clone());
        config.ack_deadline_seconds = settings.pubsub_ack_deadline_seconds;
        Ok(config)
    }
}

#[derive(Clone)]
pub struct PubSubBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: PubSubConfig,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
    subscriber: google_cloud_pubsub::client::Subscriber,
    publishers: tokio::sync::Mutex<HashMap<String, Publisher>>,
}

fn refused(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Refused(format!("{what}: {e}"))
}

/// Applies the endpoint and anonymous credentials of an emulator to any of the SDK's builders.
macro_rules! configure {
    ($builder:expr, $endpoint:expr) => {{
        let b = $builder;
        match $endpoint {
            Some(e) => b
                .with_endpoint(e.clone())
                .with_credentials(Anonymous::new().build()),
            None => b,
        }
    }};
}

impl PubSubBus {
    pub async fn connect(config: PubSubConfig) -> Result<Self, BusError> {
        // The SDK is built without its default (aws-lc) TLS provider: use ring's, unless the
        // process already installed one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ep = &config.endpoint;
        let topics = configure!(TopicAdmin::builder(), ep)
            .build()
            .await
            .map_err(|e| refused("topic admin client", e))?;
        let subscriptions = configure!(SubscriptionAdmin::builder(), ep)
            .build()
            .await
            .map_err(|e| refused("subscription admin client", e))?;
        let subscriber = configure!(google_cloud_pubsub::client::Subscriber::builder(), ep)
            .build()
            .await
            .map_err(|e| refused("subscriber client", e))?;
        Ok(PubSubBus {
            inner: Arc::new(Inner {
                config,
                topics,
                subscriptions,
                subscriber,
                publishers: Default::default(),
            }),
        })
    }

    pub fn topic_name(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.inner.config.project)
    }

    pub fn subscription_name(&self, subscription: &str) -> String {
        format!(
            "projects/{}/subscriptions/{subscription}",
            self.inner.config.project
        )
    }

    /// Creates the topic unless it exists.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), BusError> {
        let name = self.topic_name(topic);
        match self
            .inner
            .topics
            .create_topic()
            .set_name(&name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.http_status_code() == Some(409) || is_code(&e, "AlreadyExists") => Ok(()),
            Err(e) => Err(refused(&format!("creating {name}"), e)),
        }
    }

    /// Creates the subscription of the topic unless it exists.
    pub async fn ensure_subscription(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<(), BusError> {
        let name = self.subscription_name(subscription);
        let result = self
            .inner
            .subscriptions
            .create_subscription()
            .set_name(&name)
            .set_topic(self.topic_name(topic))
            .set_ack_deadline_seconds(
                i32::try_from(self.inner.config.ack_deadline_seconds).unwrap_or(i32::MAX),
            )
            .set_enable_message_ordering(true)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.http_status_code() == Some(409) || is_code(&e, "AlreadyExists") => Ok(()),
            Err(e) => Err(refused(&format!("creating {name}"), e)),
        }
    }

    async fn publisher(&self, topic: &str) -> Result<Publisher, BusError> {
        let mut publishers = self.inner.publishers.lock().await;
        if let Some(p) = publishers.get(topic) {
            return Ok(p.clone());
        }
        self.ensure_topic(topic).await?;
        let publisher = configure!(
            Publisher::builder(self.topic_name(topic)),
            &self.inner.config.endpoint
        )
        .set_delay_threshold(Duration::from_millis(5))
        .build()
        .await
        .map_err(|e| refused("publisher client", e))?;
        publishers.insert(topic.to_string(), publisher.clone());
        Ok(publisher)
    }
}

fn is_code(e: &google_cloud_pubsub::Error, code: &str) -> bool {
    e.status().is_some_and(|s| format!("{:?}", s.code) == code)
}

#[async_trait]
impl Bus for PubSubBus {
    async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<(), BusError> {
        if messages.is_empty() {
            return Ok(());
        }
        let publisher = self.publisher(topic).await?;
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            let mut msg = PsMessage::new()
                .set_data(m.data)
                .set_attributes(m.attributes);
            if !m.ordering_key.is_empty() {
                msg = msg.set_ordering_key(m.ordering_key.clone());
            }
            pending.push((m.ordering_key, publisher.publish(msg)));
        }
        let mut failure = None;
        for (key, future) in pending {
            if let Err(e) = future.await {
                // A failed key is paused by the SDK to keep its order: the caller retries
                // the whole batch, so let later publishes of that key through again.
                if !key.is_empty() {
                    publisher.resume_publish(key);
                }
                failure.get_or_insert(e);
            }
        }
        match failure {
            None => Ok(()),
            Some(e) => {
                // The topic may be gone (an emulator that restarted has lost it): recreate
                // it so that the caller's retry can succeed.
                let _ = self.ensure_topic(topic).await;
                Err(refused(&format!("publishing to {topic}"), e))
            }
        }
    }

    async fn subscribe(&self, topic: &str, subscription: &str) -> Result<Subscriber, BusError> {
        self.ensure_topic(topic).await?;
        self.ensure_subscription(topic, subscription).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let bound = usize::try_from(self.inner.config.max_outstanding.max(1))
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let shared = Shared {
            tx,
            in_flight: Arc::new(tokio::sync::Semaphore::new(bound)),
            seen: Default::default(),
        };
        for _ in 0..self.inner.config.streams.max(1) {
            tokio::spawn(pump(
                self.clone(),
                topic.to_string(),
                subscription.to_string(),
                shared.clone(),
            ));
        }
        Ok(Subscriber {
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        })
    }
}

/// What the streams of one subscriber share: where deliveries go, the in-flight bound,
/// and the receptions seen by this process, per message id, while unacknowledged.
#[derive(Clone)]
struct Shared {
    tx: mpsc::UnboundedSender<Delivery>,
    in_flight: Arc<tokio::sync::Semaphore>,
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

/// One streaming pull: receives a subscription's messages and hands them out as deliveries
/// until the `Subscriber` is dropped; reconnects after stream errors, recreating the topic
/// and the subscription if they are gone (an emulator that restarted has lost them).
async fn pump(bus: PubSubBus, topic: String, short_name: String, shared: Shared) {
    let Shared {
        tx,
        in_flight,
        seen,
    } = shared;
    let inner = bus.inner.clone();
    let subscription = bus.subscription_name(&short_name);
    let mut reconnecting = false;
    let mut backoff = Duration::from_millis(100);
    while !tx.is_closed() {
        if reconnecting {
            let ensured = async {
                bus.ensure_topic(&topic).await?;
                bus.ensure_subscription(&topic, &short_name).await
            };
            if let Err(e) = ensured.await {
                tracing::warn!(%subscription, error = %e, "pub/sub subscription not ready");
            }
        }
        reconnecting = true;
        let mut stream = inner
            .subscriber
            .subscribe(subscription.clone())
            .set_max_outstanding_messages(inner.config.max_outstanding)
            .build();
        loop {
            // The bound is also kept here: the SDK's flow control is enforced by the server,
            // and the emulator ignores it.
            let permit = tokio::select! {
                p = in_flight.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            };
            let next = tokio::select! {
                n = stream.next() => n,
                _ = tx.closed() => return,
            };
            let (message, handler) = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(%subscription, error = %e, "pub/sub stream failed; reconnecting");
                    break;
                }
                None => break,
            };
            backoff = Duration::from_millis(100);
            let id = message.message_id.clone();
            let local = {
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() > 100_000 {
                    seen.clear();
                }
                let n = seen.entry(id.clone()).or_insert(0);
                *n += 1;
                *n
            };
            let attempt = handler
                .delivery_attempt()
                .and_then(|a| u32::try_from(a).ok())
                .filter(|a| *a > 0)
                .unwrap_or(local);
            let (done, answer) = oneshot::channel();
            let delivery = Delivery {
                message: Message {
                    ordering_key: message.ordering_key,
                    attributes: message.attributes.into_iter().collect(),
                    data: message.data.to_vec(),
                },
                attempt,
                done: Some(done),
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if answer.await == Ok(true) {
                    seen.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    handler.ack();
                } else {
                    // Handed back after the same growing pause as the in-process bus, so
                    // a consumer whose store is briefly down is not flooded with retries
                    // (the message stays leased meanwhile, and counts as in flight).
                    tokio::time::sleep(super::redelivery_delay(attempt)).await;
                    handler.nack();
                }
            });
            if tx.send(delivery).is_err() {
                return;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
