-- How far each projector's read model is known to have applied the stream, for the lag
-- metrics: every event up to (tx_id, position), in the relay's order (ADR 0004), is applied.
-- Moved forward only by the lag measurement; never a source of truth for the models.
CREATE TABLE projection_progress (
    subscription text PRIMARY KEY,
    tx_id        xid8   NOT NULL DEFAULT '0'::xid8,
    position     bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
