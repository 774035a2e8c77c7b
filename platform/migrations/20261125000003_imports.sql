-- CSV imports: the upload is kept in chunks until the imports worker has either issued
-- every tag (in the same transaction that marks the import completed) or rejected it.
CREATE TABLE imports (
    import_id      uuid PRIMARY KEY,
    factory_id     uuid NOT NULL,
    batch_id       uuid NOT NULL,
    status         text NOT NULL DEFAULT 'queued'
                   CHECK (status IN ('queued', 'validating', 'applying', 'completed', 'rejected')),
    content_bytes  bigint NOT NULL,
    rows_read      bigint NOT NULL DEFAULT 0,
    tags_issued    bigint NOT NULL DEFAULT 0,
    error_count    bigint NOT NULL DEFAULT 0,
    errors         jsonb  NOT NULL DEFAULT '[]',
    attempts       integer NOT NULL DEFAULT 0,
    actor          text NOT NULL,
    request_id     text NOT NULL,
    correlation_id text NOT NULL,
    traceparent    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX imports_pending ON imports (created_at) WHERE status IN ('queued', 'validating', 'applying');

CREATE TABLE import_chunks (
    import_id uuid    NOT NULL REFERENCES imports ON DELETE CASCADE,
    seq       integer NOT NULL,
    data      bytea   NOT NULL,
    PRIMARY KEY (import_id, seq)
);
