-- Lookup tables of the write side, changed in the same transaction as the events they
-- follow from: they enforce set-wide rules (a GTIN once per factory, a tag once anywhere)
-- and find aggregates by something other than their id. Read models live elsewhere.
CREATE TABLE factories (
    factory_id uuid PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE products (
    product_id uuid PRIMARY KEY,
    factory_id uuid NOT NULL REFERENCES factories,
    gtin       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_gtin_once_per_factory UNIQUE (factory_id, gtin)
);

CREATE TABLE batches (
    batch_id   uuid PRIMARY KEY,
    factory_id uuid NOT NULL REFERENCES factories,
    product_id uuid NOT NULL REFERENCES products,
    lot        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT batches_lot_once_per_product UNIQUE (product_id, lot)
);
CREATE INDEX batches_factory ON batches (factory_id, batch_id);

-- Every tag ever issued, once. No foreign key: a million-row import checks uniqueness
-- through the primary key alone.
CREATE TABLE tag_registry (
    tag_id   uuid PRIMARY KEY,
    batch_id uuid NOT NULL
);

CREATE TABLE api_keys (
    key_id        uuid PRIMARY KEY,
    prefix        text NOT NULL UNIQUE,
    factory_id    uuid NOT NULL REFERENCES factories,
    name          text NOT NULL,
    role          text NOT NULL,
    secret_sha256 text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX api_keys_factory ON api_keys (factory_id, key_id);

-- The first successful answer to a POST carrying an Idempotency-Key, stored in the same
-- transaction as the events it caused.
CREATE TABLE idempotency_keys (
    scope        text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    status       smallint NOT NULL,
    body         jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- Signing keys of the development identity provider (`voketag up`, `voketag token`).
CREATE TABLE dev_signing_keys (
    kid             text PRIMARY KEY,
    private_key_pem text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
