-- Nothing reads events by global_position alone: the relay, the replay, lag and the
-- projectors read in (tx_id, global_position) order through events_relay_order, or by
-- aggregate through the primary key. The unique index on global_position was a third index
-- entry (and WAL record) on every event for a uniqueness the identity column already
-- gives: it is GENERATED ALWAYS, and events can be neither updated nor deleted (ADR 0011).
DROP INDEX IF EXISTS events_global_position;
