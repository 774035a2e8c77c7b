-- An upload is read once, by the intake, as it arrives (ADR 0015): what is stored is its
-- good rows packed in file order, ten thousand a piece (`commands::import::packed`), and
-- what the read found wrong. The CSV text itself is no longer kept, nor a second copy of
-- the ids: the worker sorts them itself.
CREATE TABLE import_rows (
    import_id  uuid    NOT NULL REFERENCES imports ON DELETE CASCADE,
    seq        integer NOT NULL,
    first_line bigint  NOT NULL,
    ids        bytea   NOT NULL,
    serials    bytea,
    lines      bytea,
    PRIMARY KEY (import_id, seq)
);
-- Random ids do not compress, and trying costs more than the bytes it could save.
ALTER TABLE import_rows ALTER COLUMN ids SET STORAGE EXTERNAL;
ALTER TABLE import_rows ALTER COLUMN serials SET STORAGE EXTERNAL;
ALTER TABLE import_rows ALTER COLUMN lines SET STORAGE EXTERNAL;

-- What the intake's read found: data rows, and the rows it could not take (the first
-- thousand, and how many in all). NULL `read_rows`: an upload stored as CSV text before
-- this change (`import_chunks`), which the worker reads and packs first.
ALTER TABLE imports ADD COLUMN read_rows bigint;
ALTER TABLE imports ADD COLUMN read_errors jsonb NOT NULL DEFAULT '[]';
ALTER TABLE imports ADD COLUMN read_error_count bigint NOT NULL DEFAULT 0;

-- The sorted ids the intake stored beside the CSV text (ADR 0012): the worker now sorts
-- the ids itself, and packs an upload stored as text before it reserves anything.
DROP TABLE import_tag_ids;
ALTER TABLE imports DROP COLUMN clean_rows;
