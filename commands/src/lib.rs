//! The write side of VokeTag: the event store, the factory command API (`voketag serve
//! factory`), identity (JWT, API keys, roles) and the intake of CSV tag imports.

pub mod api;
pub mod auth;
pub mod import;
pub mod index;
pub mod store;

pub use api::{App, build};
