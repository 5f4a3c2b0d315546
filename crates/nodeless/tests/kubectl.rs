//! The real kubectl (several minor versions) against the real `nodeless server` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, eventually};
use serde_json::Value;

const DEPLOYMENT_YAML: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports:
        - containerPort: 80
"#;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The everyday kubectl workflow, once per installed kubectl minor version.
#[test]
fn kubectl_workflow_across_versions() {
    let server = Server::start();
    for (i, k) in common::kubectl_versions().iter().enumerate() {
        let k = k.as_str();
        let ns = format!("t{i}");
        server.ok(k, &["create", "namespace", &ns]);
        let got = server.ok(k, &["get", "namespaces"]);
        assert!(got.contains(&ns) && got.contains("Active"), "{k}: {got}");

        // create deployment (typed client: protobuf body on 1.32+)
        server.ok(
            k,
            &[
                "-n",
                &ns,
                "create",
                "deployment",
                "hello",
                "--image=busybox:1.36",
                "--replicas=2",
            ],
        );
        let d = json(&server.ok(k, &["-n", &ns, "get", "deployment", "hello", "-o", "json"]));
        assert_eq!(d["spec"]["replicas"], 2, "{k}");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "busybox:1.36"
        );
        assert_eq!(
            d["spec"]["strategy"]["type"], "RollingUpdate",
            "{k}: defaults applied"
        );
        assert_eq!(d["metadata"]["generation"], 1);
        let table = server.ok(k, &["-n", &ns, "get", "deploy"]);
        assert!(
            table.contains("READY") && table.contains("UP-TO-DATE") && table.contains("hello"),
            "{k}: {table}"
        );

        // create -f (a Job: its selector and labels come from the server)
        let job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: once\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: c\n        image: busybox:1.36\n        command: [\"true\"]\n";
        let out = server.ok_stdin(k, &["-n", &ns, "create", "-f", "-"], job);
        assert!(out.contains("job.batch/once created"), "{k}: {out}");
        let j = json(&server.ok(k, &["-n", &ns, "get", "job", "once", "-o", "json"]));
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["job-name"], "once",
            "{k}: {j}"
        );
        assert_eq!(j["spec"]["backoffLimit"], 6);

        // apply -f: create, then change and re-apply (client-side, strategic merge patch)
        server.ok_stdin(k, &["-n", &ns, "apply", "-f", "-"], DEPLOYMENT_YAML);
        let changed = DEPLOYMENT_YAML
            .replace("nginx:1.25", "nginx:1.26")
            .replace("replicas: 2", "replicas: 3");
        let out = server.ok_stdin(k, &["-n", &ns, "apply", "-f", "-"], &changed);
        assert!(out.contains("configured"), "{k}: {out}");
        let d = json(&server.ok(k, &["-n", &ns, "get", "deploy", "web", "-o", "json"]));
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.26",
            "{k}"
        );
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(
            d["metadata"]["generation"], 2,
            "{k}: spec change bumps generation"
        );
        let out = server.ok_stdin(k, &["-n", &ns, "apply", "-f", "-"], &changed);
        assert!(out.contains("unchanged"), "{k}: {out}");

        // server-side apply
        let cm = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: {ns}\ndata:\n  a: \"1\"\n"
        );
        server.ok_stdin(k, &["apply", "--server-side", "-f", "-"], &cm);
        server.ok_stdin(
            k,
            &["apply", "--server-side", "-f", "-"],
            &cm.replace("\"1\"", "\"2\""),
        );
        let c = json(&server.ok(
            k,
            &[
                "-n",
                &ns,
                "get",
                "cm",
                "ssa",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        ));
        assert_eq!(c["data"]["a"], "2");
        assert!(
            c["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["manager"] == "kubectl" && m["operation"] == "Apply"),
            "{k}: {c}"
        );

        // scale, label, annotate, patch
        server.ok(k, &["-n", &ns, "scale", "deploy", "web", "--replicas=5"]);
        assert_eq!(
            server.ok(
                k,
                &[
                    "-n",
                    &ns,
                    "get",
                    "deploy",
                    "web",
                    "-o",
                    "jsonpath={.spec.replicas}"
                ]
            ),
            "5"
        );
        server.ok(k, &["-n", &ns, "label", "deploy", "web", "tier=frontend"]);
        server.ok(k, &["-n", &ns, "annotate", "deploy", "web", "note=hi"]);
        server.ok(k, &["-n", &ns, "patch", "deploy", "web", "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.27"}]}}}}"#]);
        server.ok(
            k,
            &[
                "-n",
                &ns,
                "patch",
                "deploy",
                "web",
                "--type=json",
                "-p",
                r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
            ],
        );
        server.ok(
            k,
            &[
                "-n",
                &ns,
                "patch",
                "deploy",
                "web",
                "--type=merge",
                "-p",
                r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
            ],
        );
        let d = json(&server.ok(k, &["-n", &ns, "get", "deploy", "web", "-o", "json"]));
        assert_eq!(d["metadata"]["labels"]["tier"], "frontend");
        assert_eq!(d["metadata"]["labels"]["merged"], "yes");
        assert_eq!(d["metadata"]["annotations"]["note"], "hi");
        assert_eq!(d["spec"]["replicas"], 4);
        let containers = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(
            containers.len(),
            1,
            "{k}: strategic merge by name keeps one container"
        );
        assert_eq!(containers[0]["image"], "nginx:1.27");
        assert_eq!(
            containers[0]["ports"][0]["containerPort"], 80,
            "{k}: untouched fields stay"
        );

        // selectors, wide output, labels, jsonpath, yaml
        let wide = server.ok(
            k,
            &[
                "-n",
                &ns,
                "get",
                "deploy",
                "-l",
                "tier=frontend",
                "-o",
                "wide",
                "--show-labels",
            ],
        );
        assert!(
            wide.contains("web")
                && !wide.contains("hello")
                && wide.contains("IMAGES")
                && wide.contains("tier=frontend"),
            "{k}: {wide}"
        );
        let yaml = server.ok(k, &["-n", &ns, "get", "deploy", "web", "-o", "yaml"]);
        assert!(
            yaml.contains("kind: Deployment") && yaml.contains("resourceVersion:"),
            "{k}"
        );
        let all = server.ok(k, &["get", "deploy", "-A"]);
        assert!(all.contains(&ns) && all.contains("NAMESPACE"), "{k}: {all}");

        // describe, explain, api-resources
        let desc = server.ok(k, &["-n", &ns, "describe", "deploy", "web"]);
        assert!(
            desc.contains("Name:") && desc.contains("web") && desc.contains("nginx:1.27"),
            "{k}: {desc}"
        );
        let explain = server.ok(k, &["explain", "deployment.spec.replicas"]);
        assert!(
            explain.to_lowercase().contains("replicas"),
            "{k}: {explain}"
        );
        let res = server.ok(k, &["api-resources"]);
        for needle in [
            "pods",
            "deployments",
            "replicasets",
            "jobs",
            "leases",
            "configmaps",
        ] {
            assert!(
                res.contains(needle),
                "{k}: api-resources lacks {needle}: {res}"
            );
        }

        // delete with finalizers: stays terminating until the finalizer goes
        server.ok(
            k,
            &[
                "-n",
                &ns,
                "create",
                "configmap",
                "fin",
                "--from-literal=a=b",
            ],
        );
        server.ok(
            k,
            &[
                "-n",
                &ns,
                "patch",
                "cm",
                "fin",
                "-p",
                r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
            ],
        );
        server.ok(k, &["-n", &ns, "delete", "cm", "fin", "--wait=false"]);
        let c = json(&server.ok(k, &["-n", &ns, "get", "cm", "fin", "-o", "json"]));
        assert!(
            c["metadata"]["deletionTimestamp"].is_string(),
            "{k}: terminating"
        );
        server.ok(
            k,
            &[
                "-n",
                &ns,
                "patch",
                "cm",
                "fin",
                "--type=json",
                "-p",
                r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
            ],
        );
        let out = server.kubectl_v(k, &["-n", &ns, "get", "cm", "fin"]);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"),
            "{k}: gone after the finalizer"
        );

        // delete (waits for the object to go)
        let out = server.ok(k, &["-n", &ns, "delete", "deploy", "hello"]);
        assert!(out.contains("deleted"), "{k}: {out}");
        let out = server.kubectl_v(k, &["-n", &ns, "get", "deploy", "hello"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Error from server (NotFound)"), "{k}: {err}");
    }
}

#[test]
fn bad_input_gets_upstream_errors() {
    let server = Server::start();
    let k = "kubectl.1.33";
    let err = |args: &[&str], stdin: Option<&str>| {
        let out = match stdin {
            Some(s) => server.kubectl_stdin(k, args, s),
            None => server.kubectl_v(k, args),
        };
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(&["get", "pod", "nope"], None);
    assert!(
        e.contains("Error from server (NotFound): pods \"nope\" not found"),
        "{e}"
    );
    let e = err(&["create", "namespace", "Bad_Name"], None);
    assert!(e.contains("Invalid") && e.contains("metadata.name"), "{e}");
    server.ok(k, &["create", "configmap", "dup"]);
    let e = err(&["create", "configmap", "dup"], None);
    assert!(e.contains("configmaps \"dup\" already exists"), "{e}");
    let e = err(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\nbogusField: 1\n"),
    );
    assert!(
        e.contains("unknown field") && e.contains("bogusField"),
        "strict field validation: {e}"
    );
    let e = err(&["-n", "missing", "create", "configmap", "x"], None);
    assert!(e.contains("namespaces \"missing\" not found"), "{e}");
}

#[test]
fn watch_streams_changes_to_kubectl() {
    let server = Server::start();
    let k = common::which("kubectl.1.33")
        .map(|_| "kubectl.1.33")
        .unwrap_or("kubectl");
    let exe = common::which(k).unwrap();
    let mut child = std::process::Command::new(exe)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .args(["get", "configmaps", "-w", "--request-timeout=20s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    server.ok(k, &["create", "configmap", "seen-by-watch"]);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let line = eventually(15, "the watch to show the new configmap", || {
        rx.try_recv().ok().filter(|l| l.contains("seen-by-watch"))
    });
    assert!(line.starts_with("seen-by-watch"), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn requests_without_credentials_are_unauthorized() {
    let server = Server::start();
    let bad = server.dir.path().join("bad.kubeconfig");
    let text = std::fs::read_to_string(&server.kubeconfig)
        .unwrap()
        .replace(&server.token(), "wrong-token");
    std::fs::write(&bad, text).unwrap();
    let out = common::kubectl_at(
        "kubectl.1.33",
        &bad,
        server.dir.path(),
        &["get", "pods"],
        None,
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("Unauthorized") || e.contains("provide credentials"),
        "{e}"
    );
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut server = Server::start();
    let token = server.token();
    let url = server.url();
    // A writer in this process creates configmaps as fast as it can through kubectl-free HTTPS
    // (curl), recording each name once the server acknowledged it; then the server is killed.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acked, stop, token, url) = (acked.clone(), stop.clone(), token.clone(), url.clone());
        writers.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("w{w}-{i}");
                let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"i":"{i}"}}}}"#);
                let out = std::process::Command::new("curl")
                    .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json", "-H"])
                    .arg(format!("Authorization: Bearer {token}"))
                    .args(["--data", &body])
                    .arg(format!("{url}/api/v1/namespaces/default/configmaps"))
                    .output();
                match out {
                    Ok(o) if String::from_utf8_lossy(&o.stdout) == "201" => acked.lock().unwrap().push(name),
                    _ => {}
                }
                i += 1;
            }
        }));
    }
    eventually(60, "some acknowledged writes", || {
        (acked.lock().unwrap().len() >= 40).then_some(())
    });
    server.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    server.spawn();
    let list = json(&server.ok("kubectl.1.33", &["get", "configmaps", "-o", "json"]));
    let names: std::collections::HashSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost after kill -9: {missing:?}",
        missing.len(),
        acked.len()
    );
}
