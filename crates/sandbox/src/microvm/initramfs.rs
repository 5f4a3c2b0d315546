//! The micro-VM's initramfs: an uncompressed newc cpio archive holding the guest agent as
//! `/init`, the kernel modules it loads (`/modules/<name>.ko` and `/modules/order`) and
//! `/dev/console`. Nothing else: the container's files come from its own block device. Pure.

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Dir(String),
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    /// A character device (`major`, `minor`).
    CharDev {
        path: String,
        major: u32,
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, rdev: (u32, u32), name: &str) {
    let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        size as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// The newc archive of `members`, in order (parents before children), with its trailer.
pub fn cpio(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let ino = i as u32 + 1;
        match m {
            Member::Dir(p) => header(&mut out, ino, S_IFDIR | 0o755, 0, (0, 0), p),
            Member::File { path, mode, data } => {
                header(
                    &mut out,
                    ino,
                    S_IFREG | (mode & 0o7777),
                    data.len(),
                    (0, 0),
                    path,
                );
                out.extend_from_slice(data);
                pad4(&mut out);
            }
            Member::CharDev { path, major, minor } => {
                header(&mut out, ino, S_IFCHR | 0o600, 0, (*major, *minor), path)
            }
        }
    }
    header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!");
    out
}

/// The members of the guest's initramfs: `agent` becomes `/init`; `modules` are
/// `(name, bytes)` in load order.
pub fn members(agent: Vec<u8>, modules: Vec<(String, Vec<u8>)>) -> Vec<Member> {
    let mut m = vec![
        Member::Dir("dev".into()),
        Member::CharDev {
            path: "dev/console".into(),
            major: 5,
            minor: 1,
        },
        Member::File {
            path: "init".into(),
            mode: 0o755,
            data: agent,
        },
        Member::Dir("modules".into()),
    ];
    let mut order = String::new();
    for (name, data) in modules {
        order.push_str(&name);
        order.push('\n');
        m.push(Member::File {
            path: format!("modules/{name}.ko"),
            mode: 0o644,
            data,
        });
    }
    m.push(Member::File {
        path: "modules/order".into(),
        mode: 0o644,
        data: order.into_bytes(),
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev, data) of one parsed member.
    type Parsed = (String, u32, (u32, u32), Vec<u8>);

    /// Parses a newc archive back into its members.
    fn parse(mut b: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rdev, namesize) = (
                field(1),
                field(6) as usize,
                (field(9), field(10)),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_owned();
            let off = (110 + namesize).next_multiple_of(4);
            let data = b[off..off + size].to_vec();
            let next = (off + size).next_multiple_of(4);
            assert_eq!((total - b.len() + next) % 4, 0);
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, rdev, data));
        }
    }

    #[test]
    fn archive_round_trips_with_modes_devices_and_order() {
        let a = cpio(&members(
            b"\x7fELF-agent".to_vec(),
            vec![
                ("virtio".into(), vec![1, 2, 3]),
                ("virtio_blk".into(), vec![4; 5]),
            ],
        ));
        let got = parse(&a);
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "modules",
                "modules/virtio.ko",
                "modules/virtio_blk.ko",
                "modules/order"
            ]
        );
        assert_eq!(got[1].1, 0o020600);
        assert_eq!(got[1].2, (5, 1));
        assert_eq!(got[2].1, 0o100755);
        assert_eq!(got[2].3, b"\x7fELF-agent");
        assert_eq!(got[5].3, vec![4; 5]);
        assert_eq!(got[6].3, b"virtio\nvirtio_blk\n");
        assert_eq!(got[0].1, 0o040755);
    }
}
