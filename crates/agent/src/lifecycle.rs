//! The lifecycle of one pod on this node as an explicit state machine: a state, an input (what
//! was observed or what the runtime reported) and a transition function that returns the next
//! state and the actions for the shell to carry out. Pure: no IO, no clock (times come in with
//! the inputs), unit tested with plain values.

use jiff::Timestamp;

/// The pod's `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Parse `spec.restartPolicy` (upstream's default is Always).
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    fn restarts_after(self, code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// How the containers last ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
}

/// Where a pod is in its life on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Bound here, nothing asked of the runtime yet.
    Pending,
    /// The runtime was asked to start the containers (again after `restarts` restarts).
    Starting {
        restarts: i32,
        last_exit: Option<Exit>,
    },
    /// The containers run.
    Running {
        started_at: Timestamp,
        restarts: i32,
        last_exit: Option<Exit>,
    },
    /// The containers exited and will not be restarted (phase Succeeded or Failed); `evicted`:
    /// kubelet's message when they were killed for an eviction (phase Failed, reason Evicted).
    Completed {
        exit: Exit,
        restarts: i32,
        evicted: Option<String>,
    },
    /// Deletion was requested; the runtime is stopping the containers.
    Terminating {
        started_at: Option<Timestamp>,
        restarts: i32,
    },
    /// Nothing runs any more; the final `DELETE` (grace period 0) was sent. `evicted` as in
    /// `Completed`.
    Deleting {
        exit: Option<Exit>,
        restarts: i32,
        evicted: Option<String>,
    },
    /// The pod is gone from the API (or from this node); forget it.
    Removed,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The pod as the watch shows it; `deleting` when it has a deletionTimestamp.
    Observed { deleting: bool },
    /// The runtime started the containers.
    Started { at: Timestamp },
    /// The runtime could not start the containers.
    StartFailed { at: Timestamp },
    /// The back-off after a failed start is over: try again.
    RetryStart,
    /// The containers exited by themselves.
    Exited { code: i32, at: Timestamp },
    /// The containers were killed for an eviction (kubelet's `message`): the pod ends, whatever
    /// its restartPolicy, and its status says why from then on.
    Evicted {
        code: i32,
        at: Timestamp,
        message: String,
    },
    /// The runtime stopped the containers after a deletion request.
    Stopped { code: i32, at: Timestamp },
    /// The pod disappeared from the API.
    Removed,
}

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the runtime to (re)start the pod's containers.
    Start,
    /// Feed [`Input::RetryStart`] after a back-off (a start failed; the kubelet keeps retrying
    /// a pod's sync and leaves it Pending rather than failing it).
    StartLater,
    /// Write the status that the new state implies.
    WriteStatus,
    /// Ask the runtime to stop the containers (graceful, with the pod's grace period).
    Stop,
    /// `DELETE` the pod with gracePeriodSeconds=0 and a uid precondition.
    Delete,
    /// Release what the pod held (IP, runtime state).
    Release,
}

/// The transition function.
pub fn transition(
    state: &PodState,
    input: &Input,
    policy: RestartPolicy,
) -> (PodState, Vec<Action>) {
    use Action::*;
    use PodState as S;
    match (state, input) {
        (S::Removed, _) => (S::Removed, vec![]),
        (_, Input::Removed) => (S::Removed, vec![Release]),

        (S::Pending, Input::Observed { deleting: false }) => (
            S::Starting {
                restarts: 0,
                last_exit: None,
            },
            vec![Start],
        ),
        (S::Pending, Input::Observed { deleting: true }) => (
            S::Deleting {
                exit: None,
                restarts: 0,
                evicted: None,
            },
            vec![Delete],
        ),

        (S::Starting { restarts, .. }, Input::Observed { deleting: true }) => (
            S::Terminating {
                started_at: None,
                restarts: *restarts,
            },
            vec![Stop],
        ),
        (
            S::Starting {
                restarts,
                last_exit,
            },
            Input::Started { at },
        ) => (
            S::Running {
                started_at: *at,
                restarts: *restarts,
                last_exit: *last_exit,
            },
            vec![WriteStatus],
        ),
        (S::Starting { .. }, Input::StartFailed { .. }) => {
            (state.clone(), vec![WriteStatus, StartLater])
        }
        (S::Starting { .. }, Input::RetryStart) => (state.clone(), vec![Start]),

        (
            S::Running {
                started_at,
                restarts,
                ..
            },
            Input::Observed { deleting: true },
        ) => (
            S::Terminating {
                started_at: Some(*started_at),
                restarts: *restarts,
            },
            vec![Stop],
        ),
        (
            S::Running {
                started_at,
                restarts,
                ..
            },
            Input::Evicted { code, at, message },
        ) => (
            S::Completed {
                exit: Exit {
                    code: *code,
                    started_at: *started_at,
                    finished_at: *at,
                },
                restarts: *restarts,
                evicted: Some(message.clone()),
            },
            vec![WriteStatus, Release],
        ),
        (
            S::Running {
                started_at,
                restarts,
                ..
            },
            Input::Exited { code, at },
        ) => {
            let exit = Exit {
                code: *code,
                started_at: *started_at,
                finished_at: *at,
            };
            if policy.restarts_after(*code) {
                (
                    S::Starting {
                        restarts: restarts + 1,
                        last_exit: Some(exit),
                    },
                    vec![Start],
                )
            } else {
                (
                    S::Completed {
                        exit,
                        restarts: *restarts,
                        evicted: None,
                    },
                    vec![WriteStatus, Release],
                )
            }
        }

        (
            S::Completed {
                exit,
                restarts,
                evicted,
            },
            Input::Observed { deleting: true },
        ) => (
            S::Deleting {
                exit: Some(*exit),
                restarts: *restarts,
                evicted: evicted.clone(),
            },
            vec![Delete],
        ),

        (
            S::Terminating {
                started_at,
                restarts,
            },
            Input::Stopped { code, at }
            | Input::Exited { code, at }
            | Input::Evicted { code, at, .. },
        ) => (
            S::Deleting {
                exit: Some(Exit {
                    code: *code,
                    started_at: started_at.unwrap_or(*at),
                    finished_at: *at,
                }),
                restarts: *restarts,
                evicted: match input {
                    Input::Evicted { message, .. } => Some(message.clone()),
                    _ => None,
                },
            },
            vec![WriteStatus, Release, Delete],
        ),
        // A start that finishes while stopping: the stop covers it.
        (S::Terminating { .. }, Input::Started { .. } | Input::StartFailed { .. }) => {
            (state.clone(), vec![])
        }

        // Everything else changes nothing (repeated observations, late runtime reports).
        _ => (state.clone(), vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn run(policy: RestartPolicy, inputs: &[Input]) -> (PodState, Vec<Action>) {
        let mut state = PodState::Pending;
        let mut actions = Vec::new();
        for i in inputs {
            let (s, a) = transition(&state, i, policy);
            state = s;
            actions.extend(a);
        }
        (state, actions)
    }

    const SEEN: Input = Input::Observed { deleting: false };
    const DELETING: Input = Input::Observed { deleting: true };

    #[test]
    fn a_failed_start_is_retried_not_failed() {
        let (s, a) = run(
            RestartPolicy::Never,
            &[SEEN, Input::StartFailed { at: t(1) }],
        );
        assert!(matches!(s, PodState::Starting { restarts: 0, .. }), "{s:?}");
        assert_eq!(
            a,
            vec![Action::Start, Action::WriteStatus, Action::StartLater]
        );
        let (s2, a2) = transition(&s, &Input::RetryStart, RestartPolicy::Never);
        assert_eq!(s2, s);
        assert_eq!(a2, vec![Action::Start]);
        // Deleted while backing off: the late timer starts nothing.
        let (t1, _) = transition(&s, &DELETING, RestartPolicy::Never);
        let (_, a3) = transition(&t1, &Input::RetryStart, RestartPolicy::Never);
        assert!(a3.is_empty(), "{a3:?}");
    }

    #[test]
    fn starts_once_and_runs() {
        let (s, a) = run(
            RestartPolicy::Always,
            &[SEEN, SEEN, Input::Started { at: t(1) }, SEEN],
        );
        assert_eq!(
            s,
            PodState::Running {
                started_at: t(1),
                restarts: 0,
                last_exit: None
            }
        );
        assert_eq!(a, vec![Action::Start, Action::WriteStatus]);
    }

    #[test]
    fn never_completes_with_the_exit_code() {
        let (s, a) = run(
            RestartPolicy::Never,
            &[
                SEEN,
                Input::Started { at: t(1) },
                Input::Exited { code: 3, at: t(5) },
            ],
        );
        assert_eq!(
            s,
            PodState::Completed {
                exit: Exit {
                    code: 3,
                    started_at: t(1),
                    finished_at: t(5)
                },
                restarts: 0,
                evicted: None
            }
        );
        assert_eq!(a.last(), Some(&Action::Release));
    }

    #[test]
    fn an_evicted_pod_ends_whatever_its_restart_policy() {
        for policy in [
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ] {
            let (state, actions) = run(
                policy,
                &[
                    Input::Observed { deleting: false },
                    Input::Started { at: t(1) },
                    Input::Evicted {
                        code: 137,
                        at: t(5),
                        message: "m. ".into(),
                    },
                ],
            );
            assert!(
                matches!(&state, PodState::Completed { exit, restarts: 0, evicted: Some(m) }
                    if exit.code == 137 && m == "m. "),
                "{policy:?}: {state:?}"
            );
            assert_eq!(
                actions.iter().filter(|a| **a == Action::Start).count(),
                1,
                "{policy:?}: started once, never again: {actions:?}"
            );
            assert_eq!(actions.last(), Some(&Action::Release));
        }
    }

    /// The eviction stays with the pod to its end: deleted after it, or evicted while its
    /// deletion was under way, the state still says so (its status is written from it).
    #[test]
    fn the_eviction_stays_with_the_pod() {
        let evicted = Input::Evicted {
            code: 137,
            at: t(5),
            message: "m. ".into(),
        };
        let (s, a) = run(
            RestartPolicy::Always,
            &[SEEN, Input::Started { at: t(1) }, evicted.clone(), DELETING],
        );
        assert!(
            matches!(&s, PodState::Deleting { evicted: Some(m), .. } if m == "m. "),
            "{s:?}"
        );
        assert_eq!(a.last(), Some(&Action::Delete));
        let (s, _) = run(
            RestartPolicy::Always,
            &[SEEN, Input::Started { at: t(1) }, DELETING, evicted],
        );
        assert!(
            matches!(&s, PodState::Deleting { evicted: Some(m), .. } if m == "m. "),
            "{s:?}"
        );
        let (s, _) = run(
            RestartPolicy::Always,
            &[
                SEEN,
                Input::Started { at: t(1) },
                DELETING,
                Input::Stopped { code: 0, at: t(2) },
            ],
        );
        assert!(
            matches!(s, PodState::Deleting { evicted: None, .. }),
            "{s:?}"
        );
    }

    #[test]
    fn on_failure_restarts_failures_only() {
        let (s, _) = run(
            RestartPolicy::OnFailure,
            &[
                SEEN,
                Input::Started { at: t(1) },
                Input::Exited { code: 1, at: t(2) },
                Input::Started { at: t(3) },
            ],
        );
        assert_eq!(
            s,
            PodState::Running {
                started_at: t(3),
                restarts: 1,
                last_exit: Some(Exit {
                    code: 1,
                    started_at: t(1),
                    finished_at: t(2)
                })
            }
        );
        let (s, _) = run(
            RestartPolicy::OnFailure,
            &[
                SEEN,
                Input::Started { at: t(1) },
                Input::Exited { code: 0, at: t(2) },
            ],
        );
        assert!(matches!(s, PodState::Completed { .. }));
        let (s, _) = run(
            RestartPolicy::Always,
            &[
                SEEN,
                Input::Started { at: t(1) },
                Input::Exited { code: 0, at: t(2) },
            ],
        );
        assert!(matches!(s, PodState::Starting { restarts: 1, .. }));
    }

    #[test]
    fn graceful_deletion_stops_then_deletes() {
        let (s, a) = run(
            RestartPolicy::Always,
            &[
                SEEN,
                Input::Started { at: t(1) },
                DELETING,
                DELETING,
                Input::Stopped { code: 0, at: t(9) },
                DELETING,
            ],
        );
        assert_eq!(
            s,
            PodState::Deleting {
                exit: Some(Exit {
                    code: 0,
                    started_at: t(1),
                    finished_at: t(9)
                }),
                restarts: 0,
                evicted: None
            }
        );
        assert_eq!(
            a,
            vec![
                Action::Start,
                Action::WriteStatus,
                Action::Stop,
                Action::WriteStatus,
                Action::Release,
                Action::Delete
            ]
        );
        let (s, a) = transition(&s, &Input::Removed, RestartPolicy::Always);
        assert_eq!((s, a), (PodState::Removed, vec![Action::Release]));
    }

    #[test]
    fn deleting_before_start_or_after_completion_deletes_at_once() {
        let (s, a) = run(RestartPolicy::Never, &[DELETING]);
        assert!(matches!(s, PodState::Deleting { exit: None, .. }));
        assert_eq!(a, vec![Action::Delete]);
        let (_, a) = run(
            RestartPolicy::Never,
            &[
                SEEN,
                Input::Started { at: t(1) },
                Input::Exited { code: 0, at: t(2) },
                DELETING,
            ],
        );
        assert_eq!(a.last(), Some(&Action::Delete));
        assert!(!a.contains(&Action::Stop));
    }

    #[test]
    fn late_reports_are_ignored() {
        let (s, a) = run(
            RestartPolicy::Always,
            &[SEEN, DELETING, Input::Started { at: t(1) }],
        );
        assert!(matches!(s, PodState::Terminating { .. }));
        assert_eq!(a, vec![Action::Start, Action::Stop]);
        let (s, a) = transition(&PodState::Removed, &SEEN, RestartPolicy::Always);
        assert_eq!((s, a), (PodState::Removed, vec![]));
    }
}
