//! The default `--data-dir` of every command. A file of its own so that programs which reuse
//! a command's arguments (the agent's `schedule_bench`) can include it.

/// The default `--data-dir` of every command: /var/lib/nodeless as root, else
/// `$XDG_DATA_HOME/nodeless`, else ~/.local/share/nodeless (`nodeless registry` uses its
/// `registry` subdirectory).
pub fn default_data_dir() -> std::path::PathBuf {
    data_dir_for(
        is_root(),
        std::env::var_os("HOME"),
        std::env::var_os("XDG_DATA_HOME"),
    )
}

/// The decision behind [`default_data_dir`]: root gets /var/lib/nodeless; anyone else an
/// absolute `XDG_DATA_HOME` (a relative one is ignored, as the XDG spec says) joined with
/// `nodeless`, else `HOME/.local/share/nodeless`, else (no HOME at all) /var/lib/nodeless.
/// Pure.
fn data_dir_for(
    root: bool,
    home: Option<std::ffi::OsString>,
    xdg_data_home: Option<std::ffi::OsString>,
) -> std::path::PathBuf {
    let absolute =
        |v: Option<std::ffi::OsString>| v.map(std::path::PathBuf::from).filter(|p| p.is_absolute());
    if root {
        return "/var/lib/nodeless".into();
    }
    if let Some(xdg) = absolute(xdg_data_home) {
        return xdg.join("nodeless");
    }
    match absolute(home) {
        Some(home) => home.join(".local/share/nodeless"),
        None => "/var/lib/nodeless".into(),
    }
}

/// Whether this process runs with effective user id 0 (from /proc/self/status: `Uid: real
/// effective saved fs`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// One default data directory for every command: root's is /var/lib/nodeless whatever the
    /// environment says; anyone else's follows XDG_DATA_HOME (when absolute), then HOME.
    #[test]
    fn default_data_dir_decision() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        let dir = |root, home, xdg| data_dir_for(root, home, xdg);
        assert_eq!(
            dir(true, os("/root"), os("/x")),
            std::path::Path::new("/var/lib/nodeless")
        );
        assert_eq!(
            dir(false, os("/home/u"), None),
            std::path::Path::new("/home/u/.local/share/nodeless")
        );
        assert_eq!(
            dir(false, os("/home/u"), os("/data/xdg")),
            std::path::Path::new("/data/xdg/nodeless")
        );
        for ignored in ["", "rel/xdg"] {
            assert_eq!(
                dir(false, os("/home/u"), os(ignored)),
                std::path::Path::new("/home/u/.local/share/nodeless"),
                "{ignored:?}"
            );
        }
        assert_eq!(
            dir(false, None, None),
            std::path::Path::new("/var/lib/nodeless")
        );
        assert_eq!(
            dir(false, os(""), None),
            std::path::Path::new("/var/lib/nodeless")
        );
    }

    /// This process's answer agrees with its real effective uid (the owner of /proc/self).
    #[test]
    fn detects_root() {
        let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        assert_eq!(is_root(), uid == 0);
    }
}
