//! Job controller against the in-process API server: completions 3 / parallelism 2 finishes
//! (the test plays the node and marks pods Succeeded), then the TTL deletes the job.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, eventually};

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

fn job_json(name: &str, completions: i32, parallelism: i32, ttl: i32, backoff: i32) -> Job {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": completions, "parallelism": parallelism,
            "ttlSecondsAfterFinished": ttl, "backoffLimit": backoff,
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox"}]}}
        }
    }))
    .unwrap()
}

async fn set_phase(pods: &Api<Pod>, name: &str, phase: &str) {
    let patch = serde_json::json!({"status": {"phase": phase}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn job_pods(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_parallelism_and_ttl() {
    let ts = apiserver::testing::TestServer::start().await;
    let c = client(&ts).await;
    tokio::spawn(controllers::job::run(
        c.clone(),
        controllers::job::Config {
            backoff: Duration::from_millis(200),
            ..Default::default()
        },
    ));
    tokio::spawn(controllers::gc::run(
        c.clone(),
        controllers::gc::Config::default(),
    ));
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    jobs.create(&PostParams::default(), &job_json("pi", 3, 2, 2, 6))
        .await
        .unwrap();

    // Two pods at a time; mark them Succeeded until three succeeded.
    let mut done: i32 = 0;
    while done < 3 {
        let mut running = Vec::new();
        eventually("active job pods", || {
            let pods = pods.clone();
            let want = (3 - done).min(2);
            async move {
                let ps = job_pods(&pods, "pi").await;
                let active = ps
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded")
                    })
                    .count();
                active as i32 == want
            }
        })
        .await;
        for p in job_pods(&pods, "pi").await {
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phase != "Succeeded" {
                // Pod shape as upstream.
                let l = p.labels();
                assert_eq!(
                    l.get("batch.kubernetes.io/job-name").map(String::as_str),
                    Some("pi")
                );
                assert!(l.contains_key("controller-uid"));
                let o = &p.owner_references()[0];
                assert_eq!((o.kind.as_str(), o.controller), ("Job", Some(true)));
                running.push(p.name_any());
            }
        }
        assert!(running.len() <= 2, "parallelism exceeded: {running:?}");
        let name = running[0].clone();
        set_phase(&pods, &name, "Succeeded").await;
        done += 1;
        let j = jobs.clone();
        eventually("succeeded count", || {
            let j = j.clone();
            async move { j.get("pi").await.unwrap().status.and_then(|s| s.succeeded) == Some(done) }
        })
        .await;
    }
    let j = jobs.get("pi").await.unwrap();
    let st = j.status.unwrap();
    let conds: Vec<_> = st
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.status))
        .collect();
    assert!(
        conds.contains(&("Complete".into(), "True".into())),
        "{conds:?}"
    );
    assert!(
        conds.contains(&("SuccessCriteriaMet".into(), "True".into())),
        "{conds:?}"
    );
    assert!(st.completion_time.is_some());
    assert_eq!(st.active, Some(0));
    assert_eq!(job_pods(&pods, "pi").await.len(), 3);

    // Events were written.
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    assert!(
        evs.iter()
            .any(|e| e.reason.as_deref() == Some("SuccessfulCreate")
                && e.involved_object.name.as_deref() == Some("pi")
                && e.source.as_ref().and_then(|s| s.component.as_deref())
                    == Some("job-controller"))
    );
    assert!(evs.iter().any(|e| e.reason.as_deref() == Some("Completed")));

    // TTL 2 s: the job goes.
    let j = jobs.clone();
    eventually("job deleted by TTL", || {
        let j = j.clone();
        async move { j.get_opt("pi").await.unwrap().is_none() }
    })
    .await;
    // Background propagation: the collector removes the pods.
    let p = pods.clone();
    eventually("job pods collected", || {
        let p = p.clone();
        async move { job_pods(&p, "pi").await.is_empty() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_limit_fails_job() {
    let ts = apiserver::testing::TestServer::start().await;
    let c = client(&ts).await;
    tokio::spawn(controllers::job::run(
        c.clone(),
        controllers::job::Config {
            backoff: Duration::from_millis(200),
            ..Default::default()
        },
    ));
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    jobs.create(&PostParams::default(), &job_json("bad", 1, 1, 100, 1))
        .await
        .unwrap();
    for round in 0..2 {
        eventually("a running pod", || {
            let pods = pods.clone();
            async move {
                job_pods(&pods, "bad")
                    .await
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed")
                    })
                    .count()
                    == 1
            }
        })
        .await;
        let p = job_pods(&pods, "bad")
            .await
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed"))
            .unwrap();
        set_phase(&pods, &p.name_any(), "Failed").await;
        let _ = round;
    }
    let j = jobs.clone();
    eventually("Failed condition", || {
        let j = j.clone();
        async move {
            let st = j.get("bad").await.unwrap().status.unwrap_or_default();
            st.conditions.unwrap_or_default().iter().any(|c| {
                c.type_ == "Failed"
                    && c.status == "True"
                    && c.reason.as_deref() == Some("BackoffLimitExceeded")
            }) && st.failed == Some(2)
        }
    })
    .await;
    assert_eq!(
        job_pods(&pods, "bad").await.len(),
        2,
        "no pod after the limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_recorder_deduplicates() {
    use controllers::events::{NORMAL, Recorder, WARNING};
    let ts = apiserver::testing::TestServer::start().await;
    let c = client(&ts).await;
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let j = jobs
        .create(&PostParams::default(), &job_json("ev", 1, 1, 100, 1))
        .await
        .unwrap();
    let r = controllers::events::object_ref(&j);
    let rec = Recorder::new(c.clone(), "test-component");
    rec.record(&r, NORMAL, "Tick", "same message")
        .await
        .unwrap();
    rec.record(&r, NORMAL, "Tick", "same message")
        .await
        .unwrap();
    rec.record(&r, NORMAL, "Tick", "same message")
        .await
        .unwrap();
    rec.record(&r, WARNING, "Tock", "another").await.unwrap();
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    let ticks: Vec<&Event> = evs
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Tick"))
        .collect();
    assert_eq!(ticks.len(), 1, "de-duplicated");
    let e = ticks[0];
    assert_eq!(e.count, Some(3));
    assert_eq!(e.involved_object.kind.as_deref(), Some("Job"));
    assert_eq!(e.involved_object.uid, j.metadata.uid);
    assert_eq!(e.reporting_component.as_deref(), Some("test-component"));
    assert!(e.first_timestamp.is_some() && e.last_timestamp >= e.first_timestamp);
    let tock = evs
        .iter()
        .find(|e| e.reason.as_deref() == Some("Tock"))
        .unwrap();
    assert_eq!(
        (tock.type_.as_deref(), tock.count),
        (Some("Warning"), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadline_fails_job_and_removes_pods() {
    let ts = apiserver::testing::TestServer::start().await;
    let c = client(&ts).await;
    tokio::spawn(controllers::job::run(
        c.clone(),
        controllers::job::Config::default(),
    ));
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let mut j = job_json("slow", 4, 2, 100, 6);
    j.spec.as_mut().unwrap().active_deadline_seconds = Some(1);
    jobs.create(&PostParams::default(), &j).await.unwrap();
    let p = pods.clone();
    eventually("two pods", || {
        let p = p.clone();
        async move { job_pods(&p, "slow").await.len() == 2 }
    })
    .await;
    let jb = jobs.clone();
    eventually("DeadlineExceeded", || {
        let jb = jb.clone();
        async move {
            let st = jb.get("slow").await.unwrap().status.unwrap_or_default();
            st.conditions.unwrap_or_default().iter().any(|c| {
                c.type_ == "Failed"
                    && c.status == "True"
                    && c.reason.as_deref() == Some("DeadlineExceeded")
            })
        }
    })
    .await;
    assert!(
        job_pods(&pods, "slow").await.is_empty(),
        "running pods deleted"
    );
    let st = jobs.get("slow").await.unwrap().status.unwrap();
    assert_eq!(st.active, Some(0));
    assert!(st.completion_time.is_none());
}
