-- An import reserves its tags in the registry on a connection of its own, while its events
-- are written on another, and commits the reservation first (ADR 0012). A reserved row
-- names its import; it counts as issued once that import is completed. Rows entered by a
-- single command (in the transaction of its events) have no import.
ALTER TABLE tag_registry ADD COLUMN import_id uuid;

-- Set in the transaction that commits the reservation: the worker that resumes the import
-- reuses it, and a rejection removes it in the transaction that rejects.
ALTER TABLE imports ADD COLUMN tags_reserved boolean NOT NULL DEFAULT false;

-- A clean file's tag ids, sorted, as the intake read them while the file arrived: 16 bytes
-- an id, 65,536 ids a piece. The worker reserves them without reading the file first, and
-- checks them against its own read of the file before it commits (ADR 0012). Kept and
-- deleted with the upload.
CREATE TABLE import_tag_ids (
    import_id uuid    NOT NULL REFERENCES imports ON DELETE CASCADE,
    seq       integer NOT NULL,
    ids       bytea   NOT NULL,
    PRIMARY KEY (import_id, seq)
);
ALTER TABLE import_tag_ids ALTER COLUMN ids SET STORAGE EXTERNAL;
-- The rows of a clean file whose sorted ids are stored; NULL when none are.
ALTER TABLE imports ADD COLUMN clean_rows bigint;
