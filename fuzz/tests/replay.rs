//! Replays every seed (`seeds/<target>/*`) and every saved reproducer (`regressions/<target>/*`)
//! through the target functions on the stable toolchain, without libFuzzer: a reproducer whose bug
//! is fixed stays here as a regression test. Also a short deterministic pseudo-random run of each
//! target, so the generators and checks are exercised even where cargo-fuzz is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use nodeless_fuzz::{TARGETS, generate};

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    out
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for (name, f) in TARGETS {
        for path in files(&root.join(kind).join(name)) {
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{name}: {} panics", path.display());
            n += 1;
        }
    }
    n
}

#[test]
fn seeds_replay_cleanly() {
    let n = replay("seeds");
    assert!(
        n >= 40,
        "expected the committed seed corpora, found {n} files"
    );
}

#[test]
fn regressions_replay_cleanly() {
    // Each file here once crashed a target; see regressions/README.md for what and where.
    replay("regressions");
}

#[test]
fn fixtures_parse_and_cover_every_resource() {
    for (kind, text) in generate::FIXTURES {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["kind"], *kind);
    }
    for r in api::resource::RESOURCES {
        assert!(
            generate::FIXTURES.iter().any(|(k, _)| *k == r.kind),
            "no fixture of kind {}",
            r.kind
        );
    }
}

/// A fixed xorshift stream: the same bytes on every run.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn pseudo_random_inputs_do_not_break_any_target() {
    let rounds: u64 = std::env::var("NODELESS_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    for (name, f) in TARGETS {
        for i in 0..rounds {
            let data = bytes(i + 1, 64 + (i as usize * 37) % 2048);
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{name}: pseudo-random input #{i} panics");
        }
    }
}

#[test]
fn structured_generators_reach_the_merge_code() {
    // Not vacuous: most generated strategic merge patches must apply, or the target only
    // exercises error paths.
    let mut ok = 0;
    for i in 0..300u64 {
        let data = bytes(i + 7, 4096);
        let mut u = arbitrary::Unstructured::new(&data);
        let Ok(target) = generate::mutated_fixture(&mut u, None) else {
            continue;
        };
        let Ok(p) = generate::smp_patch(&mut u, &target, 6) else {
            continue;
        };
        if api::patch::strategic_merge_patch(&target, &p).is_ok() {
            ok += 1;
        }
    }
    assert!(
        ok > 100,
        "only {ok} of 300 generated strategic merge patches applied"
    );
}

#[test]
fn structured_generators_reach_apply() {
    // Not vacuous: most generated applies (a mutated fixture applied onto another of its kind)
    // must succeed, or the apply target only exercises error paths.
    let mut ok = 0;
    for i in 0..200u64 {
        let data = bytes(i + 11, 4096);
        let mut u = arbitrary::Unstructured::new(&data);
        let Ok(live) = generate::mutated_fixture(&mut u, Some("Deployment")) else {
            continue;
        };
        let Ok(config) = generate::apply_config(&mut u, Some("Deployment")) else {
            continue;
        };
        if api::apply::apply(Some(&live), &config, "kubectl", true, nodeless_fuzz::NOW).is_ok() {
            ok += 1;
        }
    }
    assert!(ok > 60, "only {ok} of 200 generated applies succeeded");
}
