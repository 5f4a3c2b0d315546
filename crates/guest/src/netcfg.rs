//! The guest's network: loopback up, `eth0` (the virtio-net device on the pod's tap) with the
//! pod's address and default route, through the classic socket ioctls (`SIOCSIFADDR`,
//! `SIOCSIFNETMASK`, `SIOCSIFFLAGS`, `SIOCADDRT`), so the agent needs no netlink code.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;

use guest::bootargs::netmask;
use rustix::ioctl::{Opcode, Setter, Updater, ioctl};

const SIOCGIFFLAGS: Opcode = 0x8913;
const SIOCSIFFLAGS: Opcode = 0x8914;
const SIOCSIFADDR: Opcode = 0x8916;
const SIOCSIFNETMASK: Opcode = 0x891c;
const SIOCADDRT: Opcode = 0x890b;
const IFF_UP: i16 = 0x1;
const AF_INET: u16 = 2;
const RTF_UP: u16 = 0x1;
const RTF_GATEWAY: u16 = 0x2;

/// `struct ifreq`: the name, then a 24-byte union (an address or the flags).
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

/// `struct sockaddr_in` as the 16 bytes of a `struct sockaddr`.
fn sockaddr(ip: Ipv4Addr) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..2].copy_from_slice(&AF_INET.to_ne_bytes());
    s[4..8].copy_from_slice(&ip.octets());
    s
}

/// `struct rtentry` (x86_64 layout).
#[repr(C)]
struct RtEntry {
    pad1: u64,
    dst: [u8; 16],
    gateway: [u8; 16],
    genmask: [u8; 16],
    flags: u16,
    pad2: i16,
    pad3: u64,
    pad4: usize,
    metric: i16,
    dev: usize,
    mtu: u64,
    window: u64,
    irtt: u16,
}

fn ifreq(name: &str) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        data: [0; 24],
    };
    let n = name.len().min(15);
    r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    r
}

fn socket() -> std::io::Result<OwnedFd> {
    Ok(rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?)
}

#[allow(unsafe_code)]
fn set_addr(s: &OwnedFd, dev: &str, op_is_mask: bool, ip: Ipv4Addr) -> std::io::Result<()> {
    let mut r = ifreq(dev);
    r.data[..16].copy_from_slice(&sockaddr(ip));
    // SAFETY: both opcodes take a `struct ifreq` with a `struct sockaddr` in its union, which
    // is what `IfReq` is; the kernel only reads it.
    unsafe {
        if op_is_mask {
            ioctl(s, Setter::<SIOCSIFNETMASK, IfReq>::new(r))?;
        } else {
            ioctl(s, Setter::<SIOCSIFADDR, IfReq>::new(r))?;
        }
    }
    Ok(())
}

#[allow(unsafe_code)]
fn up(s: &OwnedFd, dev: &str) -> std::io::Result<()> {
    let mut r = ifreq(dev);
    // SAFETY: SIOCGIFFLAGS fills the `short ifr_flags` of the `struct ifreq` it is given.
    unsafe { ioctl(s, Updater::<SIOCGIFFLAGS, IfReq>::new(&mut r))? };
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | IFF_UP;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: SIOCSIFFLAGS reads the `struct ifreq` (name and flags).
    unsafe { ioctl(s, Setter::<SIOCSIFFLAGS, IfReq>::new(r))? };
    Ok(())
}

#[allow(unsafe_code)]
fn default_route(s: &OwnedFd, gateway: Ipv4Addr) -> std::io::Result<()> {
    let rt = RtEntry {
        pad1: 0,
        dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        gateway: sockaddr(gateway),
        genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        flags: RTF_UP | RTF_GATEWAY,
        pad2: 0,
        pad3: 0,
        pad4: 0,
        metric: 0,
        dev: 0,
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    // SAFETY: SIOCADDRT reads a `struct rtentry`, laid out as `RtEntry` (no device pointer:
    // the kernel picks the interface from the gateway's route).
    unsafe { ioctl(s, Setter::<SIOCADDRT, RtEntry>::new(rt))? };
    Ok(())
}

/// Brings `lo` up.
pub fn loopback_up() -> std::io::Result<()> {
    up(&socket()?, "lo")
}

/// `eth0` with `ip/prefix`, up, and a default route via `gateway` when given.
pub fn configure_eth0(ip: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr>) -> std::io::Result<()> {
    let s = socket()?;
    set_addr(&s, "eth0", false, ip)?;
    set_addr(&s, "eth0", true, netmask(prefix))?;
    up(&s, "eth0")?;
    if let Some(gw) = gateway {
        default_route(&s, gw)?;
    }
    Ok(())
}
