//! API keys for machines: `vk_<prefix>_<secret>`.
//!
//! The prefix (8 lowercase alphanumerics) is stored in clear and finds the row; the whole
//! key is stored only as its SHA-256. The secret is 32 base62 characters from the OS RNG
//! (32 · log2 62 ≈ 190.5 bits), so a fast unsalted hash is enough: there is nothing to
//! brute-force.

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;
use voketag_domain::Role;

use super::{AuthError, AuthMethod, Principal};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "vk_";
pub const PREFIX_LEN: usize = 8;
pub const SECRET_LEN: usize = 32;
/// Length of a whole key: `vk_` + prefix + `_` + secret.
pub const KEY_LEN: usize = KEY_PREFIX.len() + PREFIX_LEN + 1 + SECRET_LEN;

const PREFIX_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SECRET_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated key. `full_key` is shown to the user once and never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub full_key: String,
    pub prefix: String,
    /// Lowercase hex of SHA-256 of `full_key`: the `api_keys.secret_sha256` column.
    pub secret_sha256: String,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("full_key", &"[redacted]")
            .field("prefix", &self.prefix)
            .field("secret_sha256", &self.secret_sha256)
            .finish()
    }
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = OsRng;
    (0..len)
        // `gen_range` is unbiased (rejection sampling), unlike `byte % len`.
        .map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())]))
        .collect()
}

/// Generates a new key from the OS random number generator.
pub fn generate() -> NewApiKey {
    let prefix = random_string(PREFIX_ALPHABET, PREFIX_LEN);
    let secret = random_string(SECRET_ALPHABET, SECRET_LEN);
    let full_key = format!("{KEY_PREFIX}{prefix}_{secret}");
    let secret_sha256 = hash_key(&full_key);
    NewApiKey {
        full_key,
        prefix,
        secret_sha256,
    }
}

/// Lowercase hex SHA-256 of a whole key, as stored in `api_keys.secret_sha256`.
pub fn hash_key(full_key: &str) -> String {
    hex::encode(Sha256::digest(full_key.as_bytes()))
}

/// Splits a presented key into its prefix, if it has exactly the expected shape.
pub fn parse_prefix(presented: &str) -> Option<&str> {
    if presented.len() != KEY_LEN || !presented.is_ascii() {
        return None;
    }
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (prefix, secret) = rest.split_at(PREFIX_LEN);
    let secret = secret.strip_prefix('_')?;
    let prefix_ok = prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    (prefix_ok && secret_ok).then_some(prefix)
}

type KeyRow = (Uuid, Uuid, String, String, Option<DateTime<Utc>>);

/// Authenticates a presented API key against the `api_keys` table.
///
/// Malformed, unknown and wrong keys all answer [`AuthError::UnknownKey`]; a revoked key
/// answers [`AuthError::Revoked`] only to someone who holds its full secret.
pub async fn authenticate(pool: &PgPool, presented: &str) -> Result<Principal, AuthError> {
    let prefix = parse_prefix(presented).ok_or(AuthError::UnknownKey)?;
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT key_id, factory_id, role, secret_sha256, revoked_at \
         FROM api_keys WHERE prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await
    .map_err(|e| AuthError::Store(format!("looking up API key: {e}")))?;

    let presented_digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let Some((key_id, factory_id, role, stored_hex, revoked_at)) = row else {
        return Err(AuthError::UnknownKey);
    };
    let stored = hex::decode(stored_hex.trim())
        .map_err(|_| AuthError::Store(format!("api_keys.secret_sha256 of {key_id} is not hex")))?;
    if stored.len() != presented_digest.len() {
        return Err(AuthError::Store(format!(
            "api_keys.secret_sha256 of {key_id} is not a SHA-256 digest"
        )));
    }
    if !bool::from(presented_digest[..].ct_eq(stored.as_slice())) {
        return Err(AuthError::UnknownKey);
    }
    if revoked_at.is_some() {
        return Err(AuthError::Revoked);
    }
    let role: Role = role
        .parse()
        .map_err(|e| AuthError::Store(format!("api_keys.role of {key_id}: {e}")))?;
    Ok(Principal {
        subject: format!("api_key:{key_id}"),
        factory_id,
        role,
        method: AuthMethod::ApiKey { key_id },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::test_support::TestDb;
    use std::collections::HashSet;

    const CREATE_TABLE: &str = "CREATE TABLE api_keys (key_id uuid PRIMARY KEY, \
        prefix text NOT NULL UNIQUE, factory_id uuid NOT NULL, name text NOT NULL, \
        role text NOT NULL, secret_sha256 text NOT NULL, \
        created_at timestamptz NOT NULL DEFAULT now(), revoked_at timestamptz)";

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let key = generate();
        assert_eq!(key.full_key.len(), KEY_LEN);
        assert_eq!(KEY_LEN, 44);
        assert!(key.full_key.starts_with(&format!("vk_{}_", key.prefix)));
        assert_eq!(key.prefix.len(), 8);
        assert!(
            key.prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        let secret = &key.full_key[KEY_LEN - SECRET_LEN..];
        assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(parse_prefix(&key.full_key), Some(key.prefix.as_str()));
        assert_eq!(key.secret_sha256, hash_key(&key.full_key));
        assert_eq!(key.secret_sha256.len(), 64);
        assert!(!format!("{key:?}").contains(secret));
    }

    #[test]
    fn secret_entropy_is_at_least_190_bits() {
        let bits = SECRET_LEN as f64 * (SECRET_ALPHABET.len() as f64).log2();
        assert_eq!(SECRET_ALPHABET.len(), 62);
        assert!(bits >= 190.0, "{bits}");
    }

    #[test]
    fn generated_keys_are_distinct_and_use_the_whole_alphabet() {
        let keys: Vec<NewApiKey> = (0..500).map(|_| generate()).collect();
        let distinct: HashSet<&str> = keys.iter().map(|k| k.full_key.as_str()).collect();
        assert_eq!(distinct.len(), keys.len());
        let used: HashSet<u8> = keys
            .iter()
            .flat_map(|k| k.full_key[KEY_LEN - SECRET_LEN..].bytes())
            .collect();
        // 16,000 draws from 62 symbols: every symbol shows up.
        assert_eq!(used.len(), 62);
    }

    #[test]
    fn hash_is_sha256_hex_of_the_whole_key() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let good = "vk_abcd1234_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef";
        assert_eq!(parse_prefix(good), Some("abcd1234"));
        for bad in [
            "",
            "vk_",
            "vk_abcd1234_ABCDEFGHIJKLMNOPQRSTUVWXYZabcde", // short
            "vk_abcd1234_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg", // long
            "vk_ABCD1234_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef", // upper-case prefix
            "vk_abcd1234-ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef", // wrong separator
            "xk_abcd1234_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef", // wrong scheme
            "vk_abcd1234_ABCDEFGHIJKLMNOPQRSTUVWXYZabcd-f", // non-alphanumeric
            "vk_abcd123é_ABCDEFGHIJKLMNOPQRSTUVWXYZabcde", // non-ASCII
        ] {
            assert_eq!(parse_prefix(bad), None, "{bad:?}");
        }
    }

    async fn insert(db: &TestDb, key: &NewApiKey, factory_id: Uuid, role: &str) -> Uuid {
        let key_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO api_keys (key_id, prefix, factory_id, name, role, secret_sha256) \
             VALUES ($1, $2, $3, 'ci', $4, $5)",
        )
        .bind(key_id)
        .bind(&key.prefix)
        .bind(factory_id)
        .bind(role)
        .bind(&key.secret_sha256)
        .execute(&db.pool)
        .await
        .expect("insert api key");
        key_id
    }

    #[tokio::test]
    async fn authenticate_against_postgres() {
        let db = TestDb::new().await;
        sqlx::query(CREATE_TABLE)
            .execute(&db.pool)
            .await
            .expect("create api_keys");
        let factory_id = Uuid::new_v4();
        let key = generate();
        let key_id = insert(&db, &key, factory_id, "factory_user").await;

        let principal = authenticate(&db.pool, &key.full_key)
            .await
            .expect("valid key");
        assert_eq!(principal.subject, format!("api_key:{key_id}"));
        assert_eq!(principal.factory_id, factory_id);
        assert_eq!(principal.role, Role::FactoryUser);
        assert_eq!(principal.method, AuthMethod::ApiKey { key_id });

        // Right prefix, wrong secret.
        let mut wrong = key.full_key.clone();
        let last = if wrong.ends_with('A') { "B" } else { "A" };
        wrong.replace_range(KEY_LEN - 1.., last);
        assert_eq!(
            authenticate(&db.pool, &wrong).await,
            Err(AuthError::UnknownKey)
        );
        // Unknown prefix and malformed keys.
        let other = generate();
        assert_eq!(
            authenticate(&db.pool, &other.full_key).await,
            Err(AuthError::UnknownKey)
        );
        assert_eq!(
            authenticate(&db.pool, "vk_nope").await,
            Err(AuthError::UnknownKey)
        );

        // Revoked: refused as revoked, but only for the holder of the real secret.
        sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1")
            .bind(key_id)
            .execute(&db.pool)
            .await
            .expect("revoke");
        assert_eq!(
            authenticate(&db.pool, &key.full_key).await,
            Err(AuthError::Revoked)
        );
        assert_eq!(
            authenticate(&db.pool, &wrong).await,
            Err(AuthError::UnknownKey)
        );

        // A row with an unknown role is our fault, not the caller's.
        let odd = generate();
        insert(&db, &odd, factory_id, "superuser").await;
        assert!(matches!(
            authenticate(&db.pool, &odd.full_key).await,
            Err(AuthError::Store(_))
        ));
    }

    #[tokio::test]
    async fn store_outage_is_a_store_error() {
        let db = TestDb::new().await;
        // No api_keys table: the query fails.
        let key = generate();
        assert!(matches!(
            authenticate(&db.pool, &key.full_key).await,
            Err(AuthError::Store(_))
        ));
    }
}
