//! Per-API-key rate limiting in Redis with GCRA (the algorithm of redis-cell).
//!
//! Each key stores one number, its theoretical arrival time (TAT) in microseconds. With
//! `limit_per_minute = L`, requests are spaced `T = 60 s / L` apart on average and up to `L`
//! may arrive at once from cold. A request at `now` is allowed when
//! `max(TAT, now) + T - L·T <= now`, and then moves TAT to `max(TAT, now) + T`.
//! The whole check-and-update is one Lua script, so it is atomic and every instance shares
//! the same state; the script reads the clock with Redis `TIME`, so instances whose own
//! clocks disagree still agree on the limit.

use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::LuaInterface;
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::AuthError;

/// KEYS[1]: the bucket. ARGV[1]: emission interval T (µs). ARGV[2]: burst L.
/// Returns `{allowed (0|1), remaining, retry_after_us}`.
const GCRA_LUA: &str = r#"
local key = KEYS[1]
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', key) or now) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, allow_at - now}
end
local ttl_ms = math.ceil((new_tat - now) / 1000)
-- '%d' keeps all digits; tostring() would use %.14g and lose microseconds.
redis.call('SET', key, string.format('%d', new_tat), 'PX', ttl_ms)
return {1, math.floor((now - allow_at) / interval), 0}
"#;

/// The outcome of one rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed { remaining: u32 },
    Limited { retry_after: Duration },
}

impl RateDecision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, RateDecision::Allowed { .. })
    }

    /// The `Retry-After` header value: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            RateDecision::Allowed { .. } => None,
            RateDecision::Limited { retry_after } => {
                let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
                Some(ms.div_ceil(1000).max(1))
            }
        }
    }
}

/// A GCRA limiter shared by all instances through Redis.
pub struct RedisRateLimiter {
    client: Pool,
    key_prefix: String,
    limit_per_minute: u32,
    /// SHA-1 of the script as returned by `SCRIPT LOAD`, loaded on first use.
    sha: OnceCell<String>,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("key_prefix", &self.key_prefix)
            .field("limit_per_minute", &self.limit_per_minute)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiter {
    /// `key_prefix` is prepended verbatim (e.g. `"voketag:"`). A limit of 0 is taken as 1.
    pub fn new(client: Pool, key_prefix: String, limit_per_minute: u32) -> Self {
        RedisRateLimiter {
            client,
            key_prefix,
            limit_per_minute: limit_per_minute.max(1),
            sha: OnceCell::new(),
        }
    }

    pub fn limit_per_minute(&self) -> u32 {
        self.limit_per_minute
    }

    /// The Redis key of an API key's bucket.
    pub fn key(&self, key_id: Uuid) -> String {
        format!("{}ratelimit:apikey:{key_id}", self.key_prefix)
    }

    /// Counts one request for `key_id` and says whether it may proceed.
    pub async fn check(&self, key_id: Uuid) -> Result<RateDecision, AuthError> {
        let interval_us = (60_000_000 / u64::from(self.limit_per_minute)).max(1);
        let burst = u64::from(self.limit_per_minute);
        let key = self.key(key_id);
        let args = vec![interval_us.to_string(), burst.to_string()];
        let reply: Vec<i64> = self.run(key, args).await?;
        decode_reply(&reply)
    }

    async fn run(&self, key: String, args: Vec<String>) -> Result<Vec<i64>, AuthError> {
        let err = |e: fred::error::Error| AuthError::RateLimiter(e.to_string());
        let sha = self
            .sha
            .get_or_try_init(|| async {
                self.client
                    .script_load::<String, _>(GCRA_LUA)
                    .await
                    .map_err(err)
            })
            .await?;
        match self
            .client
            .evalsha::<Vec<i64>, _, _, _>(sha.as_str(), key.as_str(), args.clone())
            .await
        {
            // The server lost its script cache (restart, failover, SCRIPT FLUSH): EVAL
            // runs the script and caches it again under the same SHA.
            Err(e) if e.details().starts_with("NOSCRIPT") => self
                .client
                .eval::<Vec<i64>, _, _, _>(GCRA_LUA, key.as_str(), args)
                .await
                .map_err(err),
            other => other.map_err(err),
        }
    }
}

fn decode_reply(reply: &[i64]) -> Result<RateDecision, AuthError> {
    match reply {
        [1, remaining, _] => Ok(RateDecision::Allowed {
            remaining: u32::try_from(*remaining).unwrap_or(0),
        }),
        [0, _, retry_after_us] => Ok(RateDecision::Limited {
            retry_after: Duration::from_micros(u64::try_from(*retry_after_us).unwrap_or(0)),
        }),
        other => Err(AuthError::RateLimiter(format!(
            "unexpected reply from the rate-limit script: {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::redis_pool;
    use fred::interfaces::KeysInterface;

    fn prefix() -> String {
        format!("test:{}:", Uuid::new_v4().simple())
    }

    #[test]
    fn replies_decode() {
        assert_eq!(
            decode_reply(&[1, 59, 0]).ok(),
            Some(RateDecision::Allowed { remaining: 59 })
        );
        assert_eq!(
            decode_reply(&[0, 0, 1_000_000]).ok(),
            Some(RateDecision::Limited {
                retry_after: Duration::from_secs(1)
            })
        );
        assert!(decode_reply(&[7]).is_err());
    }

    #[test]
    fn retry_after_header_rounds_up() {
        let limited = |ms| RateDecision::Limited {
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(limited(999).retry_after_secs(), Some(1));
        assert_eq!(limited(1000).retry_after_secs(), Some(1));
        assert_eq!(limited(1001).retry_after_secs(), Some(2));
        assert_eq!(limited(0).retry_after_secs(), Some(1));
        assert_eq!(
            RateDecision::Allowed { remaining: 3 }.retry_after_secs(),
            None
        );
    }

    #[tokio::test]
    async fn sixty_per_minute_allows_a_burst_of_sixty_then_limits() {
        let pool = redis_pool().await;
        let limiter = RedisRateLimiter::new(pool.clone(), prefix(), 60);
        let key_id = Uuid::new_v4();

        for i in 0..60u32 {
            let decision = limiter.check(key_id).await.expect("check");
            assert_eq!(
                decision,
                RateDecision::Allowed { remaining: 59 - i },
                "request {}",
                i + 1
            );
        }
        let decision = limiter.check(key_id).await.expect("check");
        let RateDecision::Limited { retry_after } = decision else {
            panic!("61st request should be limited, got {decision:?}");
        };
        assert!(
            retry_after > Duration::from_millis(800) && retry_after <= Duration::from_secs(1),
            "{retry_after:?}"
        );
        assert_eq!(decision.retry_after_secs(), Some(1));

        // Limited requests do not consume capacity: still about 1 s to wait.
        for _ in 0..5 {
            let d = limiter.check(key_id).await.expect("check");
            assert!(
                matches!(d, RateDecision::Limited { retry_after } if retry_after > Duration::from_millis(700)),
                "{d:?}"
            );
        }

        // Other keys are unaffected.
        assert_eq!(
            limiter.check(Uuid::new_v4()).await.expect("check"),
            RateDecision::Allowed { remaining: 59 }
        );

        // The bucket expires on its own once it would be full again.
        let pttl: i64 = pool.pttl(limiter.key(key_id)).await.expect("pttl");
        assert!(pttl > 55_000 && pttl <= 60_000, "{pttl}");

        // After the retry-after, one more request goes through.
        tokio::time::sleep(retry_after + Duration::from_millis(20)).await;
        assert!(limiter.check(key_id).await.expect("check").is_allowed());
        assert!(!limiter.check(key_id).await.expect("check").is_allowed());

        let _: i64 = pool.del(limiter.key(key_id)).await.expect("cleanup");
    }

    #[tokio::test]
    async fn instances_share_the_bucket_and_survive_a_lost_script_cache() {
        let pool = redis_pool().await;
        let prefix = prefix();
        let a = RedisRateLimiter::new(pool.clone(), prefix.clone(), 3);
        let mut b = RedisRateLimiter::new(pool.clone(), prefix, 3);
        // `b` believes in a SHA the server does not know, as after a Redis restart or
        // `SCRIPT FLUSH` (not issued here: the test Redis is shared): EVAL fallback.
        b.sha = OnceCell::new_with(Some("0".repeat(40)));
        let key_id = Uuid::new_v4();
        assert!(a.check(key_id).await.expect("check").is_allowed());
        assert!(b.check(key_id).await.expect("check").is_allowed());
        assert_eq!(
            a.check(key_id).await.expect("check"),
            RateDecision::Allowed { remaining: 0 }
        );
        let d = b.check(key_id).await.expect("check");
        // 3 per minute: the next slot is 20 s away.
        assert!(
            matches!(d, RateDecision::Limited { retry_after }
                if retry_after > Duration::from_secs(19) && retry_after <= Duration::from_secs(20)),
            "{d:?}"
        );
        let _: i64 = pool.del(a.key(key_id)).await.expect("cleanup");
    }

    #[tokio::test]
    async fn concurrent_checks_never_exceed_the_burst() {
        let pool = redis_pool().await;
        let limiter = std::sync::Arc::new(RedisRateLimiter::new(pool.clone(), prefix(), 60));
        let key_id = Uuid::new_v4();
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let l = limiter.clone();
            tasks.push(tokio::spawn(async move { l.check(key_id).await }));
        }
        let mut allowed = 0;
        for t in tasks {
            if t.await.expect("join").expect("check").is_allowed() {
                allowed += 1;
            }
        }
        // 60 from the burst, plus at most one more if a second elapsed during the test.
        assert!((60..=61).contains(&allowed), "{allowed}");
        let _: i64 = pool.del(limiter.key(key_id)).await.expect("cleanup");
    }
}
