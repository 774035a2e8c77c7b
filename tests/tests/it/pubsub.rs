//! The Google Pub/Sub bus against the real emulator (Google's `pstest`, served by
//! `deploy/local/pubsub-emulator` on 127.0.0.1:8085): attributes and ordering keys carried,
//! a nacked (or dropped) message delivered again with a higher attempt, an acknowledged one
//! never again.

use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;
use voketag_platform::bus::pubsub::{PubSubBus, PubSubConfig};
use voketag_platform::bus::{Bus, Message, Subscriber};
use voketag_tests::{PUBSUB_ENDPOINT, pubsub_emulator};

async fn bus() -> PubSubBus {
    pubsub_emulator();
    PubSubBus::connect(PubSubConfig::new(
        "voketag-test",
        Some(PUBSUB_ENDPOINT.into()),
    ))
    .await
    .expect("connecting to the emulator")
}

fn unique(what: &str) -> String {
    format!("{what}-{}", Uuid::new_v4().simple())
}

fn message(key: &str, n: u32) -> Message {
    let mut attributes = BTreeMap::new();
    attributes.insert("event_type".to_string(), "FactoryRegistered".to_string());
    attributes.insert("version".to_string(), n.to_string());
    Message {
        ordering_key: key.to_string(),
        attributes,
        data: format!("payload-{n}").into_bytes(),
    }
}

async fn next(sub: &Subscriber, within: Duration) -> Option<voketag_platform::bus::Delivery> {
    tokio::time::timeout(within, sub.next())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_delivers_messages_with_their_attributes_and_ordering_key() {
    let bus = bus().await;
    let (topic, subscription) = (unique("events"), unique("projector"));
    let sub = bus.subscribe(&topic, &subscription).await.unwrap();
    let sent: Vec<Message> = (1..=5).map(|n| message("aggregate-1", n)).collect();
    bus.publish(&topic, sent.clone()).await.unwrap();

    let mut received = Vec::new();
    while received.len() < sent.len() {
        let d = next(&sub, Duration::from_secs(20))
            .await
            .expect("every published message is delivered");
        assert_eq!(d.attempt, 1);
        received.push(d.message.clone());
        d.ack();
    }
    // The emulator ignores ordering keys: compare as sets.
    received.sort_by(|a, b| a.data.cmp(&b.data));
    assert_eq!(received, sent);
    // Acknowledged: none comes back.
    assert!(next(&sub, Duration::from_secs(3)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_redelivers_a_nacked_message_and_never_an_acknowledged_one() {
    let bus = bus().await;
    let (topic, subscription) = (unique("events"), unique("projector"));
    let sub = bus.subscribe(&topic, &subscription).await.unwrap();
    bus.publish(&topic, vec![message("aggregate-2", 7)])
        .await
        .unwrap();

    let first = next(&sub, Duration::from_secs(20))
        .await
        .expect("delivered");
    assert_eq!(first.attempt, 1);
    assert_eq!(first.message, message("aggregate-2", 7));
    first.nack();

    let second = next(&sub, Duration::from_secs(20))
        .await
        .expect("a nacked message is delivered again");
    assert_eq!(second.attempt, 2);
    assert_eq!(second.message, message("aggregate-2", 7));
    // Dropped without an answer: also delivered again.
    drop(second);

    let third = next(&sub, Duration::from_secs(20))
        .await
        .expect("a dropped delivery is delivered again");
    assert_eq!(third.attempt, 3);
    third.ack();

    // Well past the ack deadline (30 s would be too slow for a test; the ack is what
    // matters): nothing comes back after the acknowledgement.
    assert!(next(&sub, Duration::from_secs(5)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_every_subscription_gets_every_message() {
    let bus = bus().await;
    let topic = unique("events");
    let (a, b) = (unique("a"), unique("b"));
    let sa = bus.subscribe(&topic, &a).await.unwrap();
    let sb = bus.subscribe(&topic, &b).await.unwrap();
    bus.publish(&topic, (1..=3).map(|n| message("k", n)).collect())
        .await
        .unwrap();
    for sub in [&sa, &sb] {
        let mut got = Vec::new();
        for _ in 0..3 {
            let d = next(sub, Duration::from_secs(20)).await.expect("delivered");
            got.push(d.message.data.clone());
            d.ack();
        }
        got.sort();
        assert_eq!(
            got,
            (1..=3)
                .map(|n| format!("payload-{n}").into_bytes())
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_bounds_unacknowledged_messages_and_carries_a_thousand() {
    pubsub_emulator();
    let mut config = PubSubConfig::new("voketag-test", Some(PUBSUB_ENDPOINT.into()));
    config.max_outstanding = 16;
    let bus = PubSubBus::connect(config).await.unwrap();
    let (topic, subscription) = (unique("events"), unique("projector"));
    let sub = bus.subscribe(&topic, &subscription).await.unwrap();
    let sent: Vec<Message> = (0..1000)
        .map(|n| message(&format!("k{}", n % 7), n))
        .collect();
    bus.publish(&topic, sent.clone()).await.unwrap();

    // Held without an answer: no more than the bound arrive.
    let mut held = Vec::new();
    while let Some(d) = next(&sub, Duration::from_secs(2)).await {
        held.push(d);
        assert!(
            held.len() <= 16,
            "more than 16 unacknowledged messages delivered"
        );
    }
    assert_eq!(held.len(), 16);
    let mut got: Vec<Vec<u8>> = held
        .into_iter()
        .map(|d| {
            let data = d.message.data.clone();
            d.ack();
            data
        })
        .collect();
    while got.len() < sent.len() {
        let d = next(&sub, Duration::from_secs(20))
            .await
            .expect("every message arrives");
        got.push(d.message.data.clone());
        d.ack();
    }
    got.sort();
    let mut want: Vec<Vec<u8>> = sent.into_iter().map(|m| m.data).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_bus_survives_an_emulator_restart() {
    // A private emulator on a free port, so that restarting it leaves the other tests alone.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .to_string();
    let addr = addr.as_str();
    // Starts it (it must not be running) and returns its pid, which the script prints.
    let start = || {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/local/pubsub-emulator");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .env("VOKETAG_PUBSUB_EMULATOR_ADDR", addr)
            .output()
            .expect("running deploy/local/pubsub-emulator");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .split("(pid ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_else(|| panic!("no pid in: {stdout}"))
            .to_string()
    };
    let stop = |pid: &str| {
        let status = std::process::Command::new("kill")
            .arg(pid)
            .status()
            .unwrap();
        assert!(status.success());
    };
    let pid = start();
    let bus = PubSubBus::connect(PubSubConfig::new(
        "voketag-test",
        Some(format!("http://{addr}")),
    ))
    .await
    .unwrap();
    let (topic, subscription) = (unique("events"), unique("projector"));
    let sub = bus.subscribe(&topic, &subscription).await.unwrap();
    bus.publish(&topic, vec![message("k", 1)]).await.unwrap();
    next(&sub, Duration::from_secs(20))
        .await
        .expect("delivered")
        .ack();

    stop(&pid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = start();

    // The relay retries a refused publish; the bus recreates what the restart lost.
    let mut published = false;
    for _ in 0..50 {
        if bus.publish(&topic, vec![message("k", 2)]).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(published, "publishing works again after the restart");
    // Published possibly before the subscription was recreated: publish until one arrives.
    let mut delivered = None;
    for _ in 0..15 {
        if let Some(d) = next(&sub, Duration::from_secs(2)).await {
            delivered = Some(d);
            break;
        }
        bus.publish(&topic, vec![message("k", 2)]).await.unwrap();
    }
    stop(&pid);
    let d = delivered.expect("the subscriber receives again after the restart");
    assert_eq!(d.message, message("k", 2));
    d.ack();
}
