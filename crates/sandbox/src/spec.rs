//! From what a container asks for (a Kubernetes-like [`ContainerConfig`]) and what its image
//! says ([`ImageConfig`]) to an OCI runtime spec (`config.json`). Pure: no IO, tested with values.
//! Command rules follow Kubernetes: `command` replaces the image's Entrypoint, `args` its Cmd, and
//! a `command` without `args` drops the image's Cmd.

use std::path::PathBuf;

use serde_json::json;

use crate::image::manifest::ImageConfig;

/// Default PATH when neither the image nor the container sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    pub name: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    pub tty: bool,
    pub resources: Resources,
    pub mounts: Vec<Mount>,
}

/// Limits enforced on one container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU limit in thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// What the pod sandbox gives every container in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxContext {
    pub hostname: String,
    /// Network namespace to join (`None`: a fresh, empty one).
    pub netns: Option<PathBuf>,
    /// IPC namespace to join.
    pub ipcns: Option<PathBuf>,
    /// PID namespace to join (shareProcessNamespace). For runsc, a name the sandbox's root
    /// container carries too: the sentry matches the paths, and its containers with the same
    /// one share its PID namespace.
    pub pidns: Option<PathBuf>,
    /// The pod's /dev/shm, shared by its containers (`None`: a tmpfs of the container's own).
    pub shm: Option<PodShm>,
    /// Cgroup path of this container (relative to the cgroup root).
    pub cgroups_path: Option<String>,
    /// Extra annotations (runsc reads its sandbox/container roles from these).
    pub annotations: Vec<(String, String)>,
}

/// A /dev/shm shared by the containers of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodShm {
    /// A host directory (a tmpfs mounted there), bind-mounted.
    Host(PathBuf),
    /// A tmpfs the gVisor sentry keeps for the whole sandbox: runsc's pod mount hint for this
    /// source (on the sandbox's root container) names it, and a `tmpfs` mount of the source
    /// in any of the sandbox's containers is that one tmpfs.
    Sentry(PathBuf),
}

impl SandboxContext {
    /// Whether the container joins a pod sandbox started before it (gVisor's pause), rather
    /// than being the root of a sandbox of its own.
    pub fn joins_sandbox(&self) -> bool {
        self.annotations
            .iter()
            .any(|(k, _)| k == crate::runtime::SANDBOX_ID)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error(
        "container {0:?} has no command: the image sets no Entrypoint/Cmd and the pod gives none"
    )]
    NoCommand(String),
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("generated spec is not a valid OCI runtime spec: {0}")]
    Invalid(String),
}

/// The argv Kubernetes would run.
pub fn argv(c: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let rc = image.config.clone().unwrap_or_default();
    let entry = rc.entrypoint.unwrap_or_default();
    let cmd = rc.cmd.unwrap_or_default();
    let v: Vec<String> = match (&c.command, &c.args) {
        (Some(command), Some(args)) => command.iter().chain(args).cloned().collect(),
        (Some(command), None) => command.clone(),
        (None, Some(args)) => entry.into_iter().chain(args.iter().cloned()).collect(),
        (None, None) => entry.into_iter().chain(cmd).collect(),
    };
    if v.is_empty() {
        return Err(SpecError::NoCommand(c.name.clone()));
    }
    Ok(v)
}

/// Image env, then container env (later wins), PATH defaulted, HOSTNAME set.
pub fn environment(c: &ContainerConfig, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: &str| match out.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_owned(),
        None => out.push((k.to_owned(), v.to_owned())),
    };
    put("PATH", DEFAULT_PATH);
    put("HOSTNAME", hostname);
    for e in image
        .config
        .as_ref()
        .and_then(|c| c.env.as_ref())
        .into_iter()
        .flatten()
    {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        put(k, v);
    }
    for (k, v) in &c.env {
        put(k, v);
    }
    if c.tty {
        put("TERM", "xterm");
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Resolves an image `User` (`name`, `uid`, `uid:gid`, `name:group`) with the image's passwd and
/// group files. Returns (uid, gid).
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32), SpecError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd_entry = |pred: &dyn Fn(&[&str]) -> bool| {
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 4 && pred(f))
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd_entry(&|f| f[2] == u)
                .and_then(|f| f[3].parse().ok())
                .unwrap_or(uid);
            (uid, gid)
        }
        Err(_) => {
            let f =
                passwd_entry(&|f| f[0] == u).ok_or_else(|| SpecError::UnknownUser(u.to_owned()))?;
            let uid = f[2]
                .parse()
                .map_err(|_| SpecError::UnknownUser(u.to_owned()))?;
            let gid = f[3]
                .parse()
                .map_err(|_| SpecError::UnknownUser(u.to_owned()))?;
            (uid, gid)
        }
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| SpecError::UnknownGroup(g.to_owned()))?,
        },
    };
    Ok((uid, gid))
}

/// The OCI runtime spec for `c` in `sandbox`, with `image_user` already resolved to (uid, gid).
pub fn runtime_spec(
    c: &ContainerConfig,
    image: &ImageConfig,
    image_user: (u32, u32),
    rootfs: &std::path::Path,
    sandbox: &SandboxContext,
) -> Result<oci_spec::runtime::Spec, SpecError> {
    let args = argv(c, image)?;
    let env = environment(c, image, &sandbox.hostname);
    let uid = c.run_as_user.unwrap_or(image_user.0);
    let gid = c.run_as_group.unwrap_or(image_user.1);
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| image.config.as_ref().and_then(|r| r.working_dir.clone()))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".to_owned());
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    let ns = |t: &str, path: &Option<PathBuf>| match path {
        Some(p) => json!({"type": t, "path": p}),
        None => json!({"type": t}),
    };
    let namespaces = json!([
        ns("pid", &sandbox.pidns),
        ns("network", &sandbox.netns),
        ns("ipc", &sandbox.ipcns),
        {"type": "uts"},
        {"type": "mount"},
    ]);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        match &sandbox.shm {
            Some(PodShm::Host(dir)) => {
                json!({"destination": "/dev/shm", "type": "bind", "source": dir, "options": ["rbind", "rprivate", "nosuid", "noexec", "nodev"]})
            }
            Some(PodShm::Sentry(dir)) => {
                json!({"destination": "/dev/shm", "type": "tmpfs", "source": dir, "options": ["nosuid", "noexec", "nodev", "mode=1777"]})
            }
            None => {
                json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
            }
        },
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for m in &c.mounts {
        let mut opts = vec!["rbind", "rprivate"];
        if m.read_only {
            opts.push("ro");
        }
        mounts.push(json!({"destination": m.container_path, "type": "bind", "source": m.host_path, "options": opts}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(mem) = c.resources.memory_bytes {
        resources["memory"] = json!({"limit": mem, "swap": mem});
    }
    if let Some(milli) = c.resources.cpu_millis {
        let period: u64 = 100_000;
        resources["cpu"] = json!({"quota": (milli * period / 1000).max(1000), "period": period});
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                        "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    });
    if let Some(cg) = &sandbox.cgroups_path {
        linux["cgroupsPath"] = json!(cg);
    }
    let annotations: serde_json::Map<String, serde_json::Value> = sandbox
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.tty,
            "user": {"uid": uid, "gid": gid, "additionalGids": c.supplemental_groups},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false,
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": sandbox.hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": annotations,
    });
    serde_json::from_value(spec).map_err(|e| SpecError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::RunConfig;

    fn image(entry: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        ImageConfig {
            config: Some(RunConfig {
                entrypoint: entry.map(|e| e.iter().map(|s| s.to_string()).collect()),
                cmd: cmd.map(|e| e.iter().map(|s| s.to_string()).collect()),
                env: Some(vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()]),
                working_dir: Some("/app".into()),
                user: None,
            }),
            ..Default::default()
        }
    }

    fn v(s: &[&str]) -> Option<Vec<String>> {
        Some(s.iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn kubernetes_command_rules() {
        let img = image(Some(&["/entry"]), Some(&["cmd"]));
        let mut c = ContainerConfig::default();
        assert_eq!(argv(&c, &img).unwrap(), ["/entry", "cmd"]);
        c.args = v(&["a1"]);
        assert_eq!(argv(&c, &img).unwrap(), ["/entry", "a1"]);
        c.command = v(&["/c"]);
        assert_eq!(argv(&c, &img).unwrap(), ["/c", "a1"]);
        c.args = None;
        assert_eq!(argv(&c, &img).unwrap(), ["/c"]);
        let empty = ImageConfig::default();
        assert_eq!(
            argv(
                &ContainerConfig {
                    name: "x".into(),
                    ..Default::default()
                },
                &empty
            ),
            Err(SpecError::NoCommand("x".into()))
        );
    }

    #[test]
    fn env_merges_container_over_image() {
        let img = image(None, Some(&["sh"]));
        let c = ContainerConfig {
            env: vec![("B".into(), "pod".into()), ("C".into(), "pod".into())],
            ..Default::default()
        };
        assert_eq!(
            environment(&c, &img, "web-1"),
            ["PATH=/bin", "HOSTNAME=web-1", "A=image", "B=pod", "C=pod"]
        );
    }

    #[test]
    fn users_resolve() {
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(resolve_user("", passwd, group), Ok((0, 0)));
        assert_eq!(resolve_user("app", passwd, group), Ok((1000, 1001)));
        assert_eq!(resolve_user("1000", passwd, group), Ok((1000, 1001)));
        assert_eq!(resolve_user("4242", passwd, group), Ok((4242, 4242)));
        assert_eq!(resolve_user("app:staff", passwd, group), Ok((1000, 50)));
        assert_eq!(resolve_user("5:7", "", ""), Ok((5, 7)));
        assert_eq!(
            resolve_user("ghost", passwd, group),
            Err(SpecError::UnknownUser("ghost".into()))
        );
        assert_eq!(
            resolve_user("app:ghosts", passwd, group),
            Err(SpecError::UnknownGroup("ghosts".into()))
        );
    }

    #[test]
    fn spec_carries_limits_namespaces_and_user() {
        let img = image(None, Some(&["sh"]));
        let c = ContainerConfig {
            name: "main".into(),
            run_as_user: Some(1000),
            resources: Resources {
                cpu_millis: Some(500),
                memory_bytes: Some(64 << 20),
            },
            mounts: vec![Mount {
                host_path: "/h".into(),
                container_path: "/data".into(),
                read_only: true,
            }],
            ..Default::default()
        };
        let sb = SandboxContext {
            hostname: "pod-a".into(),
            netns: Some("/run/netns/x".into()),
            ..Default::default()
        };
        let spec = runtime_spec(&c, &img, (0, 0), std::path::Path::new("/r"), &sb).unwrap();
        let j = serde_json::to_value(&spec).unwrap();
        assert_eq!(j["hostname"], "pod-a");
        assert_eq!(j["process"]["user"]["uid"], 1000);
        assert_eq!(j["process"]["cwd"], "/app");
        assert_eq!(j["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(j["linux"]["resources"]["cpu"]["quota"], 50_000);
        let nss = j["linux"]["namespaces"].as_array().unwrap();
        assert!(
            nss.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/netns/x")
        );
        let m = j["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(m["destination"], "/data");
        assert!(
            m["options"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("ro"))
        );
        let shm = |j: &serde_json::Value| {
            j["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["destination"] == "/dev/shm")
                .unwrap()
                .clone()
        };
        assert_eq!(shm(&j)["type"], "tmpfs", "a /dev/shm of its own");
        assert!(
            nss.iter()
                .any(|n| n["type"] == "pid" && n.get("path").is_none())
        );

        let pod = SandboxContext {
            pidns: Some("/pods/p/pid.ns".into()),
            shm: Some(PodShm::Host("/pods/p/shm".into())),
            ..sb
        };
        let spec = runtime_spec(&c, &img, (0, 0), std::path::Path::new("/r"), &pod).unwrap();
        let j = serde_json::to_value(&spec).unwrap();
        let m = shm(&j);
        assert_eq!(
            (&m["type"], &m["source"]),
            (&json!("bind"), &json!("/pods/p/shm"))
        );
        assert!(
            j["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["type"] == "pid" && n["path"] == "/pods/p/pid.ns")
        );
    }
}

/// A CPU quantity in thousandths of a CPU, read exactly as Kubernetes reads it
/// ([`api::sizing::parse_quantity`], `MilliValue` rounded up): `2`, `0.5`, `250m`, `1e-3`.
/// `0` is `Ok(0)` (the caller decides what zero means); a negative, too large or unparsable
/// quantity is an error that says why. Pure.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    quantity(s, 3)
}

/// A memory (or storage) quantity in bytes, read exactly as Kubernetes reads it
/// ([`api::sizing::parse_quantity`], `Value` rounded up): `128974848`, `129e6`, `129M`, `123Mi`,
/// `1k` = 1000, `1Ki` = 1024, and `512m` = 0.512 bytes, rounded up to 1 (not docker's 512 MiB).
/// Used for pods and for the CLI's `--memory`/`--limit` alike. `0` is `Ok(0)`; a negative, too
/// large or unparsable quantity is an error that says why. Pure.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    quantity(s, 0)
}

/// `ceil(q * 10^scale)` of a non-negative Kubernetes quantity.
fn quantity(s: &str, scale: i32) -> Result<u64, String> {
    let q = api::sizing::parse_quantity(s).map_err(|e| e.to_string())?;
    if q.negative && q.mantissa != 0 {
        return Err("must not be negative".into());
    }
    q.scaled_ceil(scale)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| "too large".into())
}

#[cfg(test)]
mod quantity_tests {
    use super::*;

    /// Quantities read as Kubernetes reads them, whatever docker would make of them.
    #[test]
    fn quantities() {
        assert_eq!(parse_cpu("250m"), Ok(250));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu("1e-3"), Ok(1));
        assert_eq!(parse_cpu("0.0001"), Ok(1));
        assert_eq!(parse_cpu("0"), Ok(0));
        assert_eq!(parse_memory("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("1k"), Ok(1000));
        assert_eq!(parse_memory("1Ki"), Ok(1024));
        assert_eq!(parse_memory("512m"), Ok(1));
        assert_eq!(parse_memory("1500m"), Ok(2));
        assert_eq!(parse_memory("1024"), Ok(1024));
        assert_eq!(parse_memory("129e6"), Ok(129_000_000));
        assert_eq!(parse_memory("0"), Ok(0));
        for bad in ["5Qi", "x", "", "1 Gi", "1g", "1.2.3"] {
            let err = parse_memory(bad).unwrap_err();
            assert!(err.contains("quantit"), "{bad}: {err}");
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_memory("-1Mi"), Err("must not be negative".into()));
        assert_eq!(parse_cpu("-1"), Err("must not be negative".into()));
        assert_eq!(parse_memory("1Ei").map(|b| b >> 60), Ok(1));
        assert_eq!(parse_memory("100Ei"), Err("too large".into()));
    }
}
