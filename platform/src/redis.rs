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
    let config = Config::from_url(url)?;
    let pool = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
        })
        .with_performance_config(|p| {
            p.default_command_timeout = Duration::from_millis(500);
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build_pool(4)?;
    pool.init().await?;
    Ok(pool)
}
