//! Background workers. Today: the imports worker, which turns uploaded CSV files into
//! `TagsIssued` events. The relay, projectors, scan recorder and anchor worker follow.

pub mod events;
pub mod imports;
pub mod projector;
pub mod relay;
pub mod replay;
pub mod scans;
