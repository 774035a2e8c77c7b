//! Finding a tag in the read models: the Redis scan model first (one round trip that also
//! counts the scan), the Postgres views when Redis misses, is slow, fails or its circuit is
//! open. Each behind its own circuit breaker and deadline. Never the event store.

use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;
use voketag_projections::TagView;
use voketag_projections::pg_views::PgViews;
use voketag_projections::redis_model::RedisScanModel;
use voketag_schemas::scan_api::ScanSource;

use crate::breaker::{Breaker, State};

/// Deadline of one Redis scan: the scan path's latency budget.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// Deadline of one Postgres lookup.
pub const POSTGRES_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive failures or timeouts that open a circuit.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long an open circuit rejects calls before it lets a probe through.
pub const OPEN_FOR: Duration = Duration::from_secs(2);

/// What the read models know about a scanned tag.
#[derive(Debug, Clone)]
pub struct Found {
    /// `None`: no read model knows the tag.
    pub view: Option<TagView>,
    pub first_scan: bool,
    /// The tag's scan count including this scan; 0 for an unknown tag.
    pub scan_number: u64,
    pub source: ScanSource,
}

/// Neither read model answered.
#[derive(Debug, thiserror::Error)]
#[error("no read model answered (redis: {redis}; postgres: {postgres})")]
pub struct Unavailable {
    pub redis: String,
    pub postgres: String,
}

pub struct ReadModels {
    redis: RedisScanModel,
    postgres: PgViews,
    redis_breaker: Breaker,
    postgres_breaker: Breaker,
    counted: Lookups,
}

/// `scan_lookups_total` of the outcomes every scan has, registered once: looking a
/// labelled counter up by name costs a scan more than counting does.
struct Lookups {
    cache_hit: metrics::Counter,
    cache_miss: metrics::Counter,
    database_hit: metrics::Counter,
    database_miss: metrics::Counter,
}

impl Lookups {
    fn new() -> Self {
        let counter = |source: &'static str, outcome: &'static str| metrics::counter!("scan_lookups_total", "source" => source, "outcome" => outcome);
        Lookups {
            cache_hit: counter("cache", "hit"),
            cache_miss: counter("cache", "miss"),
            database_hit: counter("database", "hit"),
            database_miss: counter("database", "miss"),
        }
    }
}

impl ReadModels {
    pub fn new(redis: RedisScanModel, postgres: PgViews) -> Self {
        ReadModels {
            redis,
            postgres,
            redis_breaker: Breaker::new("redis", FAILURES_TO_OPEN, OPEN_FOR, REDIS_TIMEOUT),
            postgres_breaker: Breaker::new(
                "postgres",
                FAILURES_TO_OPEN,
                OPEN_FOR,
                POSTGRES_TIMEOUT,
            ),
            counted: Lookups::new(),
        }
    }

    /// Loads the Redis scripts so that the first scan is one round trip too. Redis being
    /// down now is no reason not to start: scans fall back to Postgres meanwhile.
    pub async fn prepare(&self) {
        match tokio::time::timeout(Duration::from_secs(2), self.redis.prepare()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not load the Redis scan scripts yet"),
            Err(_) => tracing::warn!("loading the Redis scan scripts timed out"),
        }
    }

    /// The breakers' states, Redis first.
    pub fn circuits(&self) -> (State, State) {
        (self.redis_breaker.state(), self.postgres_breaker.state())
    }

    /// Finds `tag_id` and counts the scan (in Redis, when Redis answers; the scans worker
    /// counts it in the views from the published observation).
    pub async fn scan(&self, tag_id: Uuid, now: DateTime<Utc>) -> Result<Found, Unavailable> {
        let redis_error = match self.redis_breaker.call(self.redis.scan(tag_id, now)).await {
            Ok(Some(hit)) => {
                self.counted.cache_hit.increment(1);
                return Ok(Found {
                    scan_number: hit.view.scan_count,
                    first_scan: hit.first_scan,
                    view: Some(hit.view),
                    source: ScanSource::Cache,
                });
            }
            Ok(None) => {
                self.counted.cache_miss.increment(1);
                None
            }
            Err(e) => {
                metrics::counter!("scan_lookups_total", "source" => "cache", "outcome" => e.kind())
                    .increment(1);
                // An open circuit was logged once when it opened; every scan meanwhile
                // would only repeat it (and cost a log line per request).
                if matches!(e, crate::breaker::Unavailable::Open) {
                    tracing::debug!(tag.id = %tag_id, read_model = "redis", "circuit open: asking Postgres");
                } else {
                    tracing::warn!(tag.id = %tag_id, read_model = "redis", error = %e, "falling back to Postgres");
                }
                Some(e.to_string())
            }
        };
        match self
            .postgres_breaker
            .call(self.postgres.lookup(tag_id))
            .await
        {
            Ok(Some(mut view)) => {
                self.counted.database_hit.increment(1);
                // The views count scans only once the scans worker has recorded them: this
                // one is not among them yet.
                let first_scan = view.first_scan_at.is_none();
                let scan_number = view.scan_count + 1;
                view.scan_count = scan_number;
                // To the whole second, as every read model keeps scan times.
                view.first_scan_at
                    .get_or_insert(DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now));
                Ok(Found {
                    view: Some(view),
                    first_scan,
                    scan_number,
                    source: ScanSource::Database,
                })
            }
            Ok(None) => {
                self.counted.database_miss.increment(1);
                Ok(Found {
                    view: None,
                    first_scan: false,
                    scan_number: 0,
                    source: ScanSource::Database,
                })
            }
            Err(e) => {
                metrics::counter!("scan_lookups_total", "source" => "database", "outcome" => e.kind())
                    .increment(1);
                tracing::warn!(tag.id = %tag_id, read_model = "postgres", error = %e, "Postgres views unavailable");
                match redis_error {
                    // Redis answered, and it is a complete projection: its miss stands.
                    None => Ok(Found {
                        view: None,
                        first_scan: false,
                        scan_number: 0,
                        source: ScanSource::Cache,
                    }),
                    Some(redis) => Err(Unavailable {
                        redis,
                        postgres: e.to_string(),
                    }),
                }
            }
        }
    }
}
