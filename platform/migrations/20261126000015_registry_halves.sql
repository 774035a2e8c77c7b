-- The tag registry in two halves of the id space, so that an import reserves its sorted
-- ids with two COPYs at once, each into its own heap and primary key index (ADR 0014):
-- one index taking both halves at once was no faster than one COPY, since each half's
-- inserts landed in pages the other was splitting. The split is fixed here and in the
-- imports worker (`REGISTRY_SPLIT`).
ALTER TABLE tag_registry RENAME TO tag_registry_unpartitioned;
ALTER INDEX tag_registry_pkey RENAME TO tag_registry_unpartitioned_pkey;
-- A row entered by a single command names its batch; one an import reserved names the
-- import, and through it its batch (rows of imports completed before this migration name
-- both): a narrower row, cheaper to enter a million at a time.
CREATE TABLE tag_registry (
    tag_id    uuid NOT NULL,
    batch_id  uuid,
    import_id uuid,
    PRIMARY KEY (tag_id),
    CONSTRAINT tag_registry_names_its_batch CHECK (batch_id IS NOT NULL OR import_id IS NOT NULL)
) PARTITION BY RANGE (tag_id);
CREATE TABLE tag_registry_0 PARTITION OF tag_registry
    FOR VALUES FROM (MINVALUE) TO ('80000000-0000-0000-0000-000000000000');
CREATE TABLE tag_registry_1 PARTITION OF tag_registry
    FOR VALUES FROM ('80000000-0000-0000-0000-000000000000') TO (MAXVALUE);
INSERT INTO tag_registry (tag_id, batch_id, import_id)
    SELECT tag_id, batch_id, import_id FROM tag_registry_unpartitioned;
DROP TABLE tag_registry_unpartitioned;

-- Set by each half of a reservation in the transaction that enters it, cleared once both
-- are in (`tags_reserved`): an attempt that stopped between the two leaves it set, and the
-- next one takes the import's rows out before it reserves again.
ALTER TABLE imports ADD COLUMN reserving boolean NOT NULL DEFAULT false;
