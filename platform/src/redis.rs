//! The Redis pool. Every key the project writes starts with `Settings::redis_prefix`, inside
//! the database the URL selects.

use fred::prelude::*;
use std::time::Duration;

use crate::Settings;

pub type RedisPool = fred::clients::Pool;

pub async fn connect(settings: &Settings) -> Result<RedisPool, fred::error::Error> {
    connect_url(&settings.redis_url).await
}

pub async fn connect_url(url: &str) -> Result<RedisPool, fred::error::Error> {
    connect_url_with(url, Duration::from_millis(500)).await
}

/// A pool whose commands may take up to `command_timeout`: for batch work (the replay),
/// where one script issuing 10,000 tags can outlast the serving pools' 500 ms on a busy
/// machine, and giving up would fail the whole run.
pub async fn connect_with(
    settings: &Settings,
    command_timeout: Duration,
) -> Result<RedisPool, fred::error::Error> {
    connect_url_with(&settings.redis_url, command_timeout).await
}

async fn connect_url_with(
    url: &str,
    command_timeout: Duration,
) -> Result<RedisPool, fred::error::Error> {
    let config = Config::from_url(url)?;
    let pool = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = command_timeout;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build_pool(4)?;
    pool.init().await?;
    Ok(pool)
}

/// Keys per `SCAN` page and per `UNLINK` in [`delete_prefix`].
const DELETE_PAGE: u32 = 1000;

/// Escapes the glob characters of a `SCAN MATCH` pattern.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The cursor and the keys of a `SCAN` reply.
pub fn scan_reply(page: Value) -> Result<(String, Vec<String>), fred::error::Error> {
    let mut parts = page.into_array().into_iter();
    let cursor = parts.next().and_then(|c| c.as_string()).ok_or_else(|| {
        fred::error::Error::new(
            fred::error::ErrorKind::Parse,
            "a SCAN reply without a cursor",
        )
    })?;
    let keys = parts
        .next()
        .map(|k| k.into_array())
        .unwrap_or_default()
        .into_iter()
        .filter(|k| !k.is_null())
        .filter_map(|k| k.as_string())
        .collect();
    Ok((cursor, keys))
}

/// Deletes every key that starts with `prefix` (`SCAN` and `UNLINK`, a page at a time);
/// returns how many.
pub async fn delete_prefix(redis: &RedisPool, prefix: &str) -> Result<u64, fred::error::Error> {
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor = "0".to_string();
    let mut removed = 0u64;
    loop {
        let page: Value = redis
            .scan_page(cursor, pattern.clone(), Some(DELETE_PAGE), None)
            .await?;
        let (next, keys) = scan_reply(page)?;
        if !keys.is_empty() {
            let n: i64 = redis.unlink(keys).await?;
            removed += u64::try_from(n).unwrap_or(0);
        }
        if next == "0" {
            return Ok(removed);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("vt:[a]*?\\"), "vt:\\[a\\]\\*\\?\\\\");
        assert_eq!(glob_escape("vt:bench:1:"), "vt:bench:1:");
    }
}
