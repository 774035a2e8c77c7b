//! Every read model of VokeTag, each with one owner here: how an event changes it
//! (`apply`) and how it is read (`lookup`). The Redis key layout and the Postgres view
//! tables are defined in this crate and nowhere else.
//!
//! - [`redis_model`]: the scan model in Redis, the scan API's first choice.
//! - [`pg_views`]: the same answers in Postgres (the fallback), plus per-factory statistics.
//!
//! Both are idempotent and version-gated: an event is applied only if it is the next
//! version of its aggregate, so duplicated and reordered delivery converge on the result
//! of one sequential fold.

mod event;
pub mod pg_views;
pub mod redis_model;
pub mod view;

pub use event::follows;
pub use pg_views::{FactoryDayStats, PgViews};
pub use redis_model::{RedisScanModel, ScanHit};
pub use view::{Applied, BatchView, ProductView, ProjectionError, TagView};
