//! The micro-VM path end to end: a busybox image built here, pulled into the image store from an
//! OCI layout, turned into an erofs disk, booted in QEMU `-M microvm` (software emulation on
//! hosts without VMX/SVM), with the container's logs, exit code, exec, signals and teardown.
//! Needs the assets of `scripts/microvm-assets.sh`, qemu-system-x86 and erofs-utils: without
//! them the tests say SKIPPED, or fail when `NODELESS_REQUIRE_MICROVM` is set (CI).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{busybox_layout, data_dir};
use sandbox::image::{ImageStore, PullOptions, Source, StoreOptions};
use sandbox::microvm::pod::{MicroVmPod, PodVmOptions};
use sandbox::microvm::{self, ContainerSpec, ExecEvent, MicroVm, VmAssets, VmConfig, proto::State};
use sandbox::network::{PodNetwork, Subnet};
use sandbox::plan::{
    ContainerPlan, PodPlan, PodSize, RestartPolicy, VolumeKind, VolumeMount, VolumePlan,
};
use sandbox::pod::Host;

/// The assets, or `None` after printing why the test is skipped (a panic under
/// `NODELESS_REQUIRE_MICROVM`).
fn assets_or_skip(test: &str) -> Option<VmAssets> {
    let missing = match microvm::prerequisites() {
        Ok(a) => return Some(a),
        Err(e) => e.to_string(),
    };
    if std::env::var_os("NODELESS_REQUIRE_MICROVM").is_some() {
        panic!(
            "{test}: micro-VM prerequisites missing (NODELESS_REQUIRE_MICROVM is set): {missing}"
        );
    }
    println!("SKIPPED {test}: {missing}");
    None
}

/// Pulls the test busybox image (two layers with a whiteout and an opaque dir) and makes its
/// erofs disk; returns the disk path.
async fn busybox_disk(data: &Path) -> PathBuf {
    let layout = data.join("layout");
    busybox_layout(&layout, &["sh"]);
    let store = ImageStore::open(data.join("images"), StoreOptions::default()).unwrap();
    let src: Source = format!("oci:{}:latest", layout.display()).parse().unwrap();
    let img = store.pull(&src, &PullOptions::default()).await.unwrap();
    let disk = data.join("disks/busybox.erofs");
    microvm::make_erofs(&store.lower_dirs(&img), &disk)
        .await
        .unwrap();
    assert!(disk.metadata().unwrap().len() > 0);
    // No merge mount is left behind.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&data.display().to_string()), "{mounts}");
    disk
}

fn spec(args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into(), "GREETING=hi from env".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        memory_limit_bytes: None,
        groups: vec![],
        cpu_limit_millis: None,
    }
}

fn log_records(p: &Path) -> Vec<(String, String)> {
    std::fs::read(p)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let r = sandbox::logs::parse_line(l).expect("a CRI log line");
            (r.stream, String::from_utf8_lossy(&r.text).into_owned())
        })
        .collect()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn container_runs_logs_and_exits_in_a_micro_vm() {
    let Some(assets) = assets_or_skip("container_runs_logs_and_exits_in_a_micro_vm") else {
        return;
    };
    let (_d, data) = data_dir();
    let disk = busybox_disk(&data).await;
    let vm_dir = data.join("vm1");
    let config = VmConfig::new(assets, &vm_dir);
    let mut vm = MicroVm::boot(
        &config,
        &disk,
        &spec(&[
            "sh",
            "-c",
            "echo hello; echo \"$GREETING\"; pwd; echo err >&2; exit 3",
        ]),
    )
    .await
    .unwrap();
    let code = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("the container ends")
        .unwrap();
    assert_eq!(
        code,
        3,
        "console:\n{}",
        std::fs::read_to_string(vm.console_path()).unwrap_or_default()
    );
    let times = vm.boot_times();
    println!(
        "micro-VM (TCG) boot: QEMU start -> agent ready {:?}, -> first container output {:?}",
        times.to_ready, times.to_first_output
    );
    let recs = log_records(vm.log_path());
    assert!(
        recs.contains(&("stdout".into(), "hello".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&("stdout".into(), "hi from env".into())),
        "{recs:?}"
    );
    assert!(recs.contains(&("stdout".into(), "/".into())), "{recs:?}");
    assert!(recs.contains(&("stderr".into(), "err".into())), "{recs:?}");

    // The guest powers itself off once the container ended.
    let pid = vm.pid().unwrap();
    assert!(
        vm.wait_vm_exit(Duration::from_secs(30)).await.unwrap(),
        "qemu still running after the container exited"
    );
    vm.destroy().await.unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(leftovers(&vm_dir), ["container.log"]);
}

#[tokio::test]
async fn exec_status_and_kill_in_a_micro_vm() {
    let Some(assets) = assets_or_skip("exec_status_and_kill_in_a_micro_vm") else {
        return;
    };
    let (_d, data) = data_dir();
    let disk = busybox_disk(&data).await;
    let vm_dir = data.join("vm2");
    let config = VmConfig::new(assets, &vm_dir);
    let mut vm = MicroVm::boot(
        &config,
        &disk,
        &spec(&["sh", "-c", "echo started; exec sleep 1000"]),
    )
    .await
    .unwrap();
    let pid = vm.pid().unwrap();
    assert!(matches!(vm.status().await.unwrap(), State::Running { .. }));

    let out = vm.exec(&["cat", "/etc/passwd"], None).await.unwrap();
    assert_eq!(out.code, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("root:x:0:0:root:/root:/bin/sh\n"),
        "{out:?}"
    );
    let out = vm.exec(&["sh", "-c", "exit 5"], None).await.unwrap();
    assert_eq!(out.code, 5);
    let out = vm
        .exec(&["sh", "-c", "cat; echo oops >&2"], Some(b"from stdin\n"))
        .await
        .unwrap();
    assert_eq!(
        (out.code, &out.stdout[..], &out.stderr[..]),
        (0, &b"from stdin\n"[..], &b"oops\n"[..])
    );
    // An interactive session: stdin and stdout stream both ways, a signal ends it.
    let mut session = vm.exec_session(&spec(&["cat"]), true, false).await.unwrap();
    session.write_stdin(b"ping\n").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), session.next_event())
        .await
        .expect("cat echoes while still running");
    assert_eq!(first, Some(ExecEvent::Stdout(b"ping\n".to_vec())));
    session.signal(15).await.unwrap();
    assert_eq!(session.next_event().await, Some(ExecEvent::Exit(128 + 15)));
    // On a terminal: the process has a controlling tty in the container's /dev/pts, the host
    // resizes it, and the terminal echoes input.
    let mut session = vm
        .exec_session(
            &spec(&[
                "sh",
                "-c",
                "read x; busybox stty size; busybox tty; echo got $x",
            ]),
            true,
            true,
        )
        .await
        .unwrap();
    session.resize(40, 123).await.unwrap();
    session.write_stdin(b"go\n").await.unwrap();
    let mut text = Vec::new();
    let code = loop {
        let Ok(event) = tokio::time::timeout(Duration::from_secs(30), session.next_event()).await
        else {
            panic!(
                "the tty session did not end; output: {:?}",
                String::from_utf8_lossy(&text)
            );
        };
        match event {
            Some(ExecEvent::Stdout(d)) => text.extend_from_slice(&d),
            Some(ExecEvent::Exit(c)) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    let text = String::from_utf8_lossy(&text);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text, "go\r\n40 123\r\n/dev/pts/0\r\ngot go\r\n");
    // The image's layers were merged (whiteout, opaque dir, second layer's files).
    let out = vm
        .exec(
            &[
                "sh",
                "-c",
                "cat /etc/motd; ls /data; test -e /etc/remove-me || echo removed",
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer 2\nnew\nremoved\n"
    );
    // The root filesystem is writable (tmpfs upper layer) and its own.
    let out = vm
        .exec(&["sh", "-c", "echo x > /written && cat /written"], None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"x\n");
    // Nothing of the VM's plumbing is visible: no disk or channel device, no agent binary.
    let out = vm
        .exec(
            &["sh", "-c", "ls /dev; test -e /dev/vda || test -e /dev/vport0p1 || test -e /init || echo isolated"],
            None,
        )
        .await
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.ends_with("isolated\n"), "{listing}");
    assert!(
        !listing.contains("vda") && !listing.contains("vport"),
        "{listing}"
    );
    // Root in the container is not root of the VM: no mounting (the agent's devices), no device
    // nodes, and no way to the agent: PID 1 is the container's own process (a PID namespace of
    // its own), no process of its /proc is the agent's, no /init behind any /proc/N/root.
    let out = vm
        .exec(
            &[
                "sh",
                "-c",
                "busybox tr '\\0' ' ' < /proc/1/cmdline; echo; \
                 for d in /proc/[0-9]*; do grep -q '^/init' $d/cmdline 2>/dev/null && echo agent-seen; \
                 test -e $d/root/init && echo reached-agent; done; \
                 busybox mount -t devtmpfs d /tmp 2>/dev/null && echo mounted; \
                 busybox mknod /x c 1 3 2>/dev/null && echo mknod; id -u",
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sleep 1000 \n0\n");
    // A program that does not exist is an error, not a hang.
    let err = vm.exec(&["/no/such/program"], None).await.unwrap_err();
    assert!(err.to_string().contains("/no/such/program"), "{err}");

    if let Some(kib) = rss_kib(pid) {
        println!(
            "micro-VM (TCG, 256 MiB guest): QEMU RSS {} MiB with an idle container",
            kib / 1024
        );
    }

    vm.kill(9).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("the container ends after SIGKILL")
        .unwrap();
    assert_eq!(code, 128 + 9);
    let recs = log_records(vm.log_path());
    assert_eq!(recs, [("stdout".to_owned(), "started".to_owned())]);
    assert!(
        vm.wait_vm_exit(Duration::from_secs(30)).await.unwrap(),
        "qemu still running after the container was killed"
    );
    vm.destroy().await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "qemu {pid} is still there"
    );
    assert_eq!(leftovers(&vm_dir), ["container.log"]);
}

/// Removes the test's network namespaces even when the test fails.
struct NetnsGuard(Vec<String>);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", ns])
                    .status();
            }
        }
    }
}

fn in_netns(ns: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn micro_vm_takes_the_pods_address_on_the_pod_network() {
    let Some(assets) = assets_or_skip("micro_vm_takes_the_pods_address_on_the_pod_network") else {
        return;
    };
    let (_d, data) = data_dir();
    let disk = busybox_disk(&data).await;
    let name = format!("nlmv-{}", std::process::id());
    let net = PodNetwork::new(
        &name,
        "nlbr0",
        Subnet {
            network: Ipv4Addr::new(10, 203, 41, 0),
            prefix: 24,
        },
        data.join("net"),
    );
    let att = net.attach("vm-pod").await.unwrap();
    let _guard = NetnsGuard(vec![att.netns.clone(), name.clone()]);
    let vmnet = microvm::plug_tap(&att).await.unwrap();
    assert_eq!(
        (vmnet.ip, vmnet.prefix, vmnet.gateway),
        (att.ip, 24, att.gateway)
    );
    assert_eq!(
        microvm::plug_tap(&att).await.unwrap(),
        vmnet,
        "plugging again (an agent restart) finds the same"
    );
    // The address moved to the guest: the pod's netns no longer answers for it.
    let addrs = in_netns(
        &att.netns,
        &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
    );
    assert!(String::from_utf8_lossy(&addrs.stdout).trim().is_empty());

    let mut config = VmConfig::new(assets, data.join("vmnet"));
    config.network = Some(vmnet);
    config.hostname = "web-0".into();
    let vm = MicroVm::boot(
        &config,
        &disk,
        &spec(&[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-vm > /www/index.html && exec httpd -f -p 80 -h /www",
        ]),
    )
    .await
    .unwrap();
    // From the pod network's namespace (where the host agent and other pods are), the VM's
    // web server answers on the pod's address.
    let url = format!("http://{}/", att.ip);
    let t0 = std::time::Instant::now();
    let body = loop {
        let out = in_netns(&name, &["curl", "-sS", "-m", "3", &url]);
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let inside = vm
                .exec(
                    &[
                        "sh",
                        "-c",
                        "ip addr; ip route; cat /proc/net/dev /proc/net/snmp /proc/net/tcp",
                    ],
                    None,
                )
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let bridge = in_netns(
                &name,
                &[
                    "sh",
                    "-c",
                    &format!(
                        "ip neigh; busybox ping -c 2 -W 2 {}; curl -sS -m 3 {url}",
                        att.ip
                    ),
                ],
            );
            println!(
                "container log: {:?} status {:?}",
                std::fs::read_to_string(vm.log_path()),
                vm.status().await
            );
            println!(
                "bridge netns: {} {}",
                String::from_utf8_lossy(&bridge.stdout),
                String::from_utf8_lossy(&bridge.stderr)
            );
            let pod_ns = in_netns(
                &att.netns,
                &[
                    "sh",
                    "-c",
                    "ip -s link; tc -s filter show dev eth0 ingress; tc -s filter show dev tap0 ingress",
                ],
            );
            panic!(
                "{url} never answered: {}\nconsole:\n{}\nguest: {inside:?}\npod netns: {}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(vm.console_path()).unwrap_or_default(),
                String::from_utf8_lossy(&pod_ns.stdout),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(body, "hello-from-vm\n");
    println!(
        "micro-VM reachable on the pod network after {:?}",
        t0.elapsed()
    );
    // Inside: the pod's address on eth0, loopback up, the default route via the bridge, and
    // the pod's hostname.
    let out = vm
        .exec(
            &[
                "sh",
                "-c",
                "ip -o -4 addr show dev eth0; ip route; wget -q -O - http://127.0.0.1/; hostname",
            ],
            None,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("inet {}/24", att.ip)), "{text}");
    assert!(
        text.contains(&format!("default via {}", att.gateway)),
        "{text}"
    );
    assert!(text.ends_with("hello-from-vm\nweb-0\n"), "{text}");

    vm.kill(9).await.unwrap();
    assert_eq!(vm.wait().await.unwrap(), 137);
    vm.destroy().await.unwrap();
    net.detach("vm-pod").await.unwrap();
    net.destroy().await.unwrap();
}

fn container_plan(name: &str, script: &str, mounts: &[(&str, &str, bool)]) -> ContainerPlan {
    ContainerPlan {
        name: name.into(),
        image: "busybox".into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        args: None,
        env: vec![("ROLE".into(), name.into())],
        working_dir: None,
        run_as_user: None,
        run_as_group: None,
        supplemental_groups: vec![],
        tty: false,
        stdin: false,
        stdin_once: false,
        cpu_millis: None,
        memory_bytes: None,
        ephemeral_storage_limit: None,
        volume_mounts: mounts
            .iter()
            .map(|(volume, path, read_only)| VolumeMount {
                volume: (*volume).into(),
                path: (*path).into(),
                read_only: *read_only,
                sub_path: None,
            })
            .collect(),
        pod_ip_env: vec!["MY_IP".into()],
    }
}

async fn until_stdout(pod: &MicroVmPod, container: &str, script: &str, want: &str) {
    let t0 = std::time::Instant::now();
    loop {
        let out = pod
            .exec(container, &["sh", "-c", script], None)
            .await
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{container}: {script}: {:?} != {want:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A whole pod in one VM: init containers in order, two containers each on its own disk and
/// root filesystem, an emptyDir they share, ConfigMap files, the pod's /etc files, hostname,
/// address and size.
#[tokio::test]
async fn a_whole_pod_runs_in_one_micro_vm() {
    let Some(assets) = assets_or_skip("a_whole_pod_runs_in_one_micro_vm") else {
        return;
    };
    let (_d, data) = data_dir();
    let layout = data.join("layout");
    busybox_layout(&layout, &["sh"]);
    let store = Arc::new(ImageStore::open(data.join("images"), StoreOptions::default()).unwrap());
    let src: Source = format!("oci:{}:latest", layout.display()).parse().unwrap();
    let img = store.pull(&src, &PullOptions::default()).await.unwrap();
    let images = BTreeMap::from([("busybox".to_owned(), img)]);
    let name = format!("nlmvp-{}", std::process::id());
    let net = PodNetwork::new(
        &name,
        "nlbr0",
        Subnet {
            network: Ipv4Addr::new(10, 203, 42, 0),
            prefix: 24,
        },
        data.join("net"),
    );
    let att = net.attach("pod-vm").await.unwrap();
    let _guard = NetnsGuard(vec![att.netns.clone(), name.clone()]);
    let host = Host {
        data_dir: data.clone(),
        images: store,
        network: None,
        pull: PullOptions::default(),
    };
    let shared = ("shared", "/shared", false);
    let plan = PodPlan {
        id: "team_web-0_u1".into(),
        name: "web-0".into(),
        namespace: "team".into(),
        hostname: "web-0".into(),
        init_containers: vec![
            container_plan(
                "init-a",
                "echo first >> /shared/order; echo init-a-out",
                &[shared],
            ),
            container_plan("init-b", "echo second >> /shared/order", &[shared]),
        ],
        containers: vec![
            container_plan(
                "writer",
                "echo from-writer > /shared/note; echo writer-done $MY_IP; exec sleep 1000",
                &[shared],
            ),
            container_plan(
                "web",
                "mkdir -p /www && echo hello-pod > /www/index.html && exec httpd -f -p 8080 -h /www",
                &[shared, ("cfg", "/etc/app", true)],
            ),
        ],
        volumes: vec![
            VolumePlan {
                name: "shared".into(),
                kind: VolumeKind::EmptyDir {
                    memory: false,
                    size_limit: None,
                },
            },
            VolumePlan {
                name: "cfg".into(),
                kind: VolumeKind::Files {
                    sources: vec!["configmap/cfg".into()],
                    default_mode: 0o644,
                },
            },
        ],
        share_process_namespace: false,
        grace_period_secs: 30,
        restart_policy: RestartPolicy::Never,
        size: Some(PodSize {
            cpu_millis: 2000,
            memory_bytes: 512 << 20,
        }),
        ephemeral_storage_bytes: 20 << 30,
    };
    let mut options = PodVmOptions::new(assets);
    options.volume_files = BTreeMap::from([(
        "cfg".to_owned(),
        BTreeMap::from([("app.conf".to_owned(), b"key=value\n".to_vec())]),
    )]);
    let pod = MicroVmPod::start(&host, &plan, &images, Some(&att), &options)
        .await
        .unwrap();
    let ip = att.ip;
    assert_eq!(pod.ip(), Some(ip));
    assert_eq!(
        pod.init_exits(),
        [("init-a".to_owned(), 0), ("init-b".to_owned(), 0)]
    );
    assert_eq!(pod.container_names(), ["writer", "web"]);
    assert_eq!(pod.vm_size(), (512, 2));

    // Init containers ran in order, before the others, into the shared emptyDir.
    until_stdout(&pod, "web", "cat /shared/order", "first\nsecond\n").await;
    until_stdout(&pod, "web", "cat /shared/note", "from-writer\n").await;
    // The pod's size: vCPUs and memory of the VM.
    let out = pod
        .exec(
            "web",
            &[
                "sh",
                "-c",
                "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo",
            ],
            None,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("2"), "{text}");
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((400 << 10..=512 << 10).contains(&kib), "{text}");
    // Hostname and the pod's /etc files; ConfigMap files read-only; env with the pod IP.
    let out = pod
        .exec(
            "web",
            &[
                "sh",
                "-c",
                "hostname; cat /etc/hostname /etc/resolv.conf /etc/app/app.conf; grep web-0 /etc/hosts; \
                 echo x > /etc/app/app.conf 2>/dev/null || echo read-only; echo $ROLE",
            ],
            None,
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        text,
        format!(
            "web-0\nweb-0\nsearch team.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n\
             key=value\n{ip}\tweb-0\nread-only\nweb\n"
        )
    );
    // Each container has its own root filesystem.
    pod.exec("web", &["touch", "/only-in-web"], None)
        .await
        .unwrap();
    let out = pod
        .exec(
            "writer",
            &[
                "sh",
                "-c",
                "test -e /only-in-web || echo separate; test -e /etc/app/app.conf || echo no-cfg",
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "separate\nno-cfg\n");
    // The pod's address answers from the pod network.
    let out = in_netns(
        &name,
        &["curl", "-sS", "-m", "5", &format!("http://{ip}:8080/")],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-pod\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Logs per container, init containers' included, in the usual place.
    let log_of = |c: &str| {
        sandbox::container::log_path(
            &sandbox::container::dir(&data, &sandbox::pod::container_id(&plan.id, c)),
            0,
        )
    };
    assert_eq!(
        log_records(&log_of("init-a")),
        [("stdout".to_owned(), "init-a-out".to_owned())]
    );
    assert_eq!(pod.log_path("writer"), Some(log_of("writer").as_path()));
    assert_eq!(
        log_records(&log_of("writer")),
        [("stdout".to_owned(), format!("writer-done {ip}"))]
    );
    // What a run writes outside its volumes is gone after a restart (a new container).
    let out = pod
        .exec("writer", &["touch", "/tmp/mark"], None)
        .await
        .unwrap();
    assert_eq!(out.code, 0);
    // One container ends; the others run on.
    pod.kill("writer", 9).await.unwrap();
    assert_eq!(pod.wait("writer").await.unwrap(), 137);
    assert_eq!(pod.exit_code("writer"), Some(137));
    assert_eq!(pod.exit_code("web"), None);
    // A restart runs it again, its output in the next log file; the previous log stays.
    let mut pod = pod;
    assert_eq!(pod.restart("writer").await.unwrap(), 1);
    assert!(pod.restart("web").await.is_err(), "web is still running");
    let t0 = std::time::Instant::now();
    let log1 = sandbox::container::log_path(
        &sandbox::container::dir(&data, &sandbox::pod::container_id(&plan.id, "writer")),
        1,
    );
    while !std::fs::read_to_string(&log1)
        .unwrap_or_default()
        .contains("writer-done")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no output after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pod.log_path("writer"), Some(log1.as_path()));
    assert_eq!(log_records(&log_of("writer")).len(), 1);
    assert_eq!(pod.exit_code("writer"), None);
    let out = pod
        .exec("writer", &["test", "-e", "/tmp/mark"], None)
        .await
        .unwrap();
    assert_eq!(
        out.code, 1,
        "the restarted container kept the last run's files"
    );
    // A root filesystem of its own, a new one; the last one (and the init containers') were
    // released without an error in the guest.
    let roots_at_boot = (plan.init_containers.len() + plan.containers.len()) as u32;
    assert!(root_number(&pod, "writer").await > roots_at_boot);
    assert!(root_number(&pod, "web").await <= roots_at_boot);
    let console = std::fs::read_to_string(pod.console_path()).unwrap_or_default();
    assert!(!console.contains("releasing root"), "{console}");
    let out = pod
        .exec("web", &["cat", "/shared/order"], None)
        .await
        .unwrap();
    assert_eq!(out.code, 0);

    let qemu = pod.pid().unwrap();
    pod.destroy().await.unwrap();
    assert!(!Path::new(&format!("/proc/{qemu}")).exists());
    assert!(!sandbox::pod::dir(&data, &plan.id).join("microvm").exists());
    assert!(log_of("web").exists(), "logs stay");
    net.detach("pod-vm").await.unwrap();
    net.destroy().await.unwrap();
}

/// The number of the guest's root filesystem container `name` runs in (`/pod/N`).
async fn root_number(pod: &MicroVmPod, name: &str) -> u32 {
    let out = pod
        .exec(name, &["cat", "/proc/mounts"], None)
        .await
        .unwrap();
    let mounts = String::from_utf8_lossy(&out.stdout).into_owned();
    mounts
        .lines()
        .find(|l| l.starts_with("overlay / "))
        .and_then(|l| l.split("lowerdir=/pod/").nth(1))
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no root overlay in {mounts}"))
}

/// An init container that fails ends the pod: the regular containers never start.
#[tokio::test]
async fn a_failing_init_container_ends_the_micro_vm_pod() {
    let Some(assets) = assets_or_skip("a_failing_init_container_ends_the_micro_vm_pod") else {
        return;
    };
    let (_d, data) = data_dir();
    let layout = data.join("layout");
    busybox_layout(&layout, &["sh"]);
    let store = Arc::new(ImageStore::open(data.join("images"), StoreOptions::default()).unwrap());
    let src: Source = format!("oci:{}:latest", layout.display()).parse().unwrap();
    let img = store.pull(&src, &PullOptions::default()).await.unwrap();
    let images = BTreeMap::from([("busybox".to_owned(), img)]);
    let host = Host {
        data_dir: data.clone(),
        images: store,
        network: None,
        pull: PullOptions::default(),
    };
    let plan = PodPlan {
        id: "team_bad_u2".into(),
        name: "bad".into(),
        namespace: "team".into(),
        hostname: "bad".into(),
        init_containers: vec![container_plan("setup", "echo failing >&2; exit 4", &[])],
        containers: vec![container_plan("main", "echo never", &[])],
        volumes: vec![],
        share_process_namespace: false,
        grace_period_secs: 30,
        restart_policy: RestartPolicy::Never,
        size: None,
        ephemeral_storage_bytes: 20 << 30,
    };
    let err = MicroVmPod::start(&host, &plan, &images, None, &PodVmOptions::new(assets))
        .await
        .err()
        .expect("the pod fails");
    assert!(
        matches!(&err, microvm::MicroVmError::InitContainer { name, code: 4, .. } if name == "setup"),
        "{err}"
    );
    let log_of = |c: &str| {
        sandbox::container::log_path(
            &sandbox::container::dir(&data, &sandbox::pod::container_id(&plan.id, c)),
            0,
        )
    };
    assert_eq!(
        log_records(&log_of("setup")),
        [("stderr".to_owned(), "failing".to_owned())]
    );
    assert!(!log_of("main").exists(), "main never started");
    assert!(!sandbox::pod::dir(&data, &plan.id).join("microvm").exists());
}

/// The VM outlives the agent's handle: detached, then taken back by a new handle (an agent
/// restart), with the container's output and control intact.
#[tokio::test]
async fn a_detached_micro_vm_pod_is_taken_back() {
    let Some(assets) = assets_or_skip("a_detached_micro_vm_pod_is_taken_back") else {
        return;
    };
    let (_d, data) = data_dir();
    let layout = data.join("layout");
    busybox_layout(&layout, &["sh"]);
    let store = Arc::new(ImageStore::open(data.join("images"), StoreOptions::default()).unwrap());
    let src: Source = format!("oci:{}:latest", layout.display()).parse().unwrap();
    let img = store.pull(&src, &PullOptions::default()).await.unwrap();
    let images = BTreeMap::from([("busybox".to_owned(), img)]);
    let host = Host {
        data_dir: data.clone(),
        images: store,
        network: None,
        pull: PullOptions::default(),
    };
    let plan = PodPlan {
        id: "team_ticker_u3".into(),
        name: "ticker".into(),
        namespace: "team".into(),
        hostname: "ticker".into(),
        init_containers: vec![],
        containers: vec![
            container_plan(
                "tick",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
                &[],
            ),
            container_plan("done", "echo bye; exit 6", &[]),
        ],
        volumes: vec![],
        share_process_namespace: false,
        grace_period_secs: 30,
        restart_policy: RestartPolicy::Never,
        size: None,
        ephemeral_storage_bytes: 20 << 30,
    };
    let other = PodPlan {
        id: "team_none_u4".into(),
        ..plan.clone()
    };
    assert!(MicroVmPod::reattach(&host, &other).await.unwrap().is_none());
    let pod = MicroVmPod::start(&host, &plan, &images, None, &PodVmOptions::new(assets))
        .await
        .unwrap();
    let qemu = pod.pid().unwrap();
    let log = pod.log_path("tick").unwrap().to_owned();
    pod.exec("tick", &["true"], None).await.unwrap();
    // Ticking before the handle lets go (on a loaded host TCG may not have run it yet: a frame
    // half read when the handle goes is lost with it).
    let t0 = std::time::Instant::now();
    while log_records(&log).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no tick");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pod.detach().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        Path::new(&format!("/proc/{qemu}")).exists(),
        "QEMU outlives the handle"
    );
    let before = log_records(&log).len();

    let pod = MicroVmPod::reattach(&host, &plan)
        .await
        .unwrap()
        .expect("the VM is found again");
    assert_eq!(pod.pid(), Some(qemu));
    assert_eq!(pod.wait("done").await.unwrap(), 6);
    let out = pod
        .exec("tick", &["sh", "-c", "echo $ROLE"], None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"tick\n");
    // The output goes on into the same log, in order, nothing lost.
    let t0 = std::time::Instant::now();
    while log_records(&log).len() < before + 10 {
        assert!(t0.elapsed() < Duration::from_secs(30), "the log stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines: Vec<String> = log_records(&log).into_iter().map(|(_, t)| t).collect();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &format!("tick {i}"), "{lines:?}");
    }
    pod.kill("tick", 9).await.unwrap();
    assert_eq!(pod.wait("tick").await.unwrap(), 137);
    pod.destroy().await.unwrap();
    // QEMU is gone (or a zombie left to its parent: here the test, which started it).
    let stat = std::fs::read_to_string(format!("/proc/{qemu}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')),
        "{stat}"
    );
    assert!(MicroVmPod::reattach(&host, &plan).await.unwrap().is_none());
}

/// A container over its memory limit is killed by the guest's OOM killer and reported so.
#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed() {
    let Some(assets) = assets_or_skip("a_container_over_its_memory_limit_is_oom_killed") else {
        return;
    };
    let (_d, data) = data_dir();
    let disk = busybox_disk(&data).await;
    let config = VmConfig::new(assets, data.join("vm-oom"));
    let mut hog = spec(&[
        "sh",
        "-c",
        "echo start; exec dd if=/dev/zero of=/big bs=1M count=200",
    ]);
    hog.memory_limit_bytes = Some(32 << 20);
    let vm = MicroVm::boot(&config, &disk, &hog).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("the hog ends")
        .unwrap();
    assert_eq!(
        (code, vm.oom_killed()),
        (137, true),
        "{:?}\n{}",
        log_records(vm.log_path()),
        std::fs::read_to_string(vm.console_path()).unwrap_or_default()
    );
    vm.destroy().await.unwrap();
}

/// Boot figures: `cargo test -p sandbox --test microvm -- --ignored --nocapture boot_figures`.
#[tokio::test]
#[ignore]
async fn boot_figures() {
    let Some(assets) = assets_or_skip("boot_figures") else {
        return;
    };
    let runs: usize = std::env::var("MICROVM_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (_d, data) = data_dir();
    let disk = busybox_disk(&data).await;
    let mut firsts = Vec::new();
    for i in 0..runs {
        let config = VmConfig::new(assets.clone(), data.join(format!("b{i}")));
        let mut vm = MicroVm::boot(&config, &disk, &spec(&["echo", "hi"]))
            .await
            .unwrap();
        assert_eq!(vm.wait().await.unwrap(), 0);
        let t = vm.boot_times();
        println!(
            "boot {i}: ready {:?}, first output {:?}",
            t.to_ready, t.to_first_output
        );
        firsts.push(t.to_first_output.unwrap());
        vm.wait_vm_exit(Duration::from_secs(30)).await.unwrap();
        vm.destroy().await.unwrap();
    }
    firsts.sort();
    println!(
        "QEMU start -> first container output over {runs} boots: min {:?}, median {:?}, max {:?}",
        firsts[0],
        firsts[runs / 2],
        firsts[runs - 1]
    );
}

#[tokio::test]
async fn attached_container_gets_stdin_and_a_terminal() {
    let Some(assets) = assets_or_skip("attached_container_gets_stdin_and_a_terminal") else {
        return;
    };
    let (_d, data) = data_dir();
    let disk = busybox_disk(&data).await;
    // stdin: what we write reaches the container, its output streams back and is logged.
    let config = VmConfig::new(assets.clone(), data.join("vm-attached"));
    let (vm, session) = MicroVm::boot_attached(
        &config,
        &disk,
        &spec(&[
            "sh",
            "-c",
            "read x; echo \"got $x\"; echo e >&2; cat; exit 4",
        ]),
        true,
        false,
    )
    .await
    .unwrap();
    let (input, mut events) = session.split();
    input.write_stdin(b"ping\n").await.unwrap();
    // The answer on stdout comes before we write more; stdout and stderr are two streams, so
    // the "e" on stderr may come first.
    let mut err = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .unwrap();
        match event {
            Some(ExecEvent::Stderr(d)) => err.extend(d),
            other => {
                assert_eq!(other, Some(ExecEvent::Stdout(b"got ping\n".to_vec())));
                break;
            }
        }
    }
    input.write_stdin(b"rest").await.unwrap();
    input.close_stdin().await.unwrap();
    let (mut out, mut code) = (Vec::new(), None);
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .unwrap()
    {
        match e {
            ExecEvent::Stdout(d) => out.extend(d),
            ExecEvent::Stderr(d) => err.extend(d),
            ExecEvent::Exit(c) => code = Some(c),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (code, &out[..], &err[..]),
        (Some(4), &b"rest"[..], &b"e\n"[..])
    );
    assert_eq!(vm.wait().await.unwrap(), 4);
    let recs = log_records(vm.log_path());
    assert!(
        recs.contains(&("stdout".into(), "got ping".into())),
        "{recs:?}"
    );
    vm.destroy().await.unwrap();

    // tty: the container's stdin is a terminal; resizes reach it.
    let config = VmConfig::new(assets, data.join("vm-tty"));
    let (vm, session) = MicroVm::boot_attached(
        &config,
        &disk,
        &spec(&[
            "sh",
            "-c",
            "test -t 0 && echo is-a-tty; read x; echo \"got $x\"; exit 5",
        ]),
        true,
        true,
    )
    .await
    .unwrap();
    let (input, mut events) = session.split();
    input.resize(40, 100).await.unwrap();
    input.write_stdin(b"pong\n").await.unwrap();
    let (mut out, mut code) = (Vec::new(), None);
    while let Some(e) = tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .unwrap()
    {
        match e {
            ExecEvent::Stdout(d) => out.extend(d),
            ExecEvent::Exit(c) => code = Some(c),
            other => panic!("{other:?}"),
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert_eq!(code, Some(5), "{out}");
    assert!(
        out.contains("is-a-tty") && out.contains("got pong"),
        "{out}"
    );
    vm.destroy().await.unwrap();
}

/// Busybox pod `id` of two long-running containers, `a` (uid 1000, supplementary groups, a CPU
/// limit of 200m) and `b`, with or without a shared process namespace.
async fn two_container_pod(
    assets: VmAssets,
    data: &Path,
    id: &str,
    share_process_namespace: bool,
) -> MicroVmPod {
    let layout = data.join("layout");
    busybox_layout(&layout, &["sh"]);
    let store = Arc::new(ImageStore::open(data.join("images"), StoreOptions::default()).unwrap());
    let src: Source = format!("oci:{}:latest", layout.display()).parse().unwrap();
    let img = store.pull(&src, &PullOptions::default()).await.unwrap();
    let images = BTreeMap::from([("busybox".to_owned(), img)]);
    let host = Host {
        data_dir: data.to_path_buf(),
        images: store,
        network: None,
        pull: PullOptions::default(),
    };
    let mut a = container_plan("a", "exec sleep 1001", &[]);
    a.run_as_user = Some(1000);
    a.run_as_group = Some(1000);
    a.supplemental_groups = vec![5, 4321];
    a.cpu_millis = Some(200);
    let plan = PodPlan {
        id: id.into(),
        name: "pair".into(),
        namespace: "team".into(),
        hostname: "pair".into(),
        init_containers: vec![],
        containers: vec![a, container_plan("b", "sleep 1002 & wait $!", &[])],
        volumes: vec![],
        share_process_namespace,
        grace_period_secs: 30,
        restart_policy: RestartPolicy::Never,
        size: Some(PodSize {
            cpu_millis: 1000,
            memory_bytes: 256 << 20,
        }),
        ephemeral_storage_bytes: 20 << 30,
    };
    MicroVmPod::start(&host, &plan, &images, None, &PodVmOptions::new(assets))
        .await
        .unwrap()
}

/// `script` in container `name` as root (uid 0): its stdout, checked for exit code 0.
async fn root_sh(pod: &MicroVmPod, name: &str, script: &str) -> String {
    let spec = ContainerSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        uid: 0,
        gid: 0,
        ..pod.spec_of(name).unwrap()
    };
    let out = pod
        .exec_session(name, &spec, false, false)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        out.code,
        0,
        "{name}: {script}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every process a container sees: `pid args` a line, from its /proc.
const PROCESSES: &str =
    "for d in /proc/[0-9]*; do echo \"${d#/proc/} $(busybox tr '\\0' ' ' < $d/cmdline)\"; done";

/// Kubernetes' pod semantics in the VM: each container in a PID namespace of its own (the
/// guest agent in none of them, `kill -9 -1` harms no sibling), one IPC namespace and one
/// /dev/shm for the pod, supplementary groups, and a container's CPU limit.
#[tokio::test]
async fn containers_of_a_micro_vm_pod_have_their_own_pid_namespace_and_share_ipc() {
    let Some(assets) =
        assets_or_skip("containers_of_a_micro_vm_pod_have_their_own_pid_namespace_and_share_ipc")
    else {
        return;
    };
    let (_d, data) = data_dir();
    let pod = two_container_pod(assets, &data, "team_pair_u7", false).await;

    // A sees its own process (as PID 1) and its exec session, nothing of B nor of the agent.
    let seen = root_sh(&pod, "a", PROCESSES).await;
    assert!(seen.lines().any(|l| l.trim() == "1 sleep 1001"), "{seen}");
    assert!(!seen.contains("sleep 1002"), "A sees B's process: {seen}");
    assert!(!seen.contains("/init"), "A sees the guest agent: {seen}");
    assert!(
        !seen.contains("nodeless"),
        "A sees the pause process: {seen}"
    );
    let seen_b = root_sh(&pod, "b", PROCESSES).await;
    assert!(
        seen_b
            .lines()
            .any(|l| l.trim() == "1 sh -c sleep 1002 & wait $!"),
        "{seen_b}"
    );
    assert!(seen_b.contains("sleep 1002"), "{seen_b}");
    assert!(
        !seen_b.contains("sleep 1001"),
        "B sees A's process: {seen_b}"
    );
    // `ps` agrees.
    let ps = root_sh(&pod, "a", "busybox ps -o pid,args").await;
    assert!(
        ps.contains("sleep 1001") && !ps.contains("sleep 1002"),
        "{ps}"
    );

    // Killing everything it can from A leaves B, A's own PID 1 and the agent running.
    root_sh(&pod, "a", "kill -9 -1; echo done").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pod.running("b"), "B was killed from A");
    assert!(pod.running("a"), "A's PID 1 was killed from inside");
    let seen_b = root_sh(&pod, "b", PROCESSES).await;
    assert!(seen_b.contains("sleep 1002"), "{seen_b}");

    // One IPC namespace and one /dev/shm for the pod.
    let ipc_a = root_sh(&pod, "a", "busybox readlink /proc/self/ns/ipc").await;
    let ipc_b = root_sh(&pod, "b", "busybox readlink /proc/self/ns/ipc").await;
    assert!(ipc_a.starts_with("ipc:["), "{ipc_a}");
    assert_eq!(ipc_a, ipc_b);
    root_sh(&pod, "a", "echo from-a > /dev/shm/note").await;
    assert_eq!(root_sh(&pod, "b", "cat /dev/shm/note").await, "from-a\n");
    let pid_a = root_sh(&pod, "a", "busybox readlink /proc/self/ns/pid").await;
    let pid_b = root_sh(&pod, "b", "busybox readlink /proc/self/ns/pid").await;
    assert_ne!(pid_a, pid_b);

    // The pod's supplementary groups, besides the container's user and group.
    let out = pod.exec("a", &["id", "-u"], None).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1000\n");
    let out = pod.exec("a", &["id", "-G"], None).await.unwrap();
    let mut groups: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort();
    assert_eq!(groups, [5, 1000, 4321]);
    let out = pod.exec("b", &["id", "-G"], None).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");

    // A's CPU limit (200m): a busy loop gets about a fifth of a CPU; B's is not limited.
    let busy = "sh -c 'while :; do :; done' & p=$!; sleep 3; \
                set -- $(busybox cut -d' ' -f14,15 /proc/$p/stat); kill $p; echo $(($1 + $2))";
    let ticks = |s: String| s.trim().parse::<u64>().unwrap();
    let limited = ticks(root_sh(&pod, "a", busy).await);
    let free = ticks(root_sh(&pod, "b", busy).await);
    println!("CPU ticks in 3 s of a busy loop: A (200m limit) {limited}, B (no limit) {free}");
    // 3 s are 300 ticks; 200m allows 60 of them.
    assert!(
        limited <= 100,
        "A used {limited} ticks in 3 s under a 200m limit"
    );
    assert!(
        free > limited,
        "B (no limit) used {free} ticks, A {limited}"
    );

    // The stop signal goes to the container's main process only, as kubelet sends it: B's
    // shell (PID 1 of its namespace, no handler) ignores SIGTERM and B runs on. SIGKILL
    // reaches every process of it, as `kill --all` of the OCI runtimes.
    pod.kill("b", 15).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(pod.running("b"), "SIGTERM went past B's main process");
    pod.kill("b", 9).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(30), pod.wait("b"))
        .await
        .expect("B ends after SIGKILL")
        .unwrap();
    assert_eq!(code, 128 + 9);
    assert!(pod.running("a"));
    pod.destroy().await.unwrap();
}

/// With `shareProcessNamespace` the pod's containers see each other's processes; PID 1 is the
/// pause process, never the guest agent.
#[tokio::test]
async fn a_micro_vm_pod_can_share_its_process_namespace() {
    let Some(assets) = assets_or_skip("a_micro_vm_pod_can_share_its_process_namespace") else {
        return;
    };
    let (_d, data) = data_dir();
    let pod = two_container_pod(assets, &data, "team_pair_u8", true).await;
    let seen = root_sh(&pod, "a", PROCESSES).await;
    assert!(seen.contains("sleep 1001"), "{seen}");
    assert!(
        seen.contains("sleep 1002"),
        "A does not see B's process: {seen}"
    );
    assert!(!seen.contains("/init"), "A sees the guest agent: {seen}");
    let one = seen.lines().find(|l| l.starts_with("1 ")).unwrap_or("");
    assert!(one.contains("--nodeless-pause"), "PID 1 is {one:?}: {seen}");
    let pid_a = root_sh(&pod, "a", "busybox readlink /proc/self/ns/pid").await;
    let pid_b = root_sh(&pod, "b", "busybox readlink /proc/self/ns/pid").await;
    assert_eq!(pid_a, pid_b);
    // PID 1 cannot be killed from inside; the containers run on.
    let _ = pod.exec("b", &["kill", "-9", "1"], None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pod.running("a") && pod.running("b"));
    let seen = root_sh(&pod, "b", PROCESSES).await;
    assert!(seen.contains("sleep 1001"), "{seen}");
    pod.destroy().await.unwrap();
}

/// A host with the busybox image pulled, on no network.
async fn busybox_pod_host(data: &Path) -> (Host, BTreeMap<String, sandbox::image::Image>) {
    let layout = data.join("layout");
    busybox_layout(&layout, &["sh"]);
    let store = Arc::new(ImageStore::open(data.join("images"), StoreOptions::default()).unwrap());
    let src: Source = format!("oci:{}:latest", layout.display()).parse().unwrap();
    let img = store.pull(&src, &PullOptions::default()).await.unwrap();
    let images = BTreeMap::from([("busybox".to_owned(), img)]);
    let host = Host {
        data_dir: data.to_path_buf(),
        images: store,
        network: None,
        pull: PullOptions::default(),
    };
    (host, images)
}

fn pod_plan(id: &str, containers: Vec<ContainerPlan>, size: Option<PodSize>) -> PodPlan {
    PodPlan {
        id: id.into(),
        name: "p".into(),
        namespace: "team".into(),
        hostname: "p".into(),
        init_containers: vec![],
        containers,
        volumes: vec![],
        share_process_namespace: false,
        grace_period_secs: 30,
        restart_policy: RestartPolicy::Never,
        size,
        ephemeral_storage_bytes: 20 << 30,
    }
}

/// The directories a host cgroup (relative to every hierarchy's root) has on this host.
fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    ["cpu", "cpuacct", "unified", ""]
        .iter()
        .map(|h| Path::new("/sys/fs/cgroup").join(h).join(rel))
        .filter(|d| d.is_dir())
        .collect()
}

/// The VM's vCPU is a whole CPU, but QEMU's host cgroup holds it to the pod's 250m: a
/// container spinning flat out costs the host about a quarter of a core. The cgroup stays
/// with the VM across an agent restart and goes with it.
#[tokio::test]
async fn a_micro_vm_pod_is_held_to_its_cpu_size_on_the_host() {
    let Some(assets) = assets_or_skip("a_micro_vm_pod_is_held_to_its_cpu_size_on_the_host") else {
        return;
    };
    let (_d, data) = data_dir();
    let (host, images) = busybox_pod_host(&data).await;
    let plan = pod_plan(
        "team_spin_u9",
        vec![container_plan("spin", "while :; do :; done", &[])],
        Some(PodSize {
            cpu_millis: 250,
            memory_bytes: 256 << 20,
        }),
    );
    let pod = MicroVmPod::start(&host, &plan, &images, None, &PodVmOptions::new(assets))
        .await
        .unwrap();
    assert_eq!(pod.vm_size().1, 1, "250m is one whole vCPU");
    let cgroup = pod
        .cgroup()
        .expect("a sized pod VM has a host cgroup")
        .to_owned();
    assert!(!cgroup_dirs(&cgroup).is_empty());
    let qemu = pod.pid().unwrap();
    let in_cgroup = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains(":cpu:") && l.ends_with(&cgroup)
                    || l.starts_with("0::") && l.ends_with(&cgroup)
            })
    };
    assert!(in_cgroup(qemu), "QEMU runs in {cgroup}");
    pod.exec("spin", &["true"], None).await.unwrap();

    // The share of a host core QEMU used over 5 s, by the cgroup's accounting and by QEMU's
    // own CPU time (utime + stime).
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let hz = 100.0; // USER_HZ
    let usage = || sandbox::microvm::cgroup::VmCgroup::usage_ns(&cgroup).unwrap();
    let (u0, t0, w0) = (usage(), ticks(qemu), std::time::Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let wall = w0.elapsed().as_secs_f64();
    let by_cgroup = (usage() - u0) as f64 / 1e9 / wall;
    let by_stat = (ticks(qemu) - t0) as f64 / hz / wall;
    println!("spinning 250m pod VM: {by_cgroup:.3} of a core (cgroup), {by_stat:.3} (QEMU's stat)");
    for share in [by_cgroup, by_stat] {
        assert!(share > 0.05 && share <= 0.4, "{by_cgroup} {by_stat}");
    }

    // An agent restart: the VM and its cgroup carry on; the new handle removes it.
    pod.detach().unwrap();
    assert!(
        !cgroup_dirs(&cgroup).is_empty(),
        "the cgroup outlives the handle"
    );
    assert!(in_cgroup(qemu));
    let pod = MicroVmPod::reattach(&host, &plan)
        .await
        .unwrap()
        .expect("the VM is found again");
    assert_eq!(pod.cgroup(), Some(cgroup.as_str()));
    pod.destroy().await.unwrap();
    assert_eq!(
        cgroup_dirs(&cgroup),
        Vec::<PathBuf>::new(),
        "the cgroup goes with the VM"
    );
}

/// A container's `ephemeral-storage` limit is the size of its writable layer in the guest: a
/// write past it fails (ENOSPC); a container without a limit writes on.
#[tokio::test]
async fn ephemeral_storage_limits_the_writable_layer_in_a_micro_vm() {
    let Some(assets) = assets_or_skip("ephemeral_storage_limits_the_writable_layer_in_a_micro_vm")
    else {
        return;
    };
    let (_d, data) = data_dir();
    let (host, images) = busybox_pod_host(&data).await;
    let mut small = container_plan("small", "exec sleep 1001", &[]);
    small.ephemeral_storage_limit = Some(4 << 20);
    let plan = pod_plan(
        "team_disk_u10",
        vec![small, container_plan("free", "exec sleep 1002", &[])],
        None,
    );
    let pod = MicroVmPod::start(&host, &plan, &images, None, &PodVmOptions::new(assets))
        .await
        .unwrap();
    let write = "dd if=/dev/zero of=/big bs=1M count=8; echo code=$?; wc -c < /big";
    let run = |name: &'static str| {
        let pod = &pod;
        async move {
            let out = pod.exec(name, &["sh", "-c", write], None).await.unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let mut lines = stdout.lines();
            let code = lines.next().unwrap_or_default().to_owned();
            let size: u64 = lines.next().unwrap_or_default().trim().parse().unwrap();
            (code, size, stderr)
        }
    };
    let (code, size, stderr) = run("small").await;
    println!("4Mi limit: {code}, {size} bytes, {}", stderr.trim());
    assert_ne!(code, "code=0", "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(size <= 4 << 20, "{size} bytes written past a 4Mi limit");
    let (code, size, stderr) = run("free").await;
    assert_eq!((code.as_str(), size), ("code=0", 8 << 20), "{stderr}");
    pod.destroy().await.unwrap();
}

/// `nodeless sandbox run`'s single container has a writable layer of a set size (a default
/// cap when none is given, see `microvm::writable_cap`): a write past it fails (ENOSPC).
#[tokio::test]
async fn the_single_containers_writable_layer_is_capped() {
    let Some(assets) = assets_or_skip("the_single_containers_writable_layer_is_capped") else {
        return;
    };
    let (_d, data) = data_dir();
    let disk = busybox_disk(&data).await;
    let mut config = VmConfig::new(assets, data.join("vm-cap"));
    config.writable_limit = Some(6 << 20);
    let vm = MicroVm::boot(&config, &disk, &spec(&["sleep", "1000"]))
        .await
        .unwrap();
    let out = vm
        .exec(
            &["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=12; echo code=$?; wc -c < /big; df -k / | tail -n1"],
            None,
        )
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("6Mi cap: {stdout} {}", stderr.trim());
    let mut lines = stdout.lines();
    assert_ne!(lines.next(), Some("code=0"), "{stdout} {stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    let size: u64 = lines.next().unwrap_or_default().trim().parse().unwrap();
    assert!(size <= 6 << 20, "{size} bytes written past a 6Mi cap");
    // The root's size (the writable layer's, which overlayfs reports) is the cap.
    let total_kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert_eq!(
        total_kib,
        microvm::writable_cap(config.memory_mib, config.writable_limit) >> 10
    );
    vm.destroy().await.unwrap();
}

/// The handle dies without detaching (an agent killed) while a container writes and before it
/// ends: the next handle gets the output the dead one never logged (here an unterminated line
/// it held) once and in order, and the container's end with the time it happened (by the
/// guest's clock), not when the new handle learned of it.
#[tokio::test]
async fn output_and_end_time_survive_a_handle_that_died() {
    let Some(assets) = assets_or_skip("output_and_end_time_survive_a_handle_that_died") else {
        return;
    };
    let (_d, data) = data_dir();
    let (host, images) = busybox_pod_host(&data).await;
    let script = "echo start $(cut -d' ' -f1 /proc/uptime); i=0; \
        while [ $i -lt 2000 ]; do echo n $i; i=$((i+1)); done; \
        printf half-; sleep 2; echo line; sleep 3; \
        echo end $(cut -d' ' -f1 /proc/uptime); exit 7";
    let plan = pod_plan(
        "team_resume_u11",
        vec![container_plan("w", script, &[])],
        None,
    );
    let mut pod = MicroVmPod::start(&host, &plan, &images, None, &PodVmOptions::new(assets))
        .await
        .unwrap();
    let log = pod.log_path("w").unwrap().to_owned();
    let t0 = std::time::Instant::now();
    while !log_records(&log).iter().any(|(_, t)| t == "n 1999") {
        assert!(t0.elapsed() < Duration::from_secs(60), "no output");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // "half-" reaches the handle, which holds it (no newline yet); then the handle dies.
    tokio::time::sleep(Duration::from_millis(700)).await;
    pod.outlive_handle();
    drop(pod);
    let died = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(9)).await;

    let pod = MicroVmPod::reattach(&host, &plan)
        .await
        .unwrap()
        .expect("the VM is found again");
    let code = tokio::time::timeout(Duration::from_secs(30), pod.wait("w"))
        .await
        .expect("the end is reported")
        .unwrap();
    assert_eq!(code, 7);
    let text = std::fs::read(&log).unwrap();
    let recs: Vec<sandbox::logs::Record> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| sandbox::logs::parse_line(l).unwrap())
        .collect();
    let lines: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8_lossy(&r.text).into_owned())
        .collect();
    assert_eq!(
        lines.len(),
        2003,
        "{:?}",
        &lines[lines.len().saturating_sub(5)..]
    );
    for (i, l) in lines[1..2001].iter().enumerate() {
        assert_eq!(l, &format!("n {i}"));
    }
    assert_eq!(lines[2001], "half-line", "{:?}", &lines[1995..]);
    let uptime = |l: &str, word: &str| -> f64 {
        l.strip_prefix(word)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{l:?}"))
    };
    let (u0, u1) = (uptime(&lines[0], "start "), uptime(&lines[2002], "end "));
    // The end by the host's clock: the first line was logged as it was written.
    let first: jiff::Timestamp = recs[0].time.parse().unwrap();
    let ended = std::time::SystemTime::from(first) + Duration::from_secs_f64(u1 - u0);
    let finished = pod.finished_at("w").expect("an end time");
    let off = match finished.duration_since(ended) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    println!(
        "finished {off:?} off the end; the handle died {:?} before it",
        ended.duration_since(died)
    );
    assert!(
        off < Duration::from_secs(2),
        "finished {finished:?}, ended {ended:?}"
    );
    assert!(
        finished > died + Duration::from_secs(2),
        "it ended seconds after the handle died"
    );
    pod.destroy().await.unwrap();
}

/// The pod's storage as kubelet counts it comes from the guest (the writable layers and
/// emptyDirs are there): each container's writable layer (plus its logs), each emptyDir, the
/// total; what the agent's eviction checks compare with the pod's limits (here the total is
/// over the 4Mi the one limited container gives the pod: kubelet evicts such a pod).
#[tokio::test]
async fn a_micro_vm_pods_storage_is_measured_in_the_guest() {
    let Some(assets) = assets_or_skip("a_micro_vm_pods_storage_is_measured_in_the_guest") else {
        return;
    };
    let (_d, data) = data_dir();
    let (host, images) = busybox_pod_host(&data).await;
    let mut small = container_plan(
        "small",
        "exec sleep 1001",
        &[("scratch", "/scratch", false)],
    );
    small.ephemeral_storage_limit = Some(4 << 20);
    let mut plan = pod_plan(
        "team_usage_u12",
        vec![
            small,
            container_plan("free", "exec sleep 1002", &[("scratch", "/scratch", false)]),
        ],
        None,
    );
    plan.volumes = vec![
        VolumePlan {
            name: "scratch".into(),
            kind: VolumeKind::EmptyDir {
                memory: false,
                size_limit: None,
            },
        },
        VolumePlan {
            name: "unused".into(),
            kind: VolumeKind::EmptyDir {
                memory: false,
                size_limit: None,
            },
        },
    ];
    let pod = MicroVmPod::start(&host, &plan, &images, None, &PodVmOptions::new(assets))
        .await
        .unwrap();
    let before = pod.storage_usage(&plan).await.unwrap();
    println!("before: {before:?}");
    for (name, script) in [
        ("small", "dd if=/dev/zero of=/layer bs=1M count=2"),
        ("free", "dd if=/dev/zero of=/scratch/data bs=1M count=3"),
    ] {
        let out = pod.exec(name, &["sh", "-c", script], None).await.unwrap();
        assert_eq!(out.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    }
    let after = pod.storage_usage(&plan).await.unwrap();
    println!("after: {after:?}");
    let small = after.containers["small"] - before.containers["small"];
    assert!((2 << 20..3 << 20).contains(&small), "{small}");
    assert!(after.containers["free"] - before.containers["free"] < 1 << 20);
    let scratch = after.volumes["scratch"] - before.volumes["scratch"];
    assert!((3 << 20..4 << 20).contains(&scratch), "{scratch}");
    assert_eq!(after.volumes["unused"], 0);
    assert_eq!(
        after.total,
        after.containers.values().sum::<u64>() + after.volumes.values().sum::<u64>()
    );
    assert!(after.total > 4 << 20, "over the pod's 4Mi limit");
    pod.destroy().await.unwrap();
}
