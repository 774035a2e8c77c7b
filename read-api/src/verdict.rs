//! The verdict of a scan and the reasons behind it: small, pure and explainable rules.
//!
//! Every rule that fires adds one machine-readable reason; the verdict is the most severe
//! one that fired, and its reasons come first:
//!
//! | rule | verdict | reason |
//! |---|---|---|
//! | no read model knows the tag | `unknown` | `tag_not_found` |
//! | the factory revoked the tag | `revoked` | `tag_revoked` |
//! | the factory recalled the batch | `revoked` | `batch_recalled` |
//! | the batch is still a draft (or in a state this version does not know) | `suspicious` | `batch_not_active` |
//! | the scan's country is outside the batch's intended markets | `suspicious` | `outside_intended_market` |
//! | the tag was scanned more than [`UNUSUAL_SCAN_COUNT`] times | `suspicious` | `unusually_many_scans` |
//! | none of the above | `authentic` | `registered_tag` and `batch_active` or `batch_closed` |

use voketag_projections::TagView;
use voketag_schemas::scan_api::{Reason, Verdict};

/// Scans of one tag above which a scan is suspicious: a genuine product is scanned by a
/// handful of people (maker, shop, buyer, perhaps a reseller); a tag scanned hundreds of
/// times has most likely been copied onto counterfeits. A constant for now, not a setting,
/// until real scan distributions say where the line should be.
pub const UNUSUAL_SCAN_COUNT: u64 = 100;

/// What the rules look at besides the tag itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan<'a> {
    /// ISO 3166-1 alpha-2 country of the scan (load balancer), when known.
    pub country: Option<&'a str>,
    /// The tag's scan count including this scan.
    pub scan_number: u64,
}

/// Judges one scan of `tag` (`None`: no read model knows it).
pub fn judge(tag: Option<&TagView>, scan: Scan<'_>) -> (Verdict, Vec<Reason>) {
    let Some(tag) = tag else {
        return (Verdict::Unknown, vec![Reason::TagNotFound]);
    };
    let batch = &tag.batch;
    let mut revoked = Vec::new();
    if tag.revoked.is_some() {
        revoked.push(Reason::TagRevoked);
    }
    if batch.status == "recalled" {
        revoked.push(Reason::BatchRecalled);
    }
    let mut suspicious = Vec::new();
    if !matches!(batch.status.as_str(), "active" | "closed" | "recalled") {
        suspicious.push(Reason::BatchNotActive);
    }
    if let Some(country) = scan.country
        && !batch.intended_markets.is_empty()
        && !batch
            .intended_markets
            .iter()
            .any(|m| m.eq_ignore_ascii_case(country))
    {
        suspicious.push(Reason::OutsideIntendedMarket);
    }
    if scan.scan_number > UNUSUAL_SCAN_COUNT {
        suspicious.push(Reason::UnusuallyManyScans);
    }
    if !revoked.is_empty() {
        revoked.extend(suspicious);
        (Verdict::Revoked, revoked)
    } else if !suspicious.is_empty() {
        (Verdict::Suspicious, suspicious)
    } else {
        let state = if batch.status == "closed" {
            Reason::BatchClosed
        } else {
            Reason::BatchActive
        };
        (Verdict::Authentic, vec![Reason::RegisteredTag, state])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use uuid::Uuid;
    use voketag_projections::{BatchView, ProductView};

    fn tag(status: &str) -> TagView {
        TagView {
            tag_id: Uuid::nil(),
            serial: Some("S-1".into()),
            revoked: None,
            first_scan_at: None,
            scan_count: 0,
            batch: BatchView {
                batch_id: Uuid::nil(),
                factory_id: Uuid::nil(),
                lot: "L1".into(),
                status: status.into(),
                production_date: NaiveDate::from_ymd_opt(2026, 11, 1).expect("a valid date"),
                sell_by: None,
                intended_markets: vec!["BR".into(), "US".into()],
                recall_reason: None,
            },
            product: ProductView {
                product_id: Uuid::nil(),
                gtin: "09506000134352".into(),
                name: "Serum".into(),
                brand: "Acme".into(),
            },
        }
    }

    fn scan(country: Option<&str>, scan_number: u64) -> Scan<'_> {
        Scan {
            country,
            scan_number,
        }
    }

    #[test]
    fn an_unknown_tag_is_unknown() {
        assert_eq!(
            judge(None, scan(Some("BR"), 0)),
            (Verdict::Unknown, vec![Reason::TagNotFound])
        );
    }

    #[test]
    fn a_registered_tag_of_an_active_or_closed_batch_is_authentic() {
        assert_eq!(
            judge(Some(&tag("active")), scan(Some("br"), 1)),
            (
                Verdict::Authentic,
                vec![Reason::RegisteredTag, Reason::BatchActive]
            )
        );
        assert_eq!(
            judge(Some(&tag("closed")), scan(None, 1)),
            (
                Verdict::Authentic,
                vec![Reason::RegisteredTag, Reason::BatchClosed]
            )
        );
    }

    #[test]
    fn a_revoked_tag_or_recalled_batch_is_revoked() {
        let mut t = tag("active");
        t.revoked = Some("stolen".into());
        assert_eq!(
            judge(Some(&t), scan(None, 1)),
            (Verdict::Revoked, vec![Reason::TagRevoked])
        );
        assert_eq!(
            judge(Some(&tag("recalled")), scan(None, 1)),
            (Verdict::Revoked, vec![Reason::BatchRecalled])
        );
        let mut t = tag("recalled");
        t.revoked = Some("stolen".into());
        assert_eq!(
            judge(Some(&t), scan(Some("DE"), 1)).1,
            [
                Reason::TagRevoked,
                Reason::BatchRecalled,
                Reason::OutsideIntendedMarket
            ]
        );
    }

    #[test]
    fn a_draft_batch_is_suspicious() {
        assert_eq!(
            judge(Some(&tag("draft")), scan(None, 1)),
            (Verdict::Suspicious, vec![Reason::BatchNotActive])
        );
        // A status this version does not know is not trusted either.
        assert_eq!(
            judge(Some(&tag("quarantined")), scan(None, 1)).0,
            Verdict::Suspicious
        );
    }

    #[test]
    fn a_scan_outside_the_intended_markets_is_suspicious() {
        assert_eq!(
            judge(Some(&tag("active")), scan(Some("DE"), 1)),
            (Verdict::Suspicious, vec![Reason::OutsideIntendedMarket])
        );
        // No country from the load balancer, or a batch for every market: no judgement.
        assert_eq!(
            judge(Some(&tag("active")), scan(None, 1)).0,
            Verdict::Authentic
        );
        let mut t = tag("active");
        t.batch.intended_markets.clear();
        assert_eq!(judge(Some(&t), scan(Some("DE"), 1)).0, Verdict::Authentic);
    }

    #[test]
    fn more_scans_than_the_threshold_are_suspicious() {
        let t = tag("active");
        assert_eq!(
            judge(Some(&t), scan(None, UNUSUAL_SCAN_COUNT)).0,
            Verdict::Authentic
        );
        assert_eq!(
            judge(Some(&t), scan(None, UNUSUAL_SCAN_COUNT + 1)),
            (Verdict::Suspicious, vec![Reason::UnusuallyManyScans])
        );
        assert_eq!(
            judge(Some(&tag("draft")), scan(Some("DE"), 500)).1,
            [
                Reason::BatchNotActive,
                Reason::OutsideIntendedMarket,
                Reason::UnusuallyManyScans
            ]
        );
    }
}
