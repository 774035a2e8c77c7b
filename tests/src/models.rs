//! The read models behind one interface, and snapshots of everything they answer, so that a
//! test can compare two models (or a model and an oracle) in full.

use fred::clients::Pool;
use futures::StreamExt;
use uuid::Uuid;
use voketag_projections::{
    Applied, BatchView, FactoryDayStats, PgViews, ProductView, ProjectionError, RedisScanModel,
    TagView,
};
use voketag_schemas::bus::EventEnvelope;

/// Lookups a snapshot keeps in flight at once.
const IN_FLIGHT: usize = 16;

/// What the tests need of a read model.
pub trait ReadModel: Sync {
    fn apply(
        &self,
        e: &EventEnvelope,
    ) -> impl Future<Output = Result<Applied, ProjectionError>> + Send;
    fn lookup(
        &self,
        tag: Uuid,
    ) -> impl Future<Output = Result<Option<TagView>, ProjectionError>> + Send;
    fn batch(
        &self,
        batch: Uuid,
    ) -> impl Future<Output = Result<Option<BatchView>, ProjectionError>> + Send;
    fn product(
        &self,
        product: Uuid,
    ) -> impl Future<Output = Result<Option<ProductView>, ProjectionError>> + Send;
    /// Per-factory statistics, for the models that keep them.
    fn stats(
        &self,
        factory: Uuid,
    ) -> impl Future<Output = Result<Vec<FactoryDayStats>, ProjectionError>> + Send;
    /// The last version of the aggregate the model applied (0: none).
    fn applied_version(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> impl Future<Output = Result<i64, ProjectionError>> + Send;
}

impl ReadModel for RedisScanModel {
    async fn apply(&self, e: &EventEnvelope) -> Result<Applied, ProjectionError> {
        RedisScanModel::apply(self, e).await
    }
    async fn lookup(&self, tag: Uuid) -> Result<Option<TagView>, ProjectionError> {
        RedisScanModel::lookup(self, tag).await
    }
    async fn batch(&self, batch: Uuid) -> Result<Option<BatchView>, ProjectionError> {
        RedisScanModel::batch(self, batch).await
    }
    async fn product(&self, product: Uuid) -> Result<Option<ProductView>, ProjectionError> {
        RedisScanModel::product(self, product).await
    }
    async fn stats(&self, _factory: Uuid) -> Result<Vec<FactoryDayStats>, ProjectionError> {
        Ok(vec![])
    }
    async fn applied_version(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<i64, ProjectionError> {
        let versions = RedisScanModel::versions(self, &[(aggregate_type, aggregate_id)]).await?;
        Ok(versions.first().copied().unwrap_or(0))
    }
}

impl ReadModel for PgViews {
    async fn apply(&self, e: &EventEnvelope) -> Result<Applied, ProjectionError> {
        PgViews::apply(self, e).await
    }
    async fn lookup(&self, tag: Uuid) -> Result<Option<TagView>, ProjectionError> {
        PgViews::lookup(self, tag).await
    }
    async fn batch(&self, batch: Uuid) -> Result<Option<BatchView>, ProjectionError> {
        PgViews::batch(self, batch).await
    }
    async fn product(&self, product: Uuid) -> Result<Option<ProductView>, ProjectionError> {
        PgViews::product(self, product).await
    }
    async fn stats(&self, factory: Uuid) -> Result<Vec<FactoryDayStats>, ProjectionError> {
        self.factory_scan_stats(factory).await
    }
    async fn applied_version(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<i64, ProjectionError> {
        let versions = PgViews::versions(self, &[(aggregate_type, aggregate_id)]).await?;
        Ok(versions.first().copied().unwrap_or(0))
    }
}

/// The ids a snapshot asks a model about.
#[derive(Debug, Clone, Default)]
pub struct Subjects {
    pub tags: Vec<Uuid>,
    pub batches: Vec<Uuid>,
    pub products: Vec<Uuid>,
    pub factories: Vec<Uuid>,
}

/// Everything a model answers about some tags, batches, products and factories.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub tags: Vec<(Uuid, Option<TagView>)>,
    pub batches: Vec<(Uuid, Option<BatchView>)>,
    pub products: Vec<(Uuid, Option<ProductView>)>,
    pub stats: Vec<FactoryDayStats>,
}

/// Asks `m` about every subject, in the subjects' order (the factories' statistics only
/// `with_stats`). Panics on a read error: a model that cannot answer fails the test.
pub async fn snapshot<M: ReadModel>(m: &M, of: &Subjects, with_stats: bool) -> Snapshot {
    let tags = futures::stream::iter(of.tags.iter().copied())
        .map(|t| async move { (t, m.lookup(t).await.expect("lookup")) })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let batches = futures::stream::iter(of.batches.iter().copied())
        .map(|b| async move { (b, m.batch(b).await.expect("batch")) })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let products = futures::stream::iter(of.products.iter().copied())
        .map(|p| async move { (p, m.product(p).await.expect("product")) })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let mut stats = vec![];
    if with_stats {
        for f in &of.factories {
            stats.extend(m.stats(*f).await.expect("stats"));
        }
    }
    Snapshot {
        tags,
        batches,
        products,
        stats,
    }
}

/// Deletes every Redis key that starts with `prefix`.
pub async fn delete_prefix(pool: &Pool, prefix: &str) {
    voketag_platform::redis::delete_prefix(pool, prefix)
        .await
        .expect("delete the Redis keys");
}
