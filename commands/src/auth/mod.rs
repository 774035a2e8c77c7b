//! Identity on the write side: who is calling, for which factory, with which role.
//!
//! Two kinds of credential reach the command API, both as `Authorization: Bearer …`:
//!
//! * a JWT signed with RS256 by the identity provider (or, in development, by the
//!   [`dev_idp::DevIdp`] whose key lives in Postgres), checked by [`jwt::JwtVerifier`];
//! * an API key `vk_<prefix>_<secret>` for machines, checked by [`api_key::authenticate`]
//!   and throttled per key by [`rate_limit::RedisRateLimiter`].
//!
//! [`Credential::from_authorization`] tells the two apart; either way the result is a
//! [`Principal`].

pub mod api_key;
pub mod dev_idp;
pub mod jwt;
pub mod rate_limit;

pub use api_key::{NewApiKey, authenticate as authenticate_api_key};
pub use dev_idp::{DevIdp, DevIdpError};
pub use jwt::{Claims, JwksCachePolicy, JwtVerifier};
pub use rate_limit::{RateDecision, RedisRateLimiter};

use voketag_domain::Role;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The JWT `sub`, or `api_key:<key_id>` for an API key.
    pub subject: String,
    /// The factory the caller acts for.
    pub factory_id: uuid::Uuid,
    pub role: Role,
    pub method: AuthMethod,
}

/// How a [`Principal`] proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey { key_id: uuid::Uuid },
}

impl Principal {
    /// The key id when the caller used an API key (the rate limiter's key).
    pub fn api_key_id(&self) -> Option<uuid::Uuid> {
        match self.method {
            AuthMethod::ApiKey { key_id } => Some(key_id),
            AuthMethod::Jwt => None,
        }
    }
}

impl From<Claims> for Principal {
    fn from(claims: Claims) -> Self {
        Principal {
            subject: claims.sub,
            factory_id: claims.factory_id,
            role: claims.role,
            method: AuthMethod::Jwt,
        }
    }
}

/// Why a caller could not be authenticated.
///
/// `Missing`, `InvalidToken`, `UnknownKey` and `Revoked` are the caller's fault (401) and
/// their text is safe to show. `JwksUnavailable`, `Store` and `RateLimiter` are ours (503):
/// their detail is for the logs; show [`AuthError::public_message`] instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `Authorization: Bearer <token or API key>`")]
    Missing,
    /// The reason is safe to show to the caller.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// Deliberately says nothing about which part of the key was wrong.
    #[error("unknown API key")]
    UnknownKey,
    #[error("API key has been revoked")]
    Revoked,
    #[error("signing keys unavailable: {0}")]
    JwksUnavailable(String),
    #[error("credential store error: {0}")]
    Store(String),
    #[error("rate limiter error: {0}")]
    RateLimiter(String),
}

impl AuthError {
    /// A stable machine-readable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "auth.missing",
            AuthError::InvalidToken(_) => "auth.invalid_token",
            AuthError::UnknownKey => "auth.unknown_key",
            AuthError::Revoked => "auth.revoked",
            AuthError::JwksUnavailable(_) => "auth.jwks_unavailable",
            AuthError::Store(_) => "auth.store_unavailable",
            AuthError::RateLimiter(_) => "auth.rate_limiter_unavailable",
        }
    }

    /// 401 for bad or missing credentials, 503 when we could not check them.
    pub fn status(&self) -> http::StatusCode {
        if self.is_client_error() {
            http::StatusCode::UNAUTHORIZED
        } else {
            http::StatusCode::SERVICE_UNAVAILABLE
        }
    }

    /// Whether the caller is at fault (as opposed to an outage on our side).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            AuthError::Missing
                | AuthError::InvalidToken(_)
                | AuthError::UnknownKey
                | AuthError::Revoked
        )
    }

    /// Text that can be sent to the caller: the full message for client errors, a generic
    /// one for our own failures (whose detail may name hosts or SQL).
    pub fn public_message(&self) -> String {
        if self.is_client_error() {
            self.to_string()
        } else {
            "authentication is temporarily unavailable".to_string()
        }
    }
}

/// A credential taken from an `Authorization` header, not yet checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Jwt(&'a str),
    ApiKey(&'a str),
}

impl<'a> Credential<'a> {
    /// Parses `Bearer <credential>` (scheme case-insensitive). Anything starting with
    /// [`api_key::KEY_PREFIX`] is an API key, anything else is treated as a JWT.
    pub fn from_authorization(header: Option<&'a str>) -> Result<Self, AuthError> {
        let header = header.map(str::trim).unwrap_or_default();
        // An empty header, or the scheme with nothing after it, carries no credential.
        if header.is_empty() || header.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        let (scheme, value) = header.split_once(' ').ok_or_else(|| {
            AuthError::InvalidToken("expected `Authorization: Bearer <credential>`".into())
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::InvalidToken(
                "unsupported authorization scheme; use Bearer".into(),
            ));
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(AuthError::Missing);
        }
        if value.starts_with(api_key::KEY_PREFIX) {
            Ok(Credential::ApiKey(value))
        } else {
            Ok(Credential::Jwt(value))
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Throwaway Postgres databases and Redis pools for the async tests of this module.

    use sqlx::{Connection, Executor, PgConnection, PgPool};

    pub const ADMIN_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";
    pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

    /// A database `t_<uuid>` created for one test and dropped when this guard is dropped,
    /// even when the test panics.
    pub struct TestDb {
        pub pool: PgPool,
        name: String,
    }

    impl TestDb {
        pub async fn new() -> TestDb {
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            let mut admin = PgConnection::connect(ADMIN_URL)
                .await
                .expect("test Postgres at 127.0.0.1:5432 must be running");
            admin
                .execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create test database");
            admin.close().await.expect("close admin connection");
            let url = format!("postgres://postgres:postgres@127.0.0.1:5432/{name}");
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(5)
                .connect(&url)
                .await
                .expect("connect to test database");
            TestDb { pool, name }
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let name = self.name.clone();
            // Drop runs inside the test's runtime, which cannot be awaited here; use a thread
            // with its own runtime so the database goes away even when the test panicked.
            // The pool is not touched from there (its connections belong to the blocked test
            // runtime): `WITH (FORCE)` ends them.
            let dropper = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build runtime for database cleanup");
                rt.block_on(async move {
                    if let Ok(mut admin) = PgConnection::connect(ADMIN_URL).await {
                        let _ = admin
                            .execute(
                                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                            )
                            .await;
                        let _ = admin.close().await;
                    }
                });
            });
            let _ = dropper.join();
        }
    }

    pub async fn redis_pool() -> fred::clients::Pool {
        use fred::prelude::*;
        let config = Config::from_url(REDIS_URL).expect("valid redis url");
        let pool = Builder::from_config(config)
            .build_pool(2)
            .expect("build redis pool");
        pool.init()
            .await
            .expect("test Redis at 127.0.0.1:6379 must be running");
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_api_key_and_jwt_are_told_apart() {
        let key = "Bearer vk_abcd1234_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef";
        assert!(matches!(
            Credential::from_authorization(Some(key)),
            Ok(Credential::ApiKey(k)) if k.starts_with("vk_abcd1234_")
        ));
        assert_eq!(
            Credential::from_authorization(Some("bearer a.b.c")),
            Ok(Credential::Jwt("a.b.c"))
        );
    }

    #[test]
    fn missing_and_foreign_schemes_are_refused() {
        assert_eq!(
            Credential::from_authorization(None),
            Err(AuthError::Missing)
        );
        assert_eq!(
            Credential::from_authorization(Some("  ")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            Credential::from_authorization(Some("Bearer   ")),
            Err(AuthError::Missing)
        );
        assert!(matches!(
            Credential::from_authorization(Some("Basic dXNlcjpwdw==")),
            Err(AuthError::InvalidToken(_))
        ));
        assert_eq!(
            Credential::from_authorization(Some("Bearer")),
            Err(AuthError::Missing)
        );
        assert!(matches!(
            Credential::from_authorization(Some("Token abc")),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn server_side_failures_do_not_leak_detail() {
        let err = AuthError::Store("connection refused to 10.0.0.5:5432".into());
        assert_eq!(err.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(!err.public_message().contains("10.0.0.5"));
        let err = AuthError::InvalidToken("token has expired".into());
        assert_eq!(err.status(), http::StatusCode::UNAUTHORIZED);
        assert!(err.public_message().contains("expired"));
    }

    #[test]
    fn jwt_claims_become_a_jwt_principal() {
        let factory_id = uuid::Uuid::new_v4();
        let p = Principal::from(Claims {
            sub: "alice".into(),
            factory_id,
            role: Role::Viewer,
            iss: "iss".into(),
            aud: "aud".into(),
            exp: 10,
            nbf: None,
            iat: None,
        });
        assert_eq!(p.subject, "alice");
        assert_eq!(p.factory_id, factory_id);
        assert_eq!(p.method, AuthMethod::Jwt);
        assert_eq!(p.api_key_id(), None);
    }
}
