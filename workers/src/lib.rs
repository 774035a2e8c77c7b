//! Background workers: the imports worker (CSV files → `TagsIssued`), the relay (store →
//! bus), the projectors (bus → read models), the scans worker (`ScanObserved` →
//! `ScansRecorded`), the replay that rebuilds the Redis scan model, and the stream's lag.
//! The anchor worker follows.

pub mod events;
pub mod imports;
pub mod lag;
pub mod projector;
pub mod relay;
pub mod replay;
pub mod scans;
