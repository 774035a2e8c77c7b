//! Background workers: the imports worker (CSV files → `TagsIssued`), the relay (store →
//! bus), the projectors (bus → read models), the scans worker (`ScanObserved` →
//! `ScansRecorded`) and the replay that rebuilds the Redis scan model. The anchor worker
//! follows.

pub mod events;
pub mod imports;
pub mod projector;
pub mod relay;
pub mod replay;
pub mod scans;
