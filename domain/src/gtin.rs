//! GTIN (GS1 Global Trade Item Number) parsing: GTIN-8, -12, -13 and -14 are accepted and
//! normalised to 14 digits, and the GS1 mod-10 check digit is verified.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Gtin(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GtinError {
    #[error("GTIN must contain digits only, found `{0}`")]
    NotDigits(String),
    #[error("GTIN must have 8, 12, 13 or 14 digits, found {0}")]
    WrongLength(usize),
    #[error("GTIN check digit is {found} but the other digits require {expected}")]
    CheckDigit { expected: u8, found: u8 },
}

impl Gtin {
    pub fn parse(input: &str) -> Result<Self, GtinError> {
        let s = input.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(GtinError::NotDigits(s.to_string()));
        }
        if !matches!(s.len(), 8 | 12 | 13 | 14) {
            return Err(GtinError::WrongLength(s.len()));
        }
        let padded = format!("{s:0>14}");
        let digits: Vec<u8> = padded.bytes().map(|b| b - b'0').collect();
        let expected = check_digit(&digits[..13]);
        let found = digits[13];
        if expected != found {
            return Err(GtinError::CheckDigit { expected, found });
        }
        Ok(Gtin(padded))
    }

    /// The 14-digit form used in GS1 Digital Link URIs.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// GS1 mod-10: weights 3 and 1 alternate from the rightmost data digit.
fn check_digit(data: &[u8]) -> u8 {
    let sum: u32 = data
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| u32::from(d) * if i % 2 == 0 { 3 } else { 1 })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

impl fmt::Display for Gtin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Gtin {
    type Err = GtinError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Gtin::parse(s)
    }
}

impl TryFrom<String> for Gtin {
    type Error = GtinError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Gtin::parse(&s)
    }
}

impl From<Gtin> for String {
    fn from(g: Gtin) -> String {
        g.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_known_gtins_and_pads_to_14() {
        // GS1's own examples.
        assert_eq!(
            Gtin::parse("09506000134352").unwrap().as_str(),
            "09506000134352"
        );
        assert_eq!(
            Gtin::parse("9506000134352").unwrap().as_str(),
            "09506000134352"
        );
        assert_eq!(
            Gtin::parse("614141000036").unwrap().as_str(),
            "00614141000036"
        );
        assert_eq!(Gtin::parse("96385074").unwrap().as_str(), "00000096385074");
    }

    #[test]
    fn refuses_a_wrong_check_digit_and_says_which() {
        assert_eq!(
            Gtin::parse("09506000134353"),
            Err(GtinError::CheckDigit {
                expected: 2,
                found: 3
            })
        );
    }

    #[test]
    fn refuses_letters_and_wrong_lengths() {
        assert!(matches!(
            Gtin::parse("95060001343a2"),
            Err(GtinError::NotDigits(_))
        ));
        assert_eq!(Gtin::parse("123456789"), Err(GtinError::WrongLength(9)));
        assert!(matches!(Gtin::parse(""), Err(GtinError::NotDigits(_))));
    }

    proptest::proptest! {
        #[test]
        fn every_13_digit_prefix_has_exactly_one_valid_check_digit(prefix in "[0-9]{13}") {
            let valid: Vec<u8> = (0..10u8)
                .filter(|d| Gtin::parse(&format!("{prefix}{d}")).is_ok())
                .collect();
            proptest::prop_assert_eq!(valid.len(), 1);
        }
    }
}
