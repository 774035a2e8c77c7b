//! End-to-end tests of VokeTag against real Postgres and Redis: one test binary, so linking
//! is paid once.

mod api;
mod event_store;
mod imports;
mod order;
mod parking;
mod pipeline;
mod projections;
mod pubsub;
mod rbac;
mod relay;
mod scan;
mod soak;
