//! The development identity provider, used by `voketag up` and `voketag token mint` when
//! no real IdP is configured: an RSA-2048 key kept in Postgres (`dev_signing_keys`) that
//! signs RS256 tokens, and the matching key set for [`JwtVerifier::local`].
//!
//! Not for production: the private key sits in the database in clear.
//!
//! Creation is race-free: every process that finds the table empty generates a candidate
//! key, then takes a transaction-scoped advisory lock, looks again and inserts its key only
//! if the table is still empty. The first one wins, the others throw their candidate away,
//! and all of them end up signing with the same key. (A thumbprint `kid` with `ON CONFLICT`
//! alone would not do: two racing processes generate different keys, so their kids never
//! conflict.) The `kid` is nevertheless the key's RFC 7638 SHA-256 thumbprint, so it is
//! stable and identifies the key by content.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
    RSAKeyParameters, RSAKeyType,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;
use voketag_domain::Role;

use super::jwt::{Claims, JwtVerifier};

/// Size of generated keys.
pub const KEY_BITS: usize = 2048;

/// Serialises key creation across processes (`pg_advisory_xact_lock`). The value is
/// "voketag" in ASCII followed by 0x01, arbitrary but fixed.
const CREATE_KEY_LOCK: i64 = 0x766f_6b65_7461_6701;

#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    #[error("dev signing keys: database error: {0}")]
    Store(#[from] sqlx::Error),
    #[error("dev signing key `{kid}` is unusable: {why}")]
    BadKey { kid: String, why: String },
    #[error("dev signing key generation failed: {0}")]
    Generate(String),
    #[error("signing the token failed: {0}")]
    Sign(String),
}

/// An RSA key pair ready to sign, with its thumbprint kid.
#[derive(Clone)]
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    pub(crate) encoding: EncodingKey,
    public: RsaPublicKey,
}

impl SigningKey {
    /// Generates a fresh key and its PKCS#8 PEM (CPU-bound: run off the async executor).
    pub(crate) fn generate_with_pem() -> Result<(SigningKey, String), DevIdpError> {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, KEY_BITS)
            .map_err(|e| DevIdpError::Generate(e.to_string()))?;
        let pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| DevIdpError::Generate(e.to_string()))?;
        let key = SigningKey::from_private(&private, None)?;
        Ok((key, pem.to_string()))
    }

    #[cfg(test)]
    pub(crate) fn generate() -> Result<SigningKey, DevIdpError> {
        SigningKey::generate_with_pem().map(|(key, _)| key)
    }

    /// Parses a stored PKCS#8 PEM; `kid` is the stored id, checked against the key.
    fn from_pkcs8_pem(kid: &str, pem: &str) -> Result<SigningKey, DevIdpError> {
        let bad = |why: String| DevIdpError::BadKey {
            kid: kid.to_string(),
            why,
        };
        let private = RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| bad(e.to_string()))?;
        SigningKey::from_private(&private, Some(kid))
    }

    fn from_private(private: &RsaPrivateKey, kid: Option<&str>) -> Result<SigningKey, DevIdpError> {
        let public = private.to_public_key();
        let thumbprint = rsa_thumbprint(&public);
        let kid = match kid {
            Some(stored) if stored != thumbprint => {
                return Err(DevIdpError::BadKey {
                    kid: stored.to_string(),
                    why: format!("kid does not match the key's thumbprint `{thumbprint}`"),
                });
            }
            _ => thumbprint,
        };
        let der = private.to_pkcs1_der().map_err(|e| DevIdpError::BadKey {
            kid: kid.clone(),
            why: e.to_string(),
        })?;
        Ok(SigningKey {
            kid,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            public,
        })
    }

    pub(crate) fn n_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public.n().to_bytes_be())
    }

    pub(crate) fn e_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public.e().to_bytes_be())
    }

    pub(crate) fn jwk(&self) -> Jwk {
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::RS256),
                key_id: Some(self.kid.clone()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::RSA(RSAKeyParameters {
                key_type: RSAKeyType::RSA,
                n: self.n_b64(),
                e: self.e_b64(),
            }),
        }
    }

    #[cfg(test)]
    pub(crate) fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk()],
        }
    }

    #[cfg(test)]
    pub(crate) fn public_pem(&self) -> String {
        use rsa::pkcs8::EncodePublicKey;
        self.public
            .to_public_key_pem(LineEnding::LF)
            .expect("an RSA public key always encodes as SPKI PEM")
    }
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) of an RSA public key.
fn rsa_thumbprint(public: &RsaPublicKey) -> String {
    let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
    let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
    // Members in lexicographic order, no whitespace, as the RFC requires.
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The development IdP: signs with the newest key in `dev_signing_keys` and publishes
/// every key in the table.
#[derive(Clone)]
pub struct DevIdp {
    issuer: String,
    audience: String,
    signing: SigningKey,
    jwks: JwkSet,
}

impl std::fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kid", &self.signing.kid)
            .field("keys", &self.jwks.keys.len())
            .finish_non_exhaustive()
    }
}

type KeyRow = (String, String);

async fn select_keys<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<Vec<KeyRow>, sqlx::Error> {
    sqlx::query_as::<_, KeyRow>(
        "SELECT kid, private_key_pem FROM dev_signing_keys ORDER BY created_at DESC, kid DESC",
    )
    .fetch_all(executor)
    .await
}

impl DevIdp {
    /// Loads the signing keys from `dev_signing_keys`, creating one if the table is empty.
    pub async fn load_or_create(
        pool: &PgPool,
        issuer: String,
        audience: String,
    ) -> Result<DevIdp, DevIdpError> {
        let mut rows = select_keys(pool).await?;
        if rows.is_empty() {
            let (candidate, pem) = tokio::task::spawn_blocking(SigningKey::generate_with_pem)
                .await
                .map_err(|e| DevIdpError::Generate(e.to_string()))??;
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(CREATE_KEY_LOCK)
                .execute(&mut *tx)
                .await?;
            let existing: Option<(String,)> =
                sqlx::query_as("SELECT kid FROM dev_signing_keys LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await?;
            if existing.is_none() {
                sqlx::query(
                    "INSERT INTO dev_signing_keys (kid, private_key_pem) VALUES ($1, $2) \
                     ON CONFLICT (kid) DO NOTHING",
                )
                .bind(&candidate.kid)
                .bind(&pem)
                .execute(&mut *tx)
                .await?;
                tracing::info!(kid = %candidate.kid, "created a development signing key");
            }
            tx.commit().await?;
            rows = select_keys(pool).await?;
        }

        let mut keys = Vec::with_capacity(rows.len());
        for (kid, pem) in &rows {
            keys.push(SigningKey::from_pkcs8_pem(kid, pem)?);
        }
        let jwks = JwkSet {
            keys: keys.iter().map(SigningKey::jwk).collect(),
        };
        let signing = keys.into_iter().next().ok_or_else(|| {
            DevIdpError::Generate("dev_signing_keys is still empty after inserting a key".into())
        })?;
        Ok(DevIdp {
            issuer,
            audience,
            signing,
            jwks,
        })
    }

    /// The `kid` tokens are signed with.
    pub fn kid(&self) -> &str {
        &self.signing.kid
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Mints an RS256 token valid from now for `ttl`.
    pub fn mint(
        &self,
        sub: &str,
        factory_id: Uuid,
        role: Role,
        ttl: Duration,
    ) -> Result<String, DevIdpError> {
        let now = now_secs();
        let claims = Claims {
            sub: sub.to_string(),
            factory_id,
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now.saturating_add(ttl.as_secs().max(1)),
            nbf: Some(now),
            iat: Some(now),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".into());
        header.kid = Some(self.signing.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.signing.encoding)
            .map_err(|e| DevIdpError::Sign(e.to_string()))
    }

    /// The public keys, as served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> JwkSet {
        self.jwks.clone()
    }

    /// A verifier for this IdP's tokens, with no network access.
    pub fn verifier(&self) -> JwtVerifier {
        JwtVerifier::local(self.jwks(), self.issuer.clone(), self.audience.clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::AuthError;
    use crate::auth::test_support::TestDb;
    use std::sync::OnceLock;

    const CREATE_TABLE: &str = "CREATE TABLE dev_signing_keys (kid text PRIMARY KEY, \
        private_key_pem text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())";

    /// One key generated per test binary: RSA generation is slow.
    pub(crate) fn test_key() -> &'static SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate().expect("generate test key"))
    }

    fn test_idp() -> DevIdp {
        let key = test_key().clone();
        DevIdp {
            issuer: "voketag-dev".into(),
            audience: "voketag".into(),
            jwks: key.jwks(),
            signing: key,
        }
    }

    async fn db_with_table() -> TestDb {
        let db = TestDb::new().await;
        sqlx::query(CREATE_TABLE)
            .execute(&db.pool)
            .await
            .expect("create dev_signing_keys");
        db
    }

    #[test]
    fn jwks_is_a_public_rs256_signing_jwk() {
        let key = test_key();
        let json = serde_json::to_value(key.jwks()).expect("serialise JWKS");
        let jwk = &json["keys"][0];
        assert_eq!(jwk["kty"], "RSA");
        assert_eq!(jwk["alg"], "RS256");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], key.kid.as_str());
        assert_eq!(jwk["e"], "AQAB");
        let n = URL_SAFE_NO_PAD
            .decode(jwk["n"].as_str().expect("n is a string"))
            .expect("n is base64url without padding");
        assert_eq!(n.len(), KEY_BITS / 8);
        // Nothing private is published.
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(jwk.get(private).is_none(), "{private} leaked");
        }
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        let key = test_key();
        let expected = key
            .jwk()
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256);
        assert_eq!(key.kid, expected);
    }

    #[test]
    fn stored_pem_round_trips_and_kid_is_checked() {
        let (key, pem) = SigningKey::generate_with_pem().expect("generate");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let loaded = SigningKey::from_pkcs8_pem(&key.kid, &pem).expect("reload");
        assert_eq!(loaded.kid, key.kid);
        assert_eq!(loaded.n_b64(), key.n_b64());
        assert!(matches!(
            SigningKey::from_pkcs8_pem("not-the-thumbprint", &pem),
            Err(DevIdpError::BadKey { .. })
        ));
        assert!(matches!(
            SigningKey::from_pkcs8_pem(&key.kid, "garbage"),
            Err(DevIdpError::BadKey { .. })
        ));
    }

    #[tokio::test]
    async fn minted_tokens_verify_with_the_local_verifier() {
        let idp = test_idp();
        let factory_id = Uuid::new_v4();
        let token = idp
            .mint(
                "dev-user",
                factory_id,
                Role::Admin,
                Duration::from_secs(600),
            )
            .expect("mint");
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some(idp.kid()));

        let claims = idp.verifier().verify(&token).await.expect("verifies");
        assert_eq!(claims.sub, "dev-user");
        assert_eq!(claims.factory_id, factory_id);
        assert_eq!(claims.role, Role::Admin);
        assert_eq!(claims.iss, "voketag-dev");
        assert_eq!(claims.aud, "voketag");
        let now = now_secs();
        assert!(claims.exp >= now + 590 && claims.exp <= now + 600);
        assert!(claims.nbf.is_some_and(|nbf| nbf <= now));
        assert!(claims.iat.is_some());

        // A verifier for another audience refuses it.
        let other = JwtVerifier::local(idp.jwks(), "voketag-dev".into(), "other".into());
        assert!(matches!(
            other.verify(&token).await,
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[tokio::test]
    async fn load_or_create_persists_one_key() {
        let db = db_with_table().await;
        let a = DevIdp::load_or_create(&db.pool, "iss".into(), "aud".into())
            .await
            .expect("create");
        let b = DevIdp::load_or_create(&db.pool, "iss".into(), "aud".into())
            .await
            .expect("load");
        assert_eq!(a.kid(), b.kid());
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM dev_signing_keys")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(count, 1);
        // A token minted by one process verifies in the other.
        let token = a
            .mint("u", Uuid::new_v4(), Role::Viewer, Duration::from_secs(60))
            .expect("mint");
        let claims = b.verifier().verify(&token).await.expect("verifies");
        assert_eq!(claims.role, Role::Viewer);
    }

    #[tokio::test]
    async fn racing_processes_agree_on_one_key() {
        let db = db_with_table().await;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let pool = db.pool.clone();
            tasks.push(tokio::spawn(async move {
                DevIdp::load_or_create(&pool, "iss".into(), "aud".into()).await
            }));
        }
        let mut kids = Vec::new();
        for task in tasks {
            let idp = task.await.expect("join").expect("load_or_create");
            kids.push(idp.kid().to_string());
        }
        kids.dedup();
        assert_eq!(kids.len(), 1, "all racers sign with the same key: {kids:?}");
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM dev_signing_keys")
            .fetch_one(&db.pool)
            .await
            .expect("count");
        assert_eq!(count, 1);
    }

    #[tokio::test]
    async fn newest_key_signs_and_all_keys_are_published() {
        let db = db_with_table().await;
        let first = DevIdp::load_or_create(&db.pool, "iss".into(), "aud".into())
            .await
            .expect("create");
        let old_token = first
            .mint("u", Uuid::new_v4(), Role::Viewer, Duration::from_secs(60))
            .expect("mint");
        // Someone rotates: a newer key is added.
        let (rotated, pem) = SigningKey::generate_with_pem().expect("generate");
        sqlx::query(
            "INSERT INTO dev_signing_keys (kid, private_key_pem, created_at) \
             VALUES ($1, $2, now() + interval '1 second')",
        )
        .bind(&rotated.kid)
        .bind(&pem)
        .execute(&db.pool)
        .await
        .expect("insert rotated key");

        let idp = DevIdp::load_or_create(&db.pool, "iss".into(), "aud".into())
            .await
            .expect("load");
        assert_eq!(idp.kid(), rotated.kid);
        assert_eq!(idp.jwks().keys.len(), 2);
        assert!(idp.verifier().verify(&old_token).await.is_ok());
    }

    #[tokio::test]
    async fn corrupt_stored_key_is_reported() {
        let db = db_with_table().await;
        sqlx::query("INSERT INTO dev_signing_keys (kid, private_key_pem) VALUES ('k', 'nope')")
            .execute(&db.pool)
            .await
            .expect("insert");
        let err = DevIdp::load_or_create(&db.pool, "iss".into(), "aud".into()).await;
        assert!(matches!(err, Err(DevIdpError::BadKey { kid, .. }) if kid == "k"));
    }
}
