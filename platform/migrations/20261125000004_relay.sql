-- The relay's checkpoint: the last event it published, as (transaction, position).
CREATE TABLE relay_checkpoints (
    relay       text PRIMARY KEY,
    tx_id       xid8   NOT NULL DEFAULT '0'::xid8,
    position    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The relay reads committed events in (transaction, position) order; see ADR 0004.
CREATE INDEX events_relay_order ON events (tx_id, global_position);
