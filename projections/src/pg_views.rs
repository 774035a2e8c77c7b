//! The Postgres views (migration `20261125000005_views.sql`): the scan API's fallback read
//! model and per-factory scan statistics.
//!
//! Every event is applied in one transaction that first locks its aggregate's row in
//! `view_versions` (an `INSERT .. ON CONFLICT DO UPDATE .. RETURNING`, which takes the row
//! lock whether the row is new or not), checks the version, changes the views and moves the
//! version, so two concurrent appliers of one event cannot both apply it.
//!
//! Cross-aggregate order is not guaranteed, so nothing here requires another aggregate's
//! events first: tables have no foreign keys, a tag is joined to its batch and product at
//! read time (and reads as unknown until both are there), scans of a tag not yet issued
//! are kept on a row marked not issued, and scan statistics are kept per batch and summed
//! per factory by the view `view_factory_scan_stats` at read time, so a scan log applied
//! before its batch needs no retry.
//!
//! The views only read: scan counters come from `ScansRecorded` (scan count = highest scan
//! number, first scan = earliest scan, to the whole second as in Redis).

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;
use voketag_domain::batch::{BatchEvent, BatchStatus, IssuedTag};
use voketag_domain::product::ProductEvent;
use voketag_domain::scan::{ScanLogEvent, ScanRecord};
use voketag_schemas::bus::EventEnvelope;

use crate::event::{ModelEvent, decode, whole_second};
use crate::{Applied, BatchView, ProductView, ProjectionError, TagView};

/// One factory's scans of one day (UTC), from `view_factory_scan_stats`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FactoryDayStats {
    pub factory_id: Uuid,
    pub day: NaiveDate,
    pub scans: i64,
    /// Scans that were their tag's first.
    pub first_scans: i64,
    pub authentic: i64,
    pub suspicious: i64,
    pub revoked: i64,
    pub unknown: i64,
}

#[derive(Debug, Clone)]
pub struct PgViews {
    pool: PgPool,
}

impl PgViews {
    pub fn new(pool: PgPool) -> Self {
        PgViews { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies one event if it is the next version of its aggregate.
    pub async fn apply(&self, e: &EventEnvelope) -> Result<Applied, ProjectionError> {
        let Some(event) = decode(e)? else {
            return Ok(Applied::Ignored);
        };
        // Fast path without a lock for redeliveries: versions only grow, so a duplicate seen
        // here is a duplicate for good, and a gap seen here is at worst answered early (the
        // consumer delivers the event again later).
        let seen: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM view_versions WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(&e.aggregate_type)
        .bind(&e.aggregate_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(answer) = gate(e.sequence, seen.unwrap_or(0)) {
            return Ok(answer);
        }
        let mut tx = self.pool.begin().await?;
        // Locks the aggregate's version row (new or existing) until commit or rollback.
        let last: i64 = sqlx::query_scalar(
            "INSERT INTO view_versions (aggregate_type, aggregate_id, version) VALUES ($1, $2, 0)
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = view_versions.version
             RETURNING version",
        )
        .bind(&e.aggregate_type)
        .bind(&e.aggregate_id)
        .fetch_one(&mut *tx)
        .await?;
        if let Some(answer) = gate(e.sequence, last) {
            tx.rollback().await?;
            return Ok(answer);
        }
        apply_event(&mut tx, &event).await?;
        sqlx::query(
            "UPDATE view_versions SET version = $3 WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(&e.aggregate_type)
        .bind(&e.aggregate_id)
        .bind(e.sequence)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Applied::Applied)
    }

    /// Empties every view and forgets every applied version, so that the views can be
    /// built again from the store (benchmarks and tests rebuild them).
    pub async fn clear(&self) -> Result<(), ProjectionError> {
        sqlx::query(
            "TRUNCATE view_versions, view_products, view_batches, view_tags, view_batch_scan_stats",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The tag with its batch and product: one indexed query. `None` when the tag is not
    /// issued or its batch or product is not in the views (yet).
    pub async fn lookup(&self, tag_id: Uuid) -> Result<Option<TagView>, ProjectionError> {
        let row: Option<TagRow> = sqlx::query_as(
            "SELECT t.tag_id, t.serial, t.revoked_reason, t.first_scan_at, t.scan_count,
                    b.batch_id, b.factory_id, b.lot, b.status, b.production_date, b.sell_by,
                    b.intended_markets, b.recall_reason,
                    p.product_id, p.gtin, p.name, p.brand
               FROM view_tags t
               JOIN view_batches b ON b.batch_id = t.batch_id
               JOIN view_products p ON p.product_id = b.product_id
              WHERE t.tag_id = $1 AND t.issued",
        )
        .bind(tag_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(TagRow::into_view))
    }

    pub async fn batch(&self, batch_id: Uuid) -> Result<Option<BatchView>, ProjectionError> {
        let row: Option<BatchRow> = sqlx::query_as(
            "SELECT batch_id, factory_id, lot, status, production_date, sell_by, intended_markets,
                    recall_reason
               FROM view_batches WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(BatchRow::into_view))
    }

    pub async fn product(&self, product_id: Uuid) -> Result<Option<ProductView>, ProjectionError> {
        let row: Option<(Uuid, String, String, String)> = sqlx::query_as(
            "SELECT product_id, gtin, name, brand FROM view_products WHERE product_id = $1",
        )
        .bind(product_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(product_id, gtin, name, brand)| ProductView {
            product_id,
            gtin,
            name,
            brand,
        }))
    }

    /// A factory's scan statistics, one row per day, oldest first.
    pub async fn factory_scan_stats(
        &self,
        factory_id: Uuid,
    ) -> Result<Vec<FactoryDayStats>, ProjectionError> {
        Ok(sqlx::query_as(
            "SELECT factory_id, day, scans, first_scans, authentic, suspicious, revoked, unknown
               FROM view_factory_scan_stats WHERE factory_id = $1 ORDER BY day",
        )
        .bind(factory_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// `None` when `sequence` is the next version after `last`, else what to answer.
fn gate(sequence: i64, last: i64) -> Option<Applied> {
    if sequence <= last {
        Some(Applied::Duplicate)
    } else if sequence > last + 1 {
        Some(Applied::Gap { expected: last + 1 })
    } else {
        None
    }
}

async fn apply_event(
    tx: &mut Transaction<'static, Postgres>,
    event: &ModelEvent,
) -> Result<(), sqlx::Error> {
    match event {
        ModelEvent::Product(
            id,
            ProductEvent::ProductRegistered {
                factory_id,
                gtin,
                name,
                brand,
                description,
                intended_markets,
            },
        ) => {
            let markets: Vec<&str> = intended_markets.iter().map(|m| m.as_str()).collect();
            sqlx::query(
                "INSERT INTO view_products
                        (product_id, factory_id, gtin, name, brand, description, intended_markets)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (product_id) DO UPDATE SET
                        factory_id = EXCLUDED.factory_id, gtin = EXCLUDED.gtin,
                        name = EXCLUDED.name, brand = EXCLUDED.brand,
                        description = EXCLUDED.description,
                        intended_markets = EXCLUDED.intended_markets",
            )
            .bind(id)
            .bind(factory_id)
            .bind(gtin.as_str())
            .bind(name)
            .bind(brand)
            .bind(description)
            .bind(&markets)
            .execute(&mut **tx)
            .await?;
        }
        ModelEvent::Batch(id, event) => apply_batch(tx, *id, event).await?,
        ModelEvent::ScanLog(id, ScanLogEvent::ScansRecorded { scans }) => {
            apply_scans(tx, *id, scans).await?
        }
    }
    Ok(())
}

async fn apply_batch(
    tx: &mut Transaction<'static, Postgres>,
    batch_id: Uuid,
    event: &BatchEvent,
) -> Result<(), sqlx::Error> {
    let set_status = |status: BatchStatus, reason: Option<&str>| {
        sqlx::query(
            "UPDATE view_batches SET status = $2, recall_reason = coalesce($3, recall_reason)
              WHERE batch_id = $1",
        )
        .bind(batch_id)
        .bind(status.as_str())
        .bind(reason.map(str::to_string))
    };
    match event {
        BatchEvent::BatchCreated {
            factory_id,
            product_id,
            lot,
            production_date,
            sell_by,
            intended_markets,
        } => {
            let markets: Vec<&str> = intended_markets.iter().map(|m| m.as_str()).collect();
            sqlx::query(
                "INSERT INTO view_batches (batch_id, factory_id, product_id, lot, status,
                        production_date, sell_by, intended_markets)
                 VALUES ($1, $2, $3, $4, 'draft', $5, $6, $7)
                 ON CONFLICT (batch_id) DO UPDATE SET
                        factory_id = EXCLUDED.factory_id, product_id = EXCLUDED.product_id,
                        lot = EXCLUDED.lot, status = EXCLUDED.status,
                        production_date = EXCLUDED.production_date, sell_by = EXCLUDED.sell_by,
                        intended_markets = EXCLUDED.intended_markets, recall_reason = NULL",
            )
            .bind(batch_id)
            .bind(factory_id)
            .bind(product_id)
            .bind(lot)
            .bind(production_date)
            .bind(sell_by)
            .bind(&markets)
            .execute(&mut **tx)
            .await?;
        }
        BatchEvent::BatchActivated => {
            set_status(BatchStatus::Active, None)
                .execute(&mut **tx)
                .await?;
        }
        BatchEvent::BatchClosed => {
            set_status(BatchStatus::Closed, None)
                .execute(&mut **tx)
                .await?;
        }
        BatchEvent::BatchRecalled { reason } => {
            set_status(BatchStatus::Recalled, Some(reason))
                .execute(&mut **tx)
                .await?;
        }
        BatchEvent::TagsIssued { tags, .. } => {
            let (ids, serials) = issued_columns(tags);
            // One statement for up to 10,000 tags.
            sqlx::query(
                "INSERT INTO view_tags (tag_id, batch_id, issued, serial)
                 SELECT t.tag_id, $3, true, t.serial
                   FROM UNNEST($1::uuid[], $2::text[]) AS t(tag_id, serial)
                 ON CONFLICT (tag_id) DO UPDATE SET
                        batch_id = EXCLUDED.batch_id, issued = true, serial = EXCLUDED.serial",
            )
            .bind(&ids)
            .bind(&serials)
            .bind(batch_id)
            .execute(&mut **tx)
            .await?;
        }
        BatchEvent::TagRevoked { tag_id, reason } => {
            sqlx::query(
                "INSERT INTO view_tags (tag_id, batch_id, revoked_reason) VALUES ($1, $2, $3)
                 ON CONFLICT (tag_id) DO UPDATE SET revoked_reason = EXCLUDED.revoked_reason",
            )
            .bind(tag_id)
            .bind(batch_id)
            .bind(reason)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// Columns for the `UNNEST` insert, one entry per tag id (a tag listed twice in one event
/// keeps its last serial: `ON CONFLICT DO UPDATE` may not touch a row twice).
fn issued_columns(tags: &[IssuedTag]) -> (Vec<Uuid>, Vec<Option<String>>) {
    let mut index: HashMap<Uuid, usize> = HashMap::with_capacity(tags.len());
    let mut ids = Vec::with_capacity(tags.len());
    let mut serials = Vec::with_capacity(tags.len());
    for t in tags {
        match index.get(&t.tag_id) {
            Some(&i) => serials[i] = t.serial.clone(),
            None => {
                index.insert(t.tag_id, ids.len());
                ids.push(t.tag_id);
                serials.push(t.serial.clone());
            }
        }
    }
    (ids, serials)
}

#[derive(Default)]
struct DayStats {
    scans: i64,
    first_scans: i64,
    authentic: i64,
    suspicious: i64,
    revoked: i64,
    unknown: i64,
}

async fn apply_scans(
    tx: &mut Transaction<'static, Postgres>,
    batch_id: Uuid,
    scans: &[ScanRecord],
) -> Result<(), sqlx::Error> {
    // Per tag: the highest scan number and the earliest scan of this event.
    let mut tags: BTreeMap<Uuid, (i64, DateTime<Utc>)> = BTreeMap::new();
    let mut days: BTreeMap<NaiveDate, DayStats> = BTreeMap::new();
    for s in scans {
        let number = i64::try_from(s.scan_number).unwrap_or(i64::MAX);
        let at = whole_second(s.scanned_at);
        tags.entry(s.tag_id)
            .and_modify(|(n, first)| {
                *n = (*n).max(number);
                *first = (*first).min(at);
            })
            .or_insert((number, at));
        let day = days.entry(s.scanned_at.date_naive()).or_default();
        day.scans += 1;
        if s.scan_number == 1 {
            day.first_scans += 1;
        }
        match s.verdict.as_str() {
            "authentic" => day.authentic += 1,
            "suspicious" => day.suspicious += 1,
            "revoked" => day.revoked += 1,
            "unknown" => day.unknown += 1,
            _ => {}
        }
    }
    if tags.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = tags.keys().copied().collect();
    let counts: Vec<i64> = tags.values().map(|(n, _)| *n).collect();
    let firsts: Vec<DateTime<Utc>> = tags.values().map(|(_, at)| *at).collect();
    sqlx::query(
        "INSERT INTO view_tags (tag_id, batch_id, scan_count, first_scan_at)
         SELECT t.tag_id, $4, t.n, t.at
           FROM UNNEST($1::uuid[], $2::bigint[], $3::timestamptz[]) AS t(tag_id, n, at)
         ON CONFLICT (tag_id) DO UPDATE SET
                scan_count = GREATEST(view_tags.scan_count, EXCLUDED.scan_count),
                first_scan_at = LEAST(view_tags.first_scan_at, EXCLUDED.first_scan_at)",
    )
    .bind(&ids)
    .bind(&counts)
    .bind(&firsts)
    .bind(batch_id)
    .execute(&mut **tx)
    .await?;

    let mut cols: [Vec<i64>; 6] = Default::default();
    let day_list: Vec<NaiveDate> = days.keys().copied().collect();
    for d in days.values() {
        for (col, v) in cols.iter_mut().zip([
            d.scans,
            d.first_scans,
            d.authentic,
            d.suspicious,
            d.revoked,
            d.unknown,
        ]) {
            col.push(v);
        }
    }
    let [
        scans_c,
        first_c,
        authentic_c,
        suspicious_c,
        revoked_c,
        unknown_c,
    ] = cols;
    sqlx::query(
        "INSERT INTO view_batch_scan_stats
                (batch_id, day, scans, first_scans, authentic, suspicious, revoked, unknown)
         SELECT $1, d.day, d.scans, d.first_scans, d.authentic, d.suspicious, d.revoked, d.unknown
           FROM UNNEST($2::date[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                       $7::bigint[], $8::bigint[])
                AS d(day, scans, first_scans, authentic, suspicious, revoked, unknown)
         ON CONFLICT (batch_id, day) DO UPDATE SET
                scans = view_batch_scan_stats.scans + EXCLUDED.scans,
                first_scans = view_batch_scan_stats.first_scans + EXCLUDED.first_scans,
                authentic = view_batch_scan_stats.authentic + EXCLUDED.authentic,
                suspicious = view_batch_scan_stats.suspicious + EXCLUDED.suspicious,
                revoked = view_batch_scan_stats.revoked + EXCLUDED.revoked,
                unknown = view_batch_scan_stats.unknown + EXCLUDED.unknown",
    )
    .bind(batch_id)
    .bind(&day_list)
    .bind(&scans_c)
    .bind(&first_c)
    .bind(&authentic_c)
    .bind(&suspicious_c)
    .bind(&revoked_c)
    .bind(&unknown_c)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct BatchRow {
    batch_id: Uuid,
    factory_id: Uuid,
    lot: String,
    status: String,
    production_date: NaiveDate,
    sell_by: Option<NaiveDate>,
    intended_markets: Vec<String>,
    recall_reason: Option<String>,
}

impl BatchRow {
    fn into_view(self) -> BatchView {
        BatchView {
            batch_id: self.batch_id,
            factory_id: self.factory_id,
            lot: self.lot,
            status: self.status,
            production_date: self.production_date,
            sell_by: self.sell_by,
            intended_markets: self.intended_markets,
            recall_reason: self.recall_reason,
        }
    }
}

#[derive(sqlx::FromRow)]
struct TagRow {
    tag_id: Uuid,
    serial: Option<String>,
    revoked_reason: Option<String>,
    first_scan_at: Option<DateTime<Utc>>,
    scan_count: i64,
    #[sqlx(flatten)]
    batch: BatchRow,
    product_id: Uuid,
    gtin: String,
    name: String,
    brand: String,
}

impl TagRow {
    fn into_view(self) -> TagView {
        TagView {
            tag_id: self.tag_id,
            serial: self.serial,
            revoked: self.revoked_reason,
            first_scan_at: self.first_scan_at,
            scan_count: u64::try_from(self.scan_count).unwrap_or(0),
            batch: self.batch.into_view(),
            product: ProductView {
                product_id: self.product_id,
                gtin: self.gtin,
                name: self.name,
                brand: self.brand,
            },
        }
    }
}

impl PgViews {
    /// The last applied version of each `(aggregate type, aggregate id)`, in the order
    /// asked; 0 when none was applied.
    pub async fn versions(&self, aggregates: &[(&str, &str)]) -> Result<Vec<i64>, ProjectionError> {
        let (kinds, ids): (Vec<&str>, Vec<&str>) = aggregates.iter().copied().unzip();
        let rows: Vec<i64> = sqlx::query_scalar(
            "SELECT coalesce(v.version, 0)
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS a(kind, id, n)
               LEFT JOIN view_versions v ON v.aggregate_type = a.kind AND v.aggregate_id = a.id
              ORDER BY a.n",
        )
        .bind(&kinds)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_version_only_is_applied() {
        assert_eq!(gate(1, 0), None);
        assert_eq!(gate(5, 4), None);
        assert_eq!(gate(4, 4), Some(Applied::Duplicate));
        assert_eq!(gate(1, 4), Some(Applied::Duplicate));
        assert_eq!(gate(7, 4), Some(Applied::Gap { expected: 5 }));
    }

    #[test]
    fn a_tag_listed_twice_keeps_its_last_serial() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let tags = vec![
            IssuedTag {
                tag_id: a,
                serial: Some("first".into()),
            },
            IssuedTag {
                tag_id: b,
                serial: None,
            },
            IssuedTag {
                tag_id: a,
                serial: Some("second".into()),
            },
        ];
        let (ids, serials) = issued_columns(&tags);
        assert_eq!(ids, vec![a, b]);
        assert_eq!(serials, vec![Some("second".to_string()), None]);
    }
}
