//! What the host tells the guest agent on the kernel command line (`/proc/cmdline`): the pod's
//! address and route (`nodeless.ip=A.B.C.D/P nodeless.gw=A.B.C.D`) and its hostname
//! (`nodeless.hostname=NAME`), whether it runs a whole pod (`nodeless.pod=1`), and the size
//! of the single container's writable layer (`nodeless.writable=BYTES`). Pure.

use std::net::Ipv4Addr;

/// The agent's settings from the kernel command line; unknown words are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootArgs {
    /// The address of `eth0` and its prefix length.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// The default route's gateway.
    pub gateway: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    /// A whole pod (`nodeless.pod=1`): no disk is mounted at boot; the host prepares one root
    /// filesystem per container.
    pub pod: bool,
    /// The size in bytes of the single container's writable layer (its tmpfs's `size=`);
    /// 0 (absent) is tmpfs's default, half the VM's memory.
    pub writable_limit: u64,
}

impl BootArgs {
    pub fn parse(cmdline: &str) -> BootArgs {
        let mut b = BootArgs::default();
        for word in cmdline.split_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            match k {
                "nodeless.ip" => {
                    b.ip = v
                        .split_once('/')
                        .and_then(|(a, p)| Some((a.parse().ok()?, p.parse().ok()?)))
                        .filter(|(_, p)| *p <= 32);
                }
                "nodeless.gw" => b.gateway = v.parse().ok(),
                "nodeless.pod" => b.pod = v == "1",
                "nodeless.writable" => b.writable_limit = v.parse().unwrap_or(0),
                "nodeless.hostname" if !v.is_empty() && v.len() <= 64 => {
                    b.hostname = Some(v.to_owned())
                }
                _ => {}
            }
        }
        b
    }
}

/// The netmask of a prefix length (`24` -> 255.255.255.0). Pure.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - u32::from(p)),
    };
    Ipv4Addr::from(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_parsed() {
        let b = BootArgs::parse(
            "console=ttyS0 rdinit=/init nodeless.ip=10.201.9.2/24 nodeless.gw=10.201.9.1 nodeless.hostname=web-0 nodeless.pod=1 nodeless.writable=8388608\n",
        );
        assert_eq!(b.writable_limit, 8 << 20);
        assert_eq!(b.ip, Some((Ipv4Addr::new(10, 201, 9, 2), 24)));
        assert_eq!(b.gateway, Some(Ipv4Addr::new(10, 201, 9, 1)));
        assert_eq!(b.hostname.as_deref(), Some("web-0"));
        assert!(b.pod);
        let none = BootArgs::parse(
            "console=ttyS0 nodeless.ip=10.0.0.1/40 nodeless.gw=x nodeless.writable=lots",
        );
        assert_eq!(none, BootArgs::default());
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(17), Ipv4Addr::new(255, 255, 128, 0));
    }
}
