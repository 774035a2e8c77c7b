-- Events a projector could not apply, kept until re-driven. While an aggregate has a parked
-- event, its later events are parked behind it, so nothing is applied out of order.
CREATE TABLE parked_events (
    subscription   text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL,
    position       bigint NOT NULL,
    reason         text   NOT NULL,
    attempts       integer NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription, aggregate_type, aggregate_id, sequence)
);

-- Scan observations already recorded as events, so a redelivered observation is not
-- recorded twice.
CREATE TABLE recorded_scans (
    scan_id     uuid PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
