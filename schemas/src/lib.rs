//! What crosses a process boundary: the HTTP DTOs of every API, the single error envelope,
//! and the metadata every stored event and bus message carries.

pub mod bus;
pub mod error;
pub mod factory_api;
pub mod metadata;
pub mod scan_api;

pub use error::{ErrorBody, ErrorEnvelope};
pub use metadata::EventMetadata;
