//! The pod network: a network namespace the project owns (`nodeless-pods` by default) holding a
//! bridge; each pod gets its own network namespace, joined to the bridge by a veth pair, with
//! an address from the bridge's subnet. Nothing is configured in the host's own namespace.
//! Address allocation is pure ([`allocate`]); leases are files under the state dir created with
//! `O_EXCL`, so concurrent agents never hand out one address twice and a restart finds them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use tokio::process::Command;
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("running {cmd}: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("running {0} (is iproute2 installed?)")]
    Spawn(String, #[source] std::io::Error),
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free address left in {0}/{1}")]
    Exhausted(Ipv4Addr, u8),
    #[error("address {0} is not a pod address of {1}/{2}")]
    OutOfSubnet(Ipv4Addr, Ipv4Addr, u8),
    #[error("address {0} is already leased to pod {1}")]
    InUse(Ipv4Addr, String),
}

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// The first host address: the bridge (gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    fn size(&self) -> u32 {
        1u32.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0)
    }

    /// Whether `ip` is a pod address of the subnet (not the network, gateway or broadcast). Pure.
    pub fn is_pod_address(&self, ip: Ipv4Addr) -> bool {
        let (base, ip) = (u32::from(self.network), u32::from(ip));
        ip.checked_sub(base)
            .is_some_and(|i| i >= 2 && i < self.size().saturating_sub(1))
    }
}

impl std::str::FromStr for Subnet {
    type Err = String;

    /// `10.244.0.0/24` (host bits are cleared).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let prefix: u8 = prefix.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if prefix > 30 {
            return Err(format!("{s:?}: prefix too long for a pod network"));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(ip) & mask),
            prefix,
        })
    }
}

/// The lowest free host address of `subnet` (not the network, gateway or broadcast address). Pure.
pub fn allocate(subnet: Subnet, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let base = u32::from(subnet.network);
    (2..subnet.size().saturating_sub(1))
        .map(|i| Ipv4Addr::from(base + i))
        .find(|ip| !used.contains(ip))
}

/// Names derived from a pod id: its netns and the veth end on the bridge (at most 15 chars). Pure.
pub fn names(pod_id: &str) -> (String, String) {
    let h = crate::digest::Digest::of(pod_id.as_bytes());
    let short = &h.hex()[..10];
    (format!("nl-{short}"), format!("nlv{short}"))
}

#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// The netns holding the bridge.
    pub netns: String,
    pub bridge: String,
    pub subnet: Subnet,
    state_dir: PathBuf,
    /// Set once [`PodNetwork::ensure`] made the namespace and bridge (shared by clones).
    ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A pod's place on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub netns: String,
    /// `/run/netns/<name>`, for the runtime spec.
    pub netns_path: PathBuf,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// Runs `args` (program first) with `input` on its stdin; its stdout, or its stderr as the
/// error.
async fn run_with(args: &[&str], input: Option<&[u8]>) -> Result<String, NetworkError> {
    use tokio::io::AsyncWriteExt;
    let cmd = args.join(" ");
    let (prog, rest) = args.split_first().unwrap_or((&"true", &[]));
    let spawn_err = |e| NetworkError::Spawn(cmd.clone(), e);
    let mut child = Command::new(prog)
        .args(rest)
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        stdin.write_all(input).await.map_err(spawn_err)?;
    }
    let out = child.wait_with_output().await.map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NetworkError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn run(args: &[&str]) -> Result<String, NetworkError> {
    run_with(args, None).await
}

/// Runs `ip -n <netns> -batch -` with `lines` (one `ip` command each, without the `ip`): one
/// process for a pod's whole setup on one side instead of one per command (~3 ms each).
async fn batch(netns: &str, lines: &[String]) -> Result<(), NetworkError> {
    let script = lines.join("\n") + "\n";
    run_with(&["ip", "-n", netns, "-batch", "-"], Some(script.as_bytes()))
        .await
        .map(|_| ())
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

impl PodNetwork {
    pub fn new(
        netns: impl Into<String>,
        bridge: impl Into<String>,
        subnet: Subnet,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        PodNetwork {
            netns: netns.into(),
            bridge: bridge.into(),
            subnet,
            state_dir: state_dir.into(),
            ready: Default::default(),
        }
    }

    /// The default network: netns `nodeless-pods`, bridge `nl0`, 10.88.0.0/16, state in `data_dir/network`.
    pub fn default_for(data_dir: &Path) -> Self {
        Self::new(
            "nodeless-pods",
            "nl0",
            Subnet {
                network: Ipv4Addr::new(10, 88, 0, 0),
                prefix: 16,
            },
            data_dir.join("network"),
        )
    }

    /// Creates the namespace and bridge if missing. Idempotent; after a first success only a
    /// look at the namespace's file.
    pub async fn ensure(&self) -> Result<(), NetworkError> {
        use std::sync::atomic::Ordering;
        if self.ready.load(Ordering::Acquire) && netns_path(&self.netns).exists() {
            return Ok(());
        }
        if !netns_path(&self.netns).exists() {
            run(&["ip", "netns", "add", &self.netns]).await?;
        }
        let n = self.netns.as_str();
        if run(&["ip", "-n", n, "link", "show", &self.bridge])
            .await
            .is_err()
        {
            run(&["ip", "-n", n, "link", "add", &self.bridge, "type", "bridge"]).await?;
            let cidr = format!("{}/{}", self.subnet.gateway(), self.subnet.prefix);
            run(&["ip", "-n", n, "addr", "add", &cidr, "dev", &self.bridge]).await?;
        }
        run(&["ip", "-n", n, "link", "set", &self.bridge, "up"]).await?;
        run(&["ip", "-n", n, "link", "set", "lo", "up"]).await?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    fn leases(&self) -> PathBuf {
        self.state_dir.join("leases")
    }

    fn lease_of(&self, pod_id: &str) -> Result<Option<Ipv4Addr>, NetworkError> {
        let dir = self.leases();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(NetworkError::Io {
                    op: "list",
                    path: dir,
                    source,
                });
            }
        };
        for e in rd.flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|s| s == pod_id) {
                return Ok(e.file_name().to_str().and_then(|n| n.parse().ok()));
            }
        }
        Ok(None)
    }

    /// Leases exactly `ip` to `pod_id` (idempotent for the same pod).
    fn lease_exact(&self, pod_id: &str, ip: Ipv4Addr) -> Result<Ipv4Addr, NetworkError> {
        if !self.subnet.is_pod_address(ip) {
            return Err(NetworkError::OutOfSubnet(
                ip,
                self.subnet.network,
                self.subnet.prefix,
            ));
        }
        if let Some(old) = self.lease_of(pod_id)?
            && old != ip
        {
            let p = self.leases().join(old.to_string());
            let _ = std::fs::remove_file(p);
        }
        let dir = self.leases();
        std::fs::create_dir_all(&dir).map_err(|source| NetworkError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let p = dir.join(ip.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(pod_id.as_bytes())
                    .map_err(|source| NetworkError::Io {
                        op: "write",
                        path: p,
                        source,
                    })?;
                Ok(ip)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&p).unwrap_or_default();
                if holder == pod_id {
                    Ok(ip)
                } else {
                    Err(NetworkError::InUse(ip, holder))
                }
            }
            Err(source) => Err(NetworkError::Io {
                op: "create",
                path: p,
                source,
            }),
        }
    }

    fn lease(&self, pod_id: &str) -> Result<Ipv4Addr, NetworkError> {
        if let Some(ip) = self.lease_of(pod_id)? {
            return Ok(ip);
        }
        let dir = self.leases();
        std::fs::create_dir_all(&dir).map_err(|source| NetworkError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        loop {
            let used: BTreeSet<Ipv4Addr> = std::fs::read_dir(&dir)
                .map_err(|source| NetworkError::Io {
                    op: "list",
                    path: dir.clone(),
                    source,
                })?
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect();
            let ip = allocate(self.subnet, &used).ok_or(NetworkError::Exhausted(
                self.subnet.network,
                self.subnet.prefix,
            ))?;
            let p = dir.join(ip.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(mut f) => {
                    use std::io::Write;
                    f.write_all(pod_id.as_bytes())
                        .map_err(|source| NetworkError::Io {
                            op: "write",
                            path: p,
                            source,
                        })?;
                    return Ok(ip);
                }
                // Someone else took it between our listing and our create: try the next one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(NetworkError::Io {
                        op: "create",
                        path: p,
                        source,
                    });
                }
            }
        }
    }

    /// Gives `pod_id` a netns with `eth0` on the bridge. Idempotent (a restart re-attaches).
    /// A pod id qualified by this network, so that two networks never share a pod's netns.
    fn scoped(&self, pod_id: &str) -> String {
        format!("{}/{pod_id}", self.netns)
    }

    pub async fn attach(&self, pod_id: &str) -> Result<Attachment, NetworkError> {
        self.attach_with_ip(pod_id, None).await
    }

    /// Like [`PodNetwork::attach`], with exactly `ip` when given (the address the pod's Node
    /// carries); fails if another pod holds it or it is not a pod address of the subnet.
    pub async fn attach_with_ip(
        &self,
        pod_id: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<Attachment, NetworkError> {
        self.ensure().await?;
        let ip = match ip {
            Some(ip) => self.lease_exact(pod_id, ip)?,
            None => self.lease(pod_id)?,
        };
        let (ns, veth) = names(&self.scoped(pod_id));
        let path = netns_path(&ns);
        let fresh = !path.exists();
        if fresh {
            run(&["ip", "netns", "add", &ns]).await?;
        }
        let n = self.netns.as_str();
        // A namespace made just now has no eth0; one made earlier (a pod prepared again) may.
        if fresh
            || run(&["ip", "-n", &ns, "link", "show", "eth0"])
                .await
                .is_err()
        {
            let bridge_side = [
                format!("link add {veth} type veth peer name eth0 netns {ns}"),
                format!("link set {veth} master {}", self.bridge),
                format!("link set {veth} up"),
            ];
            if batch(n, &bridge_side).await.is_err() {
                // A veth left by an earlier, interrupted attach of this pod.
                let _ = run(&["ip", "-n", n, "link", "del", &veth]).await;
                batch(n, &bridge_side).await?;
            }
            batch(
                &ns,
                &[
                    format!("addr add {ip}/{} dev eth0", self.subnet.prefix),
                    "link set eth0 up".into(),
                    "link set lo up".into(),
                    format!("route add default via {}", self.subnet.gateway()),
                ],
            )
            .await?;
        }
        debug!(pod = pod_id, %ip, netns = %ns, "pod attached to the network");
        Ok(Attachment {
            netns: ns,
            netns_path: path,
            ip,
            gateway: self.subnet.gateway(),
        })
    }

    /// Puts the pod's address, link state and default route back on its eth0 (idempotent): a
    /// gVisor sandbox takes them off the interface when it boots, so the next sandbox booted in
    /// the same namespace would find no address.
    pub async fn restore(&self, pod_id: &str, ip: Ipv4Addr) -> Result<(), NetworkError> {
        let (ns, _) = names(&self.scoped(pod_id));
        batch(
            &ns,
            &[
                format!("addr replace {ip}/{} dev eth0", self.subnet.prefix),
                "link set eth0 up".into(),
                format!("route replace default via {}", self.subnet.gateway()),
            ],
        )
        .await
    }

    /// Removes the pod's netns (its veth goes with it) and frees its address.
    pub async fn detach(&self, pod_id: &str) -> Result<(), NetworkError> {
        let (ns, veth) = names(&self.scoped(pod_id));
        // Delete the veth pair first: that is synchronous, while the kernel tears a network
        // namespace down asynchronously, so the pod's address would answer for a moment more.
        if netns_path(&self.netns).exists() {
            let bridge_ns = format!("--net={}", netns_path(&self.netns).display());
            let _ = run(&["nsenter", &bridge_ns, "ip", "link", "del", &veth]).await;
        }
        if netns_path(&ns).exists() {
            run(&["ip", "netns", "del", &ns]).await?;
        }
        if let Some(ip) = self.lease_of(pod_id)? {
            let p = self.leases().join(ip.to_string());
            std::fs::remove_file(&p).map_err(|source| NetworkError::Io {
                op: "remove",
                path: p,
                source,
            })?;
        }
        Ok(())
    }

    /// Removes the bridge namespace (tests; a host normally keeps it).
    pub async fn destroy(&self) -> Result<(), NetworkError> {
        if netns_path(&self.netns).exists() {
            run(&["ip", "netns", "del", &self.netns]).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_reserved_and_used() {
        let s = Subnet {
            network: Ipv4Addr::new(10, 9, 0, 0),
            prefix: 30,
        };
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(
            allocate(s, &BTreeSet::new()),
            Some(Ipv4Addr::new(10, 9, 0, 2))
        );
        let used = [Ipv4Addr::new(10, 9, 0, 2)].into();
        assert_eq!(allocate(s, &used), None, "a /30 has one pod address");
        let s24 = Subnet {
            network: Ipv4Addr::new(10, 9, 1, 0),
            prefix: 24,
        };
        let used = [Ipv4Addr::new(10, 9, 1, 2), Ipv4Addr::new(10, 9, 1, 3)].into();
        assert_eq!(allocate(s24, &used), Some(Ipv4Addr::new(10, 9, 1, 4)));
    }

    #[test]
    fn subnets_parse_and_bound_pod_addresses() {
        let s: Subnet = "10.244.3.7/24".parse().unwrap();
        assert_eq!(s.network, Ipv4Addr::new(10, 244, 3, 0));
        assert!(s.is_pod_address(Ipv4Addr::new(10, 244, 3, 2)));
        assert!(s.is_pod_address(Ipv4Addr::new(10, 244, 3, 254)));
        assert!(!s.is_pod_address(Ipv4Addr::new(10, 244, 3, 1)));
        assert!(!s.is_pod_address(Ipv4Addr::new(10, 244, 3, 255)));
        assert!(!s.is_pod_address(Ipv4Addr::new(10, 244, 4, 2)));
        assert!("10.0.0.0".parse::<Subnet>().is_err());
    }

    #[test]
    fn exact_leases() {
        let tmp = std::env::temp_dir().join(format!("nl-lease-test-{}", std::process::id()));
        let net = PodNetwork::new("x", "b", "10.9.2.0/24".parse().unwrap(), &tmp);
        let ip = Ipv4Addr::new(10, 9, 2, 9);
        assert_eq!(net.lease_exact("a", ip).unwrap(), ip);
        assert_eq!(net.lease_exact("a", ip).unwrap(), ip, "idempotent");
        assert!(matches!(
            net.lease_exact("b", ip),
            Err(NetworkError::InUse(_, holder)) if holder == "a"
        ));
        assert!(matches!(
            net.lease_exact("b", Ipv4Addr::new(10, 9, 3, 9)),
            Err(NetworkError::OutOfSubnet(..))
        ));
        assert_eq!(net.lease("b").unwrap(), Ipv4Addr::new(10, 9, 2, 2));
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn names_fit_interface_limits() {
        let (ns, veth) = names("default/some-very-long-pod-name-0123456789");
        assert!(veth.len() <= 15, "{veth}");
        assert!(ns.starts_with("nl-"));
        assert_ne!(names("a").0, names("b").0);
    }
}
