//! RS256 JWT verification against a JSON Web Key Set, local or fetched from the IdP.
//!
//! Remote key sets are cached for [`JwksCachePolicy::ttl`]. A token whose `kid` is not in
//! the cache triggers a refetch (keys rotate), but the IdP is asked at most once per
//! [`JwksCachePolicy::min_refetch_interval`] whatever happens, so a flood of tokens with
//! made-up `kid`s cannot be turned against it. Concurrent verifications that need the
//! network share one fetch: the fetch runs under a `tokio::sync::Mutex`, and whoever waited
//! on it re-reads the cache before deciding to fetch again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;
use voketag_domain::Role;

use super::AuthError;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub factory_id: Uuid,
    pub role: Role,
    pub iss: String,
    /// On a verified token: the configured audience, which the token's `aud` contained.
    pub aud: String,
    /// Seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// How a remote key set is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksCachePolicy {
    /// A fetched key set is used for this long before it is fetched again.
    pub ttl: Duration,
    /// At most one fetch per this interval, whether for expiry, an unknown `kid` or a retry
    /// after a failure.
    pub min_refetch_interval: Duration,
    /// Timeout of one fetch.
    pub fetch_timeout: Duration,
}

impl Default for JwksCachePolicy {
    fn default() -> Self {
        JwksCachePolicy {
            ttl: Duration::from_secs(15 * 60),
            min_refetch_interval: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// Verifies RS256 JWTs. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    validation: Validation,
    issuer: String,
    audience: String,
    source: KeySource,
    /// Tokens verified recently, by SHA-256: an RS256 check costs ~150 µs of CPU and a
    /// client sends the same token with every request.
    verified: std::sync::Mutex<HashMap<[u8; 32], (Claims, Instant)>>,
    /// How long a verified token stays trusted: [`VERIFIED_FOR`], or less when the key set
    /// itself is cached for less, so a token never outlives the keys that verified it.
    verified_for: Duration,
}

/// How long a verified token is trusted without checking its signature again. Short, so
/// a key withdrawn from the JWKS stops working within this time.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Most verified tokens remembered; the memory is dropped whole when full.
const VERIFIED_MAX: usize = 10_000;

enum KeySource {
    Local(HashMap<String, DecodingKey>),
    Remote(Box<Remote>),
}

struct Remote {
    url: String,
    http: reqwest::Client,
    policy: JwksCachePolicy,
    cache: RwLock<Option<CachedKeys>>,
    /// Held for the whole of a fetch (single flight); remembers when the last one started.
    fetch: Mutex<FetchState>,
}

struct CachedKeys {
    keys: Arc<HashMap<String, DecodingKey>>,
    fetched_at: Instant,
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    /// Why the last attempt failed, to answer callers while the interval has not elapsed.
    last_error: Option<String>,
    /// Number of HTTP fetches attempted so far (for tests and metrics).
    attempts: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.inner.source {
            KeySource::Local(keys) => format!("local ({} keys)", keys.len()),
            KeySource::Remote(remote) => format!("remote ({})", remote.url),
        };
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("source", &source)
            .finish()
    }
}

impl JwtVerifier {
    /// A verifier that fetches the key set from `jwks_url` (e.g.
    /// `https://idp.example.com/.well-known/jwks.json`) on first use and caches it.
    pub fn remote(
        jwks_url: impl Into<String>,
        issuer: String,
        audience: String,
        http: reqwest::Client,
        cache: JwksCachePolicy,
    ) -> Self {
        let remote = Remote {
            url: jwks_url.into(),
            http,
            policy: cache,
            cache: RwLock::new(None),
            fetch: Mutex::new(FetchState::default()),
        };
        Self::new(issuer, audience, KeySource::Remote(Box::new(remote)))
    }

    /// A verifier for a fixed key set, with no network access (the development IdP).
    pub fn local(jwks: JwkSet, issuer: String, audience: String) -> Self {
        let keys = usable_keys(&jwks);
        Self::new(issuer, audience, KeySource::Local(keys))
    }

    fn new(issuer: String, audience: String, source: KeySource) -> Self {
        let verified_for = match &source {
            KeySource::Remote(remote) => VERIFIED_FOR.min(remote.policy.ttl),
            KeySource::Local(_) => VERIFIED_FOR,
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_audience(&[audience.as_str()]);
        JwtVerifier {
            inner: Arc::new(Inner {
                validation,
                issuer,
                audience,
                source,
                verified: Default::default(),
                verified_for,
            }),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    pub fn audience(&self) -> &str {
        &self.inner.audience
    }

    /// How many times the remote key set has been requested (0 for a local verifier).
    pub async fn jwks_fetch_count(&self) -> u64 {
        match &self.inner.source {
            KeySource::Local(_) => 0,
            KeySource::Remote(remote) => remote.fetch.lock().await.attempts,
        }
    }

    /// Checks signature, algorithm, issuer, audience and validity period, and returns the
    /// claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Ok(verified) = self.inner.verified.lock()
            && let Some((claims, at)) = verified.get(&digest)
            && at.elapsed() < self.inner.verified_for
            && claims.exp > now_secs
        {
            return Ok(claims.clone());
        }
        let claims = self.verify_signature(token).await?;
        if let Ok(mut verified) = self.inner.verified.lock() {
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
            verified.insert(digest, (claims.clone(), Instant::now()));
        }
        Ok(claims)
    }

    async fn verify_signature(&self, token: &str) -> Result<Claims, AuthError> {
        let header = peek_header(token)?;
        let key = self.key_for(&header.kid).await?;
        let data = jsonwebtoken::decode::<RawClaims>(token, &key, &self.inner.validation)
            .map_err(|e| AuthError::InvalidToken(describe(e.kind())))?;
        // Belt and braces: the library was told to accept RS256 only.
        if data.header.alg != Algorithm::RS256 {
            return Err(AuthError::InvalidToken(
                "only RS256 tokens are accepted".into(),
            ));
        }
        data.claims
            .into_claims(&self.inner.issuer, &self.inner.audience)
    }

    async fn key_for(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        match &self.inner.source {
            KeySource::Local(keys) => keys.get(kid).cloned().ok_or_else(|| unknown_kid(kid)),
            KeySource::Remote(remote) => remote.key_for(kid).await,
        }
    }
}

fn unknown_kid(kid: &str) -> AuthError {
    AuthError::InvalidToken(format!("signing key `{}` is not known", sanitize(kid, 64)))
}

impl Remote {
    async fn key_for(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        // Fast path: a fresh cache that knows the kid.
        let stale_hit = {
            let cache = self.cache.read().await;
            match cache.as_ref() {
                Some(c) => match c.keys.get(kid) {
                    Some(key) if c.fetched_at.elapsed() < self.policy.ttl => {
                        return Ok(key.clone());
                    }
                    Some(key) => Some(key.clone()),
                    None => None,
                },
                None => None,
            }
        };

        // The cache is expired but knows the kid: refresh unless someone already is, in
        // which case the stale key is good enough for this request.
        let mut state = match stale_hit {
            Some(stale) => match self.fetch.try_lock() {
                Ok(state) => state,
                Err(_) => return Ok(stale),
            },
            None => self.fetch.lock().await,
        };

        // Whoever held the lock before us may have refreshed the cache already.
        let cached = {
            let cache = self.cache.read().await;
            cache
                .as_ref()
                .map(|c| (c.keys.clone(), c.fetched_at.elapsed() < self.policy.ttl))
        };
        if let Some((keys, true)) = &cached
            && let Some(key) = keys.get(kid)
        {
            return Ok(key.clone());
        }

        let may_fetch = state
            .last_attempt
            .is_none_or(|at| at.elapsed() >= self.policy.min_refetch_interval);
        if may_fetch {
            state.last_attempt = Some(Instant::now());
            state.attempts += 1;
            match self.fetch_keys().await {
                Ok(keys) => {
                    state.last_error = None;
                    let keys = Arc::new(keys);
                    *self.cache.write().await = Some(CachedKeys {
                        keys: keys.clone(),
                        fetched_at: Instant::now(),
                    });
                    return keys.get(kid).cloned().ok_or_else(|| unknown_kid(kid));
                }
                Err(why) => {
                    if cached.is_some() {
                        tracing::warn!(
                            jwks_url = %self.url,
                            error = %why,
                            "JWKS refetch failed; still using the cached key set"
                        );
                    } else {
                        tracing::error!(jwks_url = %self.url, error = %why, "JWKS fetch failed");
                    }
                    state.last_error = Some(why);
                }
            }
        }

        // No fetch allowed (or it failed): answer from whatever we have, fresh or not.
        match cached {
            Some((keys, _)) => keys.get(kid).cloned().ok_or_else(|| unknown_kid(kid)),
            None => Err(AuthError::JwksUnavailable(
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the key set has not been fetched yet".into()),
            )),
        }
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let response = self
            .http
            .get(&self.url)
            .timeout(self.policy.fetch_timeout)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {}: HTTP {status}", self.url));
        }
        let set: JwkSet = response
            .json()
            .await
            .map_err(|e| format!("GET {}: not a JWK set: {e}", self.url))?;
        let keys = usable_keys(&set);
        if keys.is_empty() {
            return Err(format!(
                "GET {}: the key set has no usable RS256 keys",
                self.url
            ));
        }
        Ok(keys)
    }
}

/// The RSA signing keys of a set that have a `kid` and do not declare another algorithm
/// or use; anything else (HMAC, EC, encryption keys) is ignored, so a key can never be
/// used with an algorithm it was not published for.
fn usable_keys(set: &JwkSet) -> HashMap<String, DecodingKey> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.as_deref() else {
            continue;
        };
        let AlgorithmParameters::RSA(rsa) = &jwk.algorithm else {
            continue;
        };
        if jwk
            .common
            .key_algorithm
            .is_some_and(|alg| alg != KeyAlgorithm::RS256)
        {
            continue;
        }
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            continue;
        }
        match DecodingKey::from_rsa_components(&rsa.n, &rsa.e) {
            Ok(key) => {
                keys.insert(kid.to_string(), key);
            }
            Err(e) => tracing::warn!(kid, error = %e, "ignoring malformed RSA JWK"),
        }
    }
    keys
}

/// The header fields looked at before any key is: read by hand rather than through
/// `jsonwebtoken::Header`, which cannot even represent `alg: none`, so every refusal can
/// say why.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<serde_json::Value>,
    kid: Option<serde_json::Value>,
    crit: Option<serde_json::Value>,
}

struct CheckedHeader {
    kid: String,
}

fn peek_header(token: &str) -> Result<CheckedHeader, AuthError> {
    let malformed = |what: &str| AuthError::InvalidToken(format!("malformed token: {what}"));
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let header: RawHeader =
        serde_json::from_slice(&bytes).map_err(|_| malformed("header is not a JSON object"))?;

    match header.alg {
        Some(serde_json::Value::String(alg)) if alg == "RS256" => {}
        Some(serde_json::Value::String(alg)) => {
            return Err(AuthError::InvalidToken(format!(
                "algorithm `{}` is not accepted; tokens must be signed with RS256",
                sanitize(&alg, 16)
            )));
        }
        _ => {
            return Err(AuthError::InvalidToken(
                "token header has no `alg`; tokens must be signed with RS256".into(),
            ));
        }
    }
    if header.crit.is_some() {
        return Err(AuthError::InvalidToken(
            "critical header extensions are not supported".into(),
        ));
    }
    match header.kid {
        Some(serde_json::Value::String(kid)) if !kid.is_empty() => Ok(CheckedHeader { kid }),
        _ => Err(AuthError::InvalidToken(
            "token header has no `kid` (key id)".into(),
        )),
    }
}

/// Keeps attacker-supplied text short and printable before it goes into an error message.
fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '`')
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "signature does not verify".into(),
        ErrorKind::ExpiredSignature => "token has expired".into(),
        ErrorKind::ImmatureSignature => "token is not valid yet (nbf is in the future)".into(),
        ErrorKind::InvalidIssuer => "issuer (iss) is not accepted".into(),
        ErrorKind::InvalidAudience => "audience (aud) is not accepted".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("required claim `{claim}` is missing"),
        ErrorKind::InvalidClaimFormat(claim) => format!("claim `{claim}` has an invalid format"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "only RS256 tokens are accepted".into()
        }
        ErrorKind::Json(_) => "claims do not have the expected shape".into(),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            "malformed token".into()
        }
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            "the signing key cannot verify this token".into()
        }
        _ => "token was refused".into(),
    }
}

/// The claims as they arrive, checked field by field so each refusal says why.
#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    factory_id: Option<String>,
    role: Option<String>,
    iss: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
}

impl RawClaims {
    fn into_claims(self, issuer: &str, audience: &str) -> Result<Claims, AuthError> {
        let invalid = |why: &str| AuthError::InvalidToken(why.to_string());
        let sub = self
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("required claim `sub` is missing"))?;
        let factory_id = self
            .factory_id
            .ok_or_else(|| invalid("required claim `factory_id` is missing"))?;
        let factory_id = Uuid::parse_str(&factory_id)
            .map_err(|_| invalid("claim `factory_id` is not a UUID"))?;
        let role = self
            .role
            .ok_or_else(|| invalid("required claim `role` is missing"))?;
        let role: Role = role.parse().map_err(|_| {
            AuthError::InvalidToken(format!(
                "claim `role` is `{}`; expected admin, factory_user or viewer",
                sanitize(&role, 32)
            ))
        })?;
        // `jsonwebtoken` has already checked these; they are re-read only to be returned.
        let iss = self
            .iss
            .ok_or_else(|| invalid("required claim `iss` is missing"))?;
        if iss != issuer {
            return Err(invalid("issuer (iss) is not accepted"));
        }
        let exp = self
            .exp
            .ok_or_else(|| invalid("required claim `exp` is missing"))?;
        Ok(Claims {
            sub,
            factory_id,
            role,
            iss,
            aud: audience.to_string(),
            exp,
            nbf: self.nbf,
            iat: self.iat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::dev_idp::tests::test_key;
    use crate::auth::dev_idp::{SigningKey, now_secs};
    use jsonwebtoken::{EncodingKey, Header};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ISS: &str = "https://idp.test";
    const AUD: &str = "voketag-api";

    fn claims_json(exp_offset: i64) -> serde_json::Value {
        let now = now_secs() as i64;
        serde_json::json!({
            "sub": "alice",
            "factory_id": "0190f0a0-0000-7000-8000-000000000001",
            "role": "factory_user",
            "iss": ISS,
            "aud": AUD,
            "iat": now,
            "nbf": now,
            "exp": now + exp_offset,
        })
    }

    fn sign(key: &SigningKey, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign test token")
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
    }

    fn refused(result: Result<Claims, AuthError>) -> String {
        match result {
            Err(AuthError::InvalidToken(why)) => why,
            other => panic!("expected InvalidToken, got {other:?}"),
        }
    }

    // --- pure checks on the header -------------------------------------------------

    #[test]
    fn header_needs_rs256_and_kid() {
        let tok = |h: serde_json::Value| format!("{}.e30.sig", b64(&h));
        let why = peek_header(&tok(serde_json::json!({"alg": "none", "kid": "k"})))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(why.contains("`none` is not accepted"), "{why}");
        assert!(peek_header(&tok(serde_json::json!({"alg": "HS256", "kid": "k"}))).is_err());
        assert!(peek_header(&tok(serde_json::json!({"alg": "rs256", "kid": "k"}))).is_err());
        assert!(peek_header(&tok(serde_json::json!({"kid": "k"}))).is_err());
        let why = peek_header(&tok(serde_json::json!({"alg": "RS256"})))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(why.contains("no `kid`"), "{why}");
        assert!(
            peek_header(&tok(
                serde_json::json!({"alg": "RS256", "kid": "k", "crit": ["b64"]})
            ))
            .is_err()
        );
        let ok = peek_header(&tok(serde_json::json!({"alg": "RS256", "kid": "k1"})));
        assert_eq!(ok.map(|h| h.kid).ok().as_deref(), Some("k1"));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for token in ["", "abc", "a.b", "a.b.c.d", "!!!.e30.sig", "e30.e30"] {
            assert!(
                matches!(peek_header(token), Err(AuthError::InvalidToken(_))),
                "{token:?}"
            );
        }
    }

    #[test]
    fn attacker_text_is_sanitised() {
        assert_eq!(sanitize("ab`c\nd", 10), "abcd");
        assert_eq!(sanitize("abcdefghijkl", 4), "abcd…");
    }

    // --- local verifier ------------------------------------------------------------

    #[tokio::test]
    async fn local_verifier_checks_claims() {
        let key = test_key();
        let verifier = JwtVerifier::local(key.jwks(), ISS.into(), AUD.into());

        let claims = verifier
            .verify(&sign(key, &claims_json(300)))
            .await
            .expect("valid token verifies");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.role, Role::FactoryUser);
        assert_eq!(
            claims.factory_id.to_string(),
            "0190f0a0-0000-7000-8000-000000000001"
        );
        assert_eq!(claims.aud, AUD);

        // Audience as an array containing ours is accepted.
        let mut c = claims_json(300);
        c["aud"] = serde_json::json!(["other", AUD]);
        assert!(verifier.verify(&sign(key, &c)).await.is_ok());

        // Expired beyond the leeway.
        let why = refused(verifier.verify(&sign(key, &claims_json(-120))).await);
        assert!(why.contains("expired"), "{why}");
        // Expired but within the 30 s leeway.
        assert!(verifier.verify(&sign(key, &claims_json(-10))).await.is_ok());

        let mut c = claims_json(300);
        c["nbf"] = serde_json::json!(now_secs() + 600);
        let why = refused(verifier.verify(&sign(key, &c)).await);
        assert!(why.contains("not valid yet"), "{why}");

        let mut c = claims_json(300);
        c["iss"] = serde_json::json!("https://evil.test");
        let why = refused(verifier.verify(&sign(key, &c)).await);
        assert!(why.contains("issuer"), "{why}");

        let mut c = claims_json(300);
        c["aud"] = serde_json::json!("someone-else");
        let why = refused(verifier.verify(&sign(key, &c)).await);
        assert!(why.contains("audience"), "{why}");

        for claim in ["exp", "iss", "aud", "sub", "role", "factory_id"] {
            let mut c = claims_json(300);
            c.as_object_mut().map(|o| o.remove(claim));
            let why = refused(verifier.verify(&sign(key, &c)).await);
            assert!(why.contains(claim), "{claim}: {why}");
        }

        let mut c = claims_json(300);
        c["role"] = serde_json::json!("superuser");
        let why = refused(verifier.verify(&sign(key, &c)).await);
        assert!(why.contains("superuser"), "{why}");

        let mut c = claims_json(300);
        c["factory_id"] = serde_json::json!("factory-1");
        let why = refused(verifier.verify(&sign(key, &c)).await);
        assert!(why.contains("UUID"), "{why}");

        // A tampered payload no longer matches the signature.
        let token = sign(key, &claims_json(300));
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut evil = claims_json(300);
        evil["role"] = serde_json::json!("admin");
        let evil = b64(&evil);
        parts[1] = &evil;
        let why = refused(verifier.verify(&parts.join(".")).await);
        assert!(why.contains("signature"), "{why}");
    }

    // --- remote verifier against a real HTTP server -------------------------------

    struct JwksServer {
        url: String,
        hits: Arc<AtomicUsize>,
        jwks: Arc<std::sync::RwLock<JwkSet>>,
        up: Arc<std::sync::atomic::AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn jwks_server(initial: JwkSet) -> JwksServer {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        use axum::routing::get;
        let hits = Arc::new(AtomicUsize::new(0));
        let jwks = Arc::new(std::sync::RwLock::new(initial));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (h, j, u) = (hits.clone(), jwks.clone(), up.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let (h, j, u) = (h.clone(), j.clone(), u.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    if !u.load(Ordering::SeqCst) {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    let set = j.read().expect("jwks lock").clone();
                    axum::Json(set).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test JWKS server");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            hits,
            jwks,
            up,
            task,
        }
    }

    fn remote(server: &JwksServer, policy: JwksCachePolicy) -> JwtVerifier {
        JwtVerifier::remote(
            server.url.clone(),
            ISS.into(),
            AUD.into(),
            reqwest::Client::new(),
            policy,
        )
    }

    fn policy(ttl_ms: u64, min_refetch_ms: u64) -> JwksCachePolicy {
        JwksCachePolicy {
            ttl: Duration::from_millis(ttl_ms),
            min_refetch_interval: Duration::from_millis(min_refetch_ms),
            fetch_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn remote_jwks_is_fetched_once_for_many_verifications() {
        let key = test_key();
        let server = jwks_server(key.jwks()).await;
        let verifier = remote(&server, JwksCachePolicy::default());
        let token = sign(key, &claims_json(300));

        // Concurrent first use: a single fetch (single flight).
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (v, t) = (verifier.clone(), token.clone());
            tasks.push(tokio::spawn(async move { v.verify(&t).await }));
        }
        for task in tasks {
            assert!(task.await.expect("join").is_ok());
        }
        for _ in 0..30 {
            assert!(verifier.verify(&token).await.is_ok());
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        assert_eq!(verifier.jwks_fetch_count().await, 1);
    }

    #[tokio::test]
    async fn unknown_kid_refetches_but_at_most_once_per_interval() {
        let old = test_key();
        let rotated = SigningKey::generate().expect("generate key");
        let third = SigningKey::generate().expect("generate key");
        let server = jwks_server(old.jwks()).await;
        let verifier = remote(&server, policy(600_000, 1_000));

        assert!(verifier.verify(&sign(old, &claims_json(300))).await.is_ok());
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);

        // The IdP rotates. Just after the first fetch, a token with the new kid is refused
        // without asking the IdP: the refetch interval has not elapsed.
        *server.jwks.write().expect("jwks lock") = JwkSet {
            keys: [rotated.jwks().keys, third.jwks().keys].concat(),
        };
        let why = refused(verifier.verify(&sign(&rotated, &claims_json(300))).await);
        assert!(why.contains("not known"), "{why}");
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);

        // Once it has, the unknown kid triggers exactly one refetch and then verifies.
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        assert!(
            verifier
                .verify(&sign(&rotated, &claims_json(300)))
                .await
                .is_ok()
        );
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
        // A key that came with the same refetch needs no further fetch.
        assert!(
            verifier
                .verify(&sign(&third, &claims_json(300)))
                .await
                .is_ok()
        );
        // The rotated-out key is gone from the refreshed cache.
        let why = refused(verifier.verify(&sign(old, &claims_json(300))).await);
        assert!(why.contains("not known"), "{why}");
        // A flood of made-up kids inside the interval causes no fetch at all.
        for i in 0..50 {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(format!("made-up-{i}"));
            let token =
                jsonwebtoken::encode(&header, &claims_json(300), &rotated.encoding).expect("sign");
            assert!(verifier.verify(&token).await.is_err());
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_unknown_kids_do_not_stampede() {
        let key = test_key();
        let server = jwks_server(key.jwks()).await;
        let verifier = remote(&server, policy(600_000, 0));
        let mut tasks = Vec::new();
        // With no refetch interval at all, 20 concurrent requests for the same (now known)
        // key still cause only one fetch: waiters re-read the cache the leader filled.
        for _ in 0..20 {
            let v = verifier.clone();
            let t = sign(key, &claims_json(300));
            tasks.push(tokio::spawn(async move { v.verify(&t).await }));
        }
        for task in tasks {
            assert!(task.await.expect("join").is_ok());
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expired_cache_is_refetched_and_kept_when_the_idp_is_down() {
        let key = test_key();
        let server = jwks_server(key.jwks()).await;
        let verifier = remote(&server, policy(300, 300));
        let token = sign(key, &claims_json(300));

        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);

        // After the TTL the set is fetched again.
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);

        // The IdP fails: the expired cached set keeps being served.
        server.up.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(verifier.verify(&token).await.is_ok());
        assert_eq!(server.hits.load(Ordering::SeqCst), 3);
        // ...and the failing IdP is not hammered: no new attempt within the interval.
        for _ in 0..10 {
            assert!(verifier.verify(&token).await.is_ok());
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn unreachable_idp_without_cache_is_unavailable() {
        let key = test_key();
        let server = jwks_server(key.jwks()).await;
        server.up.store(false, Ordering::SeqCst);
        let verifier = remote(&server, policy(600_000, 60_000));
        let token = sign(key, &claims_json(300));
        assert!(matches!(
            verifier.verify(&token).await,
            Err(AuthError::JwksUnavailable(why)) if why.contains("500")
        ));
        // The failure is remembered for the interval instead of retried per request.
        assert!(matches!(
            verifier.verify(&token).await,
            Err(AuthError::JwksUnavailable(_))
        ));
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn algorithm_attacks_are_refused() {
        let key = test_key();
        let server = jwks_server(key.jwks()).await;
        let verifier = remote(&server, JwksCachePolicy::default());
        let claims = claims_json(300);
        assert!(verifier.verify(&sign(key, &claims)).await.is_ok());

        // alg: none, no signature.
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": key.kid})),
            b64(&claims)
        );
        let why = refused(verifier.verify(&none).await);
        assert!(why.contains("`none` is not accepted"), "{why}");

        // HS256 with the public key's PEM bytes as the HMAC secret (key confusion).
        let public_pem = key.public_pem();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        let hs = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(public_pem.as_bytes()),
        )
        .expect("sign HS256");
        let why = refused(verifier.verify(&hs).await);
        assert!(why.contains("`HS256` is not accepted"), "{why}");
        // The library check alone would refuse it too, independently of our header check.
        let lib = jsonwebtoken::decode::<RawClaims>(
            &hs,
            &DecodingKey::from_rsa_components(&key.n_b64(), &key.e_b64()).expect("key"),
            &verifier.inner.validation,
        );
        assert!(lib.is_err());

        // RS384 with the right key.
        let mut header = Header::new(Algorithm::RS384);
        header.kid = Some(key.kid.clone());
        let rs384 = jsonwebtoken::encode(&header, &claims, &key.encoding).expect("sign RS384");
        let why = refused(verifier.verify(&rs384).await);
        assert!(why.contains("`RS384` is not accepted"), "{why}");

        // ES256 header.
        let es = format!(
            "{}.{}.c2ln",
            b64(&serde_json::json!({"alg": "ES256", "kid": key.kid})),
            b64(&claims)
        );
        let why = refused(verifier.verify(&es).await);
        assert!(why.contains("`ES256` is not accepted"), "{why}");

        // Signed by some other RSA key under our kid.
        let other = SigningKey::generate().expect("generate key");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        let forged = jsonwebtoken::encode(&header, &claims, &other.encoding).expect("sign");
        let why = refused(verifier.verify(&forged).await);
        assert!(why.contains("signature"), "{why}");

        // None of these made the verifier refetch.
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn remote_claim_failures_are_refused() {
        let key = test_key();
        let server = jwks_server(key.jwks()).await;
        let verifier = remote(&server, JwksCachePolicy::default());

        let why = refused(verifier.verify(&sign(key, &claims_json(-3600))).await);
        assert!(why.contains("expired"), "{why}");

        let mut c = claims_json(300);
        c["nbf"] = serde_json::json!(now_secs() + 3600);
        let why = refused(verifier.verify(&sign(key, &c)).await);
        assert!(why.contains("nbf"), "{why}");

        let mut c = claims_json(300);
        c["iss"] = serde_json::json!(format!("{ISS}/"));
        let why = refused(verifier.verify(&sign(key, &c)).await);
        assert!(why.contains("issuer"), "{why}");

        let mut c = claims_json(300);
        c["aud"] = serde_json::json!("voketag-api-staging");
        let why = refused(verifier.verify(&sign(key, &c)).await);
        assert!(why.contains("audience"), "{why}");

        let mut c = claims_json(300);
        c.as_object_mut().map(|o| o.remove("exp"));
        let why = refused(verifier.verify(&sign(key, &c)).await);
        assert!(why.contains("exp"), "{why}");

        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    }
}
