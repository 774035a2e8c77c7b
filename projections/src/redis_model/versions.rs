//! The last applied version of aggregates, for the projection lag and the re-drive.

use fred::interfaces::HashesInterface;

use super::{RedisScanModel, check_keyspace};
use crate::ProjectionError;
use crate::event::aggregate_key;

impl RedisScanModel {
    /// The last applied version of each `(aggregate type, aggregate id)`, in the order
    /// asked; 0 when none was applied.
    pub async fn versions(&self, aggregates: &[(&str, &str)]) -> Result<Vec<i64>, ProjectionError> {
        if aggregates.is_empty() {
            return Ok(Vec::new());
        }
        let keyspace = match &self.keyspace {
            Some(ks) => {
                check_keyspace(ks)?;
                ks.clone()
            }
            None => self.active_keyspace().await?,
        };
        let fields: Vec<String> = aggregates
            .iter()
            .map(|(kind, id)| aggregate_key(kind, id))
            .collect();
        let values: Vec<Option<i64>> = self
            .pool
            .hmget(format!("{}v", self.keyspace_base(&keyspace)), fields)
            .await?;
        Ok(values.into_iter().map(|v| v.unwrap_or(0)).collect())
    }
}
