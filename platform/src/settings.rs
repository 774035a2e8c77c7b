//! Settings: defaults < `.env` file (development) < `VOKETAG_*` environment variables,
//! validated at start so that a bad value is reported with the variable that holds it.

use figment::Figment;
use figment::providers::{Env, Serialized};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    Inproc,
    Pubsub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub database_url: String,
    pub db_max_connections: u32,
    pub redis_url: String,
    /// Every key the project writes to Redis starts with this prefix.
    pub redis_prefix: String,
    pub bus: BusKind,
    pub pubsub_endpoint: Option<String>,
    pub pubsub_project: Option<String>,
    /// Seconds Pub/Sub waits for an acknowledgement before delivering a message again (also
    /// what a crashed consumer's messages wait); applied when a subscription is created.
    pub pubsub_ack_deadline_seconds: u32,
    /// A real identity provider's JWKS; unset means the development identity provider.
    pub jwks_url: Option<String>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub chain_rpc_url: Option<String>,
    pub region: String,
    pub trace_sample_ratio: f64,
    pub factory_addr: SocketAddr,
    pub scan_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Where a worker process (`voketag work …`) serves `/metrics` and `/v1/health`; the
    /// APIs serve them on their own address. Unset: a worker serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Largest CSV upload accepted, in bytes.
    pub import_max_bytes: u64,
    pub api_key_requests_per_minute: u32,
    /// Seconds a request may take before it is answered with 503.
    pub request_timeout_secs: u64,
    /// Salt of the device hash in scan observations (LGPD: no raw device signals stored).
    pub device_salt: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: "postgres://postgres:postgres@127.0.0.1:5432/voketag".into(),
            db_max_connections: 20,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "vt:".into(),
            bus: BusKind::Inproc,
            pubsub_endpoint: None,
            pubsub_project: None,
            pubsub_ack_deadline_seconds: 30,
            jwks_url: None,
            jwt_issuer: "voketag-dev".into(),
            jwt_audience: "voketag".into(),
            chain_rpc_url: None,
            region: "local".into(),
            trace_sample_ratio: 0.1,
            factory_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            scan_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
            metrics_addr: None,
            log_format: LogFormat::Json,
            log_filter: "info".into(),
            import_max_bytes: 256 * 1024 * 1024,
            api_key_requests_per_minute: 60,
            request_timeout_secs: 10,
            device_salt: "voketag-dev-salt".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {variable}: {reason}")]
pub struct SettingsError {
    pub variable: String,
    pub reason: String,
}

fn var(key: &str) -> String {
    format!("VOKETAG_{}", key.to_ascii_uppercase())
}

impl Settings {
    /// Loads `.env` (if present) and the environment.
    pub fn load() -> Result<Self, SettingsError> {
        // A missing .env is normal outside development.
        let _ = dotenvy::dotenv();
        Self::from_figment(
            Figment::from(Serialized::defaults(Settings::default()))
                .merge(Env::prefixed("VOKETAG_").filter(|k| !k.as_str().is_empty())),
        )
    }

    fn from_figment(figment: Figment) -> Result<Self, SettingsError> {
        let settings: Settings = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            SettingsError {
                variable: if key.is_empty() {
                    "VOKETAG_*".into()
                } else {
                    var(&key)
                },
                reason: e.kind.to_string(),
            }
        })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key: &str, reason: String| {
            Err(SettingsError {
                variable: var(key),
                reason,
            })
        };
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return bad(
                "trace_sample_ratio",
                format!("{} is not between 0 and 1", self.trace_sample_ratio),
            );
        }
        for (key, value, schemes) in [
            (
                "database_url",
                &self.database_url,
                &["postgres", "postgresql"][..],
            ),
            ("redis_url", &self.redis_url, &["redis", "rediss"][..]),
        ] {
            match url::Url::parse(value) {
                Ok(u) if schemes.contains(&u.scheme()) => {}
                Ok(u) => {
                    return bad(
                        key,
                        format!(
                            "scheme `{}` is not one of {}",
                            u.scheme(),
                            schemes.join(", ")
                        ),
                    );
                }
                Err(e) => return bad(key, format!("not a URL: {e}")),
            }
        }
        if let Some(u) = &self.jwks_url
            && let Err(e) = url::Url::parse(u)
        {
            return bad("jwks_url", format!("not a URL: {e}"));
        }
        if self.bus == BusKind::Pubsub && self.pubsub_project.is_none() {
            return bad("pubsub_project", "required when VOKETAG_BUS=pubsub".into());
        }
        if !(10..=600).contains(&self.pubsub_ack_deadline_seconds) {
            return bad(
                "pubsub_ack_deadline_seconds",
                format!(
                    "{} is not between 10 and 600 (Pub/Sub's limits)",
                    self.pubsub_ack_deadline_seconds
                ),
            );
        }
        if self.db_max_connections == 0 {
            return bad("db_max_connections", "must be at least 1".into());
        }
        if self.api_key_requests_per_minute == 0 {
            return bad("api_key_requests_per_minute", "must be at least 1".into());
        }
        Ok(())
    }

    /// The Postgres URL with another database name: tests and the benchmark use it.
    pub fn database_url_for(&self, database: &str) -> String {
        match url::Url::parse(&self.database_url) {
            Ok(mut u) => {
                u.set_path(database);
                u.to_string()
            }
            Err(_) => self.database_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    fn with(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let mut f = Figment::from(Serialized::defaults(Settings::default()));
        for (k, v) in pairs {
            f = f.merge(Serialized::default(k, v));
        }
        Settings::from_figment(f)
    }

    #[test]
    fn defaults_are_valid() {
        let s = with(&[]).unwrap();
        assert_eq!(s.factory_addr.port(), 8080);
        assert_eq!(s.bus, BusKind::Inproc);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e = with(&[("db_max_connections", "many")]).unwrap_err();
        assert_eq!(e.variable, "VOKETAG_DB_MAX_CONNECTIONS");
        let e = with(&[("trace_sample_ratio", "1.5")]).unwrap_err();
        assert_eq!(e.variable, "VOKETAG_TRACE_SAMPLE_RATIO");
        let e = with(&[("redis_url", "http://x")]).unwrap_err();
        assert_eq!(e.variable, "VOKETAG_REDIS_URL");
        assert!(e.reason.contains("scheme"), "{}", e.reason);
        let e = with(&[("bus", "kafka")]).unwrap_err();
        assert_eq!(e.variable, "VOKETAG_BUS");
    }

    #[test]
    fn pubsub_needs_a_project() {
        let e = with(&[("bus", "pubsub")]).unwrap_err();
        assert_eq!(e.variable, "VOKETAG_PUBSUB_PROJECT");
    }

    #[test]
    fn the_ack_deadline_stays_within_pubsubs_limits() {
        let deadline = |seconds: u32| {
            Settings::from_figment(
                Figment::from(Serialized::defaults(Settings::default()))
                    .merge(Serialized::default("pubsub_ack_deadline_seconds", seconds)),
            )
        };
        assert_eq!(with(&[]).unwrap().pubsub_ack_deadline_seconds, 30);
        assert_eq!(deadline(10).unwrap().pubsub_ack_deadline_seconds, 10);
        for bad in [9, 601] {
            let e = deadline(bad).unwrap_err();
            assert_eq!(e.variable, "VOKETAG_PUBSUB_ACK_DEADLINE_SECONDS");
        }
    }
}
