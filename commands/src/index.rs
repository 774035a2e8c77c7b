//! How each aggregate's events change the write side's lookup tables.

use sqlx::PgConnection;
use uuid::Uuid;
use voketag_domain::api_key::{ApiKey, ApiKeyEvent};
use voketag_domain::batch::{Batch, BatchEvent};
use voketag_domain::factory::{Factory, FactoryEvent};
use voketag_domain::product::{Product, ProductEvent};

use crate::store::Indexed;

fn id(aggregate_id: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(aggregate_id).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

impl Indexed for Factory {
    async fn index(
        conn: &mut PgConnection,
        aggregate_id: &str,
        events: &[FactoryEvent],
    ) -> Result<(), sqlx::Error> {
        for e in events {
            match e {
                FactoryEvent::FactoryRegistered { name } => {
                    sqlx::query("INSERT INTO factories (factory_id, name) VALUES ($1, $2)")
                        .bind(id(aggregate_id)?)
                        .bind(name)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

impl Indexed for Product {
    async fn index(
        conn: &mut PgConnection,
        aggregate_id: &str,
        events: &[ProductEvent],
    ) -> Result<(), sqlx::Error> {
        for e in events {
            match e {
                ProductEvent::ProductRegistered {
                    factory_id, gtin, ..
                } => {
                    sqlx::query(
                        "INSERT INTO products (product_id, factory_id, gtin) VALUES ($1, $2, $3)",
                    )
                    .bind(id(aggregate_id)?)
                    .bind(factory_id)
                    .bind(gtin.as_str())
                    .execute(&mut *conn)
                    .await?;
                }
            }
        }
        Ok(())
    }
}

impl Indexed for Batch {
    async fn index(
        conn: &mut PgConnection,
        aggregate_id: &str,
        events: &[BatchEvent],
    ) -> Result<(), sqlx::Error> {
        let batch_id = id(aggregate_id)?;
        for e in events {
            match e {
                BatchEvent::BatchCreated {
                    factory_id,
                    product_id,
                    lot,
                    ..
                } => {
                    sqlx::query(
                        "INSERT INTO batches (batch_id, factory_id, product_id, lot) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(batch_id)
                    .bind(factory_id)
                    .bind(product_id)
                    .bind(lot)
                    .execute(&mut *conn)
                    .await?;
                }
                // An import registers its tags itself, sorted, in the same transaction
                // (workers::imports::register): far cheaper for the primary key index.
                BatchEvent::TagsIssued {
                    import_id: Some(_), ..
                } => {}
                BatchEvent::TagsIssued { tags, .. } => {
                    let ids: Vec<Uuid> = tags.iter().map(|t| t.tag_id).collect();
                    sqlx::query("INSERT INTO tag_registry (tag_id, batch_id) SELECT t, $2 FROM UNNEST($1::uuid[]) AS t")
                        .bind(&ids)
                        .bind(batch_id)
                        .execute(&mut *conn)
                        .await?;
                }
                BatchEvent::BatchActivated
                | BatchEvent::BatchRecalled { .. }
                | BatchEvent::BatchClosed
                | BatchEvent::TagRevoked { .. } => {}
            }
        }
        Ok(())
    }
}

impl Indexed for ApiKey {
    async fn index(
        conn: &mut PgConnection,
        aggregate_id: &str,
        events: &[ApiKeyEvent],
    ) -> Result<(), sqlx::Error> {
        let key_id = id(aggregate_id)?;
        for e in events {
            match e {
                ApiKeyEvent::ApiKeyIssued {
                    factory_id,
                    name,
                    role,
                    prefix,
                    secret_sha256,
                } => {
                    sqlx::query(
                        "INSERT INTO api_keys (key_id, prefix, factory_id, name, role, secret_sha256)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(key_id)
                    .bind(prefix)
                    .bind(factory_id)
                    .bind(name)
                    .bind(role.as_str())
                    .bind(secret_sha256)
                    .execute(&mut *conn)
                    .await?;
                }
                ApiKeyEvent::ApiKeyRevoked => {
                    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1")
                        .bind(key_id)
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

impl Indexed for voketag_domain::scan::ScanLog {
    async fn index(
        _conn: &mut PgConnection,
        _aggregate_id: &str,
        _events: &[voketag_domain::scan::ScanLogEvent],
    ) -> Result<(), sqlx::Error> {
        // Scans need no write-side lookup: nothing is ever found by a scan's fields.
        Ok(())
    }
}
