-- The Postgres read model (owner: the projections crate, pg_views.rs): the scan API's
-- fallback when Redis misses, and per-factory scan statistics. Rebuilt from the event store
-- by the replay CLI; nothing here is a source of truth.
--
-- No foreign keys between the view tables: events of different aggregates (a product, a
-- batch, a batch's scan log) are not delivered in any guaranteed order, so a batch may
-- arrive before its product and scans before their tags. Lookups join at read time.

-- Last applied version per aggregate, updated in the transaction that applies the event.
CREATE TABLE view_versions (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    version        bigint NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);

CREATE TABLE view_products (
    product_id       uuid PRIMARY KEY,
    factory_id       uuid   NOT NULL,
    gtin             text   NOT NULL,
    name             text   NOT NULL,
    brand            text   NOT NULL,
    description      text   NOT NULL,
    intended_markets text[] NOT NULL
);

CREATE TABLE view_batches (
    batch_id         uuid PRIMARY KEY,
    factory_id       uuid   NOT NULL,
    product_id       uuid   NOT NULL,
    lot              text   NOT NULL,
    status           text   NOT NULL CHECK (status IN ('draft', 'active', 'recalled', 'closed')),
    production_date  date   NOT NULL,
    sell_by          date,
    intended_markets text[] NOT NULL,
    recall_reason    text
);
CREATE INDEX view_batches_factory ON view_batches (factory_id);

-- One row per tag. `issued` is false while only scans of the tag are known (its batch's
-- scan log was applied before the batch's TagsIssued): such a tag reads as unknown.
-- Scan counters come from ScansRecorded: scan_count = the highest scan number recorded,
-- first_scan_at = the earliest scan, to the whole second (as in Redis).
CREATE TABLE view_tags (
    tag_id         uuid PRIMARY KEY,
    batch_id       uuid    NOT NULL,
    issued         boolean NOT NULL DEFAULT false,
    serial         text,
    revoked_reason text,
    first_scan_at  timestamptz,
    scan_count     bigint  NOT NULL DEFAULT 0
);
CREATE INDEX view_tags_batch ON view_tags (batch_id);

-- Scan statistics per batch and day (UTC), from ScansRecorded. Kept per batch rather than
-- per factory so that a scan log applied before its BatchCreated needs no retry: the
-- factory is resolved at read time by view_factory_scan_stats.
CREATE TABLE view_batch_scan_stats (
    batch_id    uuid   NOT NULL,
    day         date   NOT NULL,
    scans       bigint NOT NULL DEFAULT 0,
    -- scans that were the tag's first (scan_number = 1)
    first_scans bigint NOT NULL DEFAULT 0,
    authentic   bigint NOT NULL DEFAULT 0,
    suspicious  bigint NOT NULL DEFAULT 0,
    revoked     bigint NOT NULL DEFAULT 0,
    unknown     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, day)
);

-- Per-factory scan statistics: one row per (factory_id, day). Scans of batches not yet in
-- view_batches are not counted until their batch is.
CREATE VIEW view_factory_scan_stats AS
SELECT b.factory_id,
       s.day,
       sum(s.scans)::bigint       AS scans,
       sum(s.first_scans)::bigint AS first_scans,
       sum(s.authentic)::bigint   AS authentic,
       sum(s.suspicious)::bigint  AS suspicious,
       sum(s.revoked)::bigint     AS revoked,
       sum(s.unknown)::bigint     AS unknown
  FROM view_batch_scan_stats s
  JOIN view_batches b ON b.batch_id = s.batch_id
 GROUP BY b.factory_id, s.day;
