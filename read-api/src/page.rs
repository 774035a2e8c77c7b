//! The page a browser gets for a scan: the verdict first and large (colour, icon and words,
//! never colour alone), then the product and the reasons in plain language. One
//! self-contained document: no scripts, fonts, images or style sheets from elsewhere.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use voketag_schemas::scan_api::{Reason, ScanResponse, Verdict};

/// Inline styles only; the colour pairs meet WCAG AA contrast.
const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;line-height:1.5;color:#1d2125;background:#f6f7f9}
main{max-width:36rem;margin:0 auto;padding:1rem}
.verdict{display:flex;gap:1rem;align-items:center;padding:1.25rem;border-radius:.75rem;border-left:.6rem solid}
.verdict .icon{font-size:3rem;line-height:1;font-weight:700;width:3.5rem;height:3.5rem;display:flex;align-items:center;justify-content:center;border-radius:50%;border:.2rem solid;flex:none}
.verdict h1{margin:0;font-size:2rem}
.verdict p{margin:.25rem 0 0;font-size:1.1rem}
.authentic{background:#d1e7dd;color:#0f5132;border-color:#0f5132}
.suspicious{background:#fff3cd;color:#664d03;border-color:#664d03}
.revoked{background:#f8d7da;color:#842029;border-color:#842029}
.unknown{background:#e2e3e5;color:#2b2f32;border-color:#2b2f32}
section.card{background:#fff;border-radius:.75rem;padding:1rem 1.25rem;margin-top:1rem;box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:1.15rem;margin:0 0 .5rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}
dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere}
ul{margin:0;padding-left:1.25rem}
footer{margin-top:1rem;font-size:.85rem;color:#4b5259;overflow-wrap:anywhere}
"#;

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                title { (title) " · VokeTag" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body { main { (body) } }
        }
    }
}

/// The heading, icon, class and one-line summary of a verdict.
fn verdict_parts(v: Verdict) -> (&'static str, &'static str, &'static str, &'static str) {
    match v {
        Verdict::Authentic => (
            "Authentic",
            "\u{2713}",
            "authentic",
            "This product is registered with its manufacturer.",
        ),
        Verdict::Suspicious => (
            "Suspicious",
            "!",
            "suspicious",
            "This product is registered, but something looks unusual. Check it before you buy or use it.",
        ),
        Verdict::Revoked => (
            "Revoked",
            "\u{2715}",
            "revoked",
            "Do not buy or use this product.",
        ),
        Verdict::Unknown => (
            "Unknown tag",
            "?",
            "unknown",
            "This tag is not registered with VokeTag.",
        ),
    }
}

/// A reason in plain language.
pub fn explain(reason: Reason) -> &'static str {
    match reason {
        Reason::RegisteredTag => "The manufacturer issued this tag for this product.",
        Reason::BatchActive => "Its production batch is released for sale.",
        Reason::BatchClosed => "Its production batch is complete and was closed normally.",
        Reason::TagRevoked => "The manufacturer has revoked this tag.",
        Reason::BatchRecalled => "The manufacturer has recalled this product's batch.",
        Reason::BatchNotActive => {
            "This product's batch has not been released yet, so it should not be on sale."
        }
        Reason::OutsideIntendedMarket => {
            "This product was not made for sale in the country it is being scanned in."
        }
        Reason::UnusuallyManyScans => {
            "This tag has been scanned unusually often, which can mean it was copied."
        }
        Reason::TagNotFound => {
            "We have no record of this tag. It may be counterfeit, or it was registered only moments ago."
        }
    }
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

pub fn scan(r: &ScanResponse) -> Markup {
    let (heading, icon, class, summary) = verdict_parts(r.verdict);
    let title = match &r.product {
        Some(p) => format!("{heading}: {} by {}", p.name, p.brand),
        None => heading.to_string(),
    };
    layout(
        &title,
        html! {
            section class={"verdict " (class)} role="status" {
                span class="icon" aria-hidden="true" { (icon) }
                div {
                    h1 { (heading) }
                    p { (summary) }
                }
            }
            @if let (Some(p), Some(b)) = (&r.product, &r.batch) {
                section class="card" aria-labelledby="product" {
                    h2 id="product" { "Product" }
                    dl {
                        dt { "Name" } dd { (p.name) }
                        dt { "Brand" } dd { (p.brand) }
                        dt { "GTIN" } dd { (p.gtin) }
                        dt { "Lot" } dd { (b.lot) }
                        @if let Some(serial) = &r.serial { dt { "Serial" } dd { (serial) } }
                        dt { "Produced" } dd { (b.production_date) }
                        @if let Some(sell_by) = b.sell_by { dt { "Sell by" } dd { (sell_by) } }
                        dt { "First scanned" }
                        dd {
                            @match r.first_scan_at {
                                Some(t) => { (when(t)) @if r.first_scan { " (this scan)" } },
                                None => "now",
                            }
                        }
                        dt { "Scans" } dd { (r.scan_count) }
                    }
                }
            }
            section class="card" aria-labelledby="why" {
                h2 id="why" { "Why" }
                ul {
                    @for reason in &r.reasons {
                        li {
                            (explain(*reason))
                            @if *reason == Reason::BatchRecalled {
                                @if let Some(why) = r.batch.as_ref().and_then(|b| b.recall_reason.as_ref()) {
                                    " Reason given: " (why)
                                }
                            }
                        }
                    }
                }
            }
            footer {
                "Tag " (r.tag_id) " · checked " (when(r.checked_at))
            }
        },
    )
}

/// A failed scan for a browser: what went wrong, in words.
pub fn error(heading: &str, message: &str, request_id: &str) -> Markup {
    layout(
        heading,
        html! {
            section class="verdict unknown" role="alert" {
                span class="icon" aria-hidden="true" { "!" }
                div {
                    h1 { (heading) }
                    p { (message) }
                }
            }
            @if !request_id.is_empty() {
                footer { "Reference for support: " (request_id) }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use voketag_schemas::scan_api::{ScanBatch, ScanProduct, ScanSource};

    fn response(verdict: Verdict, reasons: Vec<Reason>) -> ScanResponse {
        ScanResponse {
            tag_id: uuid::Uuid::nil(),
            verdict,
            reasons,
            serial: Some("S-<1>".into()),
            product: Some(ScanProduct {
                product_id: uuid::Uuid::nil(),
                gtin: "09506000134352".into(),
                name: "Serum & Co".into(),
                brand: "Acme".into(),
            }),
            batch: Some(ScanBatch {
                batch_id: uuid::Uuid::nil(),
                lot: "L1".into(),
                status: "recalled".into(),
                production_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 1)
                    .expect("a valid date"),
                sell_by: None,
                intended_markets: vec!["BR".into()],
                recall_reason: Some("contamination".into()),
            }),
            first_scan_at: None,
            scan_count: 1,
            first_scan: true,
            source: ScanSource::Cache,
            checked_at: Utc::now(),
        }
    }

    #[test]
    fn the_verdict_is_told_in_words_and_the_reasons_in_plain_language() {
        let page = scan(&response(Verdict::Revoked, vec![Reason::BatchRecalled])).into_string();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<h1>Revoked</h1>"));
        assert!(page.contains("Do not buy or use this product."));
        assert!(
            page.contains("recalled this product&#39;s batch")
                || page.contains("recalled this product's batch")
        );
        assert!(page.contains("contamination"));
        assert!(page.contains("aria-hidden=\"true\""));
        // Escaped, and nothing loaded from elsewhere.
        assert!(page.contains("Serum &amp; Co"));
        assert!(page.contains("S-&lt;1&gt;"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn an_unknown_tag_has_no_product_section() {
        let mut r = response(Verdict::Unknown, vec![Reason::TagNotFound]);
        r.product = None;
        r.batch = None;
        let page = scan(&r).into_string();
        assert!(page.contains("Unknown tag"));
        assert!(!page.contains("Product</h2>"));
        assert!(page.contains("We have no record of this tag."));
    }
}
