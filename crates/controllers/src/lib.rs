//! controllers (being written)
pub mod events;
pub mod leader;
pub mod podcontrol;
pub mod replicaset;
pub mod job;
pub mod scheduler;
pub mod deployment;
pub mod gc;
pub mod namespace;
pub mod nodelifecycle;
