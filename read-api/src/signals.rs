//! What a scan may know about who scanned (LGPD): the coarse country and region the load
//! balancer derived from the client's address, and a salted hash of device signals. The
//! raw IP address, precise location, user agent and languages are never stored, logged or
//! published.

use http::HeaderMap;
use sha2::{Digest, Sha256};

/// ISO 3166-1 alpha-2 (CLDR region) country of the client, set by the load balancer.
pub const X_CLIENT_REGION: &str = "x-client-region";
/// The subdivision of that country (e.g. `BRSP`, `USCA`), set by the load balancer.
pub const X_CLIENT_REGION_SUBDIVISION: &str = "x-client-region-subdivision";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanSignals {
    pub country: Option<String>,
    pub region: Option<String>,
    /// Hex SHA-256 of the salted device signals; `None` when the client sent none.
    pub device: Option<String>,
}

impl ScanSignals {
    pub fn from_headers(headers: &HeaderMap, device_salt: &str) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        ScanSignals {
            country: text(X_CLIENT_REGION).and_then(country),
            region: text(X_CLIENT_REGION_SUBDIVISION).and_then(region),
            device: device(
                device_salt,
                text(http::header::USER_AGENT.as_str()),
                text(http::header::ACCEPT_LANGUAGE.as_str()),
            ),
        }
    }
}

/// Two ASCII letters, upper-cased; anything else is treated as unknown, not trusted.
fn country(raw: &str) -> Option<String> {
    let raw = raw.trim();
    (raw.len() == 2 && raw.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| raw.to_ascii_uppercase())
}

/// A subdivision code: 1 to 8 ASCII letters, digits or `-`, upper-cased.
fn region(raw: &str) -> Option<String> {
    let raw = raw.trim();
    (!raw.is_empty()
        && raw.len() <= 8
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    .then(|| raw.to_ascii_uppercase())
}

/// Hex SHA-256 of salt ‖ 0 ‖ user-agent ‖ 0 ‖ accept-language. The zero bytes keep the
/// parts apart, so that moving text from one header to the other changes the hash.
fn device(salt: &str, user_agent: Option<&str>, languages: Option<&str>) -> Option<String> {
    if user_agent.is_none() && languages.is_none() {
        return None;
    }
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0]);
    h.update(user_agent.unwrap_or_default().as_bytes());
    h.update([0]);
    h.update(languages.unwrap_or_default().as_bytes());
    Some(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn country_and_region_are_coarse_codes_or_nothing() {
        let s = ScanSignals::from_headers(
            &headers(&[
                ("x-client-region", "de"),
                ("x-client-region-subdivision", "debe"),
            ]),
            "salt",
        );
        assert_eq!(s.country.as_deref(), Some("DE"));
        assert_eq!(s.region.as_deref(), Some("DEBE"));
        for bad in ["", "DEU", "1A", "D"] {
            assert_eq!(country(bad), None, "{bad}");
        }
        assert_eq!(region("a very long region name"), None);
        assert_eq!(region("BR;SP"), None);
        assert_eq!(
            ScanSignals::from_headers(&HeaderMap::new(), "s"),
            ScanSignals::default()
        );
    }

    #[test]
    fn the_device_is_a_salted_hash_and_never_the_raw_signals() {
        let h = headers(&[
            ("user-agent", "Mozilla/5.0 (Phone)"),
            ("accept-language", "pt-BR"),
        ]);
        let a = ScanSignals::from_headers(&h, "salt-1").device.unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!a.contains("Mozilla"));
        assert_eq!(
            ScanSignals::from_headers(&h, "salt-1").device.unwrap(),
            a,
            "stable"
        );
        assert_ne!(
            ScanSignals::from_headers(&h, "salt-2").device.unwrap(),
            a,
            "salted"
        );
        assert_ne!(
            device("s", Some("ab"), Some("c")),
            device("s", Some("a"), Some("bc"))
        );
    }
}
