//! How each aggregate's events change the write side's lookup tables.
//!
//! A row that names a factory or a product writes the id through
//! `(SELECT … WHERE id = $n)`: NULL, and so refused by the column's NOT NULL
//! ([`crate::store`] answers "not found"), when it does not exist. A foreign key would
//! lock the referenced row on every insert (ADR 0010).

use uuid::Uuid;
use voketag_domain::api_key::{ApiKey, ApiKeyEvent};
use voketag_domain::batch::{Batch, BatchEvent};
use voketag_domain::factory::{Factory, FactoryEvent};
use voketag_domain::product::{Product, ProductEvent};

use crate::store::{Arg, CommandError, Indexed, Write};

fn id(aggregate_id: &str) -> Result<Uuid, CommandError> {
    Uuid::parse_str(aggregate_id)
        .map_err(|e| CommandError::Corrupt(format!("aggregate id {aggregate_id:?}: {e}")))
}

impl Indexed for Factory {
    fn index(aggregate_id: &str, events: &[FactoryEvent]) -> Result<Vec<Write>, CommandError> {
        let mut writes = Vec::new();
        for e in events {
            match e {
                FactoryEvent::FactoryRegistered { name } => writes.push(Write::new(
                    "INSERT INTO factories (factory_id, name) VALUES ($1, $2)",
                    vec![Arg::Uuid(id(aggregate_id)?), Arg::Text(name.clone())],
                )),
            }
        }
        Ok(writes)
    }
}

impl Indexed for Product {
    fn index(aggregate_id: &str, events: &[ProductEvent]) -> Result<Vec<Write>, CommandError> {
        let mut writes = Vec::new();
        for e in events {
            match e {
                ProductEvent::ProductRegistered {
                    factory_id, gtin, ..
                } => writes.push(Write::new(
                    "INSERT INTO products (product_id, factory_id, gtin)
                     VALUES ($1, (SELECT factory_id FROM factories WHERE factory_id = $2), $3)",
                    vec![
                        Arg::Uuid(id(aggregate_id)?),
                        Arg::Uuid(*factory_id),
                        Arg::Text(gtin.as_str().to_string()),
                    ],
                )),
            }
        }
        Ok(writes)
    }
}

impl Indexed for Batch {
    fn index(aggregate_id: &str, events: &[BatchEvent]) -> Result<Vec<Write>, CommandError> {
        let batch_id = id(aggregate_id)?;
        let mut writes = Vec::new();
        for e in events {
            match e {
                BatchEvent::BatchCreated {
                    factory_id,
                    product_id,
                    lot,
                    ..
                } => writes.push(Write::new(
                    "INSERT INTO batches (batch_id, factory_id, product_id, lot)
                     VALUES ($1, (SELECT factory_id FROM factories WHERE factory_id = $2),
                             (SELECT product_id FROM products WHERE product_id = $3), $4)",
                    vec![
                        Arg::Uuid(batch_id),
                        Arg::Uuid(*factory_id),
                        Arg::Uuid(*product_id),
                        Arg::Text(lot.clone()),
                    ],
                )),
                // An import reserves its tags itself, sorted, before its events commit
                // (workers::imports::register, ADR 0012).
                BatchEvent::TagsIssued {
                    import_id: Some(_), ..
                } => {}
                BatchEvent::TagsIssued { tags, .. } => writes.push(Write::new(
                    "INSERT INTO tag_registry (tag_id, batch_id) SELECT t, $2 FROM UNNEST($1::uuid[]) AS t",
                    vec![
                        Arg::Uuids(tags.iter().map(|t| t.tag_id).collect()),
                        Arg::Uuid(batch_id),
                    ],
                )),
                BatchEvent::BatchActivated
                | BatchEvent::BatchRecalled { .. }
                | BatchEvent::BatchClosed
                | BatchEvent::TagRevoked { .. } => {}
            }
        }
        Ok(writes)
    }
}

impl Indexed for ApiKey {
    fn index(aggregate_id: &str, events: &[ApiKeyEvent]) -> Result<Vec<Write>, CommandError> {
        let key_id = id(aggregate_id)?;
        let mut writes = Vec::new();
        for e in events {
            match e {
                ApiKeyEvent::ApiKeyIssued {
                    factory_id,
                    name,
                    role,
                    prefix,
                    secret_sha256,
                } => writes.push(Write::new(
                    "INSERT INTO api_keys (key_id, prefix, factory_id, name, role, secret_sha256)
                     VALUES ($1, $2, (SELECT factory_id FROM factories WHERE factory_id = $3), $4, $5, $6)",
                    vec![
                        Arg::Uuid(key_id),
                        Arg::Text(prefix.clone()),
                        Arg::Uuid(*factory_id),
                        Arg::Text(name.clone()),
                        Arg::Text(role.as_str().to_string()),
                        Arg::Text(secret_sha256.clone()),
                    ],
                )),
                ApiKeyEvent::ApiKeyRevoked => writes.push(Write::new(
                    "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1",
                    vec![Arg::Uuid(key_id)],
                )),
            }
        }
        Ok(writes)
    }
}

impl Indexed for voketag_domain::scan::ScanLog {
    fn index(
        _aggregate_id: &str,
        _events: &[voketag_domain::scan::ScanLogEvent],
    ) -> Result<Vec<Write>, CommandError> {
        // Scans need no write-side lookup: nothing is ever found by a scan's fields.
        Ok(Vec::new())
    }
}
