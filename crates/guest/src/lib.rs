//! The micro-VM guest agent's library half: the host <-> guest wire protocol ([`proto`]), shared
//! with the host side (crates/sandbox/src/microvm.rs). The binary (`nodeless-guest`) is PID 1 of
//! the initramfs the host generates. std and libc only, so the binary links statically.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bootargs;
pub mod proto;
