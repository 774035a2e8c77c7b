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
