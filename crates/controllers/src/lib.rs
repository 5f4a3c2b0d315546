//! controllers (being written)
pub mod deployment;
pub mod events;
pub mod gc;
pub mod job;
pub mod leader;
pub mod namespace;
pub mod nodelifecycle;
pub mod podcontrol;
pub mod profiles;
pub mod replicaset;
pub mod scheduler;
pub mod serverless;
