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
pub mod watch;

/// The HTTP status code of an API error, None for other errors.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}
