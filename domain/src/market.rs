//! Markets a product or batch is intended for, as ISO 3166-1 alpha-2 country codes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An ISO 3166-1 alpha-2 code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Market([u8; 2]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an ISO 3166-1 alpha-2 country code")]
pub struct UnknownMarket(pub String);

impl Market {
    pub fn parse(input: &str) -> Result<Self, UnknownMarket> {
        let upper = input.trim().to_ascii_uppercase();
        match ISO_3166_ALPHA2.binary_search(&upper.as_str()) {
            Ok(_) => {
                let b = upper.as_bytes();
                Ok(Market([b[0], b[1]]))
            }
            Err(_) => Err(UnknownMarket(input.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only codes from the ASCII list above are ever constructed.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// Parses a list, naming the first bad entry; duplicates are removed, order kept.
    pub fn parse_list<S: AsRef<str>>(codes: &[S]) -> Result<Vec<Market>, UnknownMarket> {
        let mut out: Vec<Market> = Vec::with_capacity(codes.len());
        for c in codes {
            let m = Market::parse(c.as_ref())?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Market {
    type Error = UnknownMarket;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Market::parse(&s)
    }
}

impl From<Market> for String {
    fn from(m: Market) -> String {
        m.as_str().to_string()
    }
}

/// ISO 3166-1 alpha-2, officially assigned codes, sorted for binary search.
const ISO_3166_ALPHA2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_so_binary_search_is_correct() {
        assert!(ISO_3166_ALPHA2.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn parses_case_insensitively_and_refuses_unknown_codes() {
        assert_eq!(Market::parse("br").unwrap().as_str(), "BR");
        assert_eq!(Market::parse("XX"), Err(UnknownMarket("XX".into())));
        assert_eq!(Market::parse("BRA"), Err(UnknownMarket("BRA".into())));
    }

    #[test]
    fn lists_drop_duplicates_and_name_the_bad_entry() {
        let list = Market::parse_list(&["BR", "us", "BR"]).unwrap();
        assert_eq!(
            list.iter().map(Market::as_str).collect::<Vec<_>>(),
            ["BR", "US"]
        );
        assert_eq!(
            Market::parse_list(&["BR", "ZZ"]),
            Err(UnknownMarket("ZZ".into()))
        );
    }
}
