//! Image store end to end: OCI layouts, OCI archives and a real registry on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::os::unix::fs::FileTypeExt;
use std::sync::{Arc, Mutex};

use common::*;
use sandbox::image::{ImageStore, PullEvent, PullOptions, Source, StoreError, StoreOptions};

fn store(data: &std::path::Path) -> ImageStore {
    ImageStore::open(data.join("images"), StoreOptions::default()).unwrap()
}

fn recorder() -> (PullOptions, Arc<Mutex<Vec<PullEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let opts = PullOptions {
        progress: Some(Arc::new(move |ev: &PullEvent| {
            e.lock().unwrap().push(ev.clone())
        })),
        ..Default::default()
    };
    (opts, events)
}

fn check_layers(store: &ImageStore, img: &sandbox::image::Image) {
    assert_eq!(img.layers.len(), 2);
    let base = store.layer_dir(&img.layers[0]);
    let top = store.layer_dir(&img.layers[1]);
    assert!(base.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(base.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    let wh = std::fs::symlink_metadata(top.join("etc/remove-me")).unwrap();
    assert!(
        wh.file_type().is_char_device(),
        "whiteout must be a 0:0 char device"
    );
    let mut buf = [0u8; 2];
    let n = rustix::fs::getxattr(top.join("data"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
    assert_eq!(
        img.config.config.as_ref().unwrap().cmd.as_deref(),
        Some(&["sh".to_owned()][..])
    );
}

#[tokio::test]
async fn pull_from_oci_layout_then_start_without_source() {
    let (_d, data) = data_dir();
    let layout = data.join("layout");
    let built = busybox_layout(&layout, &["sh"]);
    let s = store(&data);
    let src: Source = format!("oci:{}:latest", layout.display()).parse().unwrap();
    let (opts, events) = recorder();
    let img = s.pull(&src, &opts).await.unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
    check_layers(&s, &img);
    let done = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, PullEvent::LayerDone(_)))
        .count();
    assert_eq!(done, 2);

    // The source is gone: an image already present still starts.
    std::fs::remove_dir_all(&layout).unwrap();
    let again = s.ensure(&src, &PullOptions::default()).await.unwrap();
    assert_eq!(again, img);
    // And a fresh store object over the same dir (an agent restart) finds it too.
    let s2 = store(&data);
    assert_eq!(s2.get(&src).unwrap(), Some(img));
}

#[tokio::test]
async fn pull_from_oci_archive_with_index() {
    let (_d, data) = data_dir();
    let layout = data.join("layout");
    let built = build(
        &[
            (busybox_layer(), Compression::None),
            (top_layer(), Compression::Gzip),
        ],
        &["sh"],
        true,
    );
    write_layout(&layout, "v1", &built);
    let archive = data.join("img.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    b.append_dir_all(".", &layout).unwrap();
    b.finish().unwrap();
    drop(b);
    let s = store(&data);
    let img = s
        .pull(
            &format!("oci-archive:{}:v1", archive.display())
                .parse()
                .unwrap(),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        img.manifest_digest, built.manifest_digest,
        "index resolved to the amd64 manifest"
    );
    check_layers(&s, &img);
    assert!(
        std::fs::read_dir(data.join("images/tmp"))
            .unwrap()
            .next()
            .is_none(),
        "tmp cleaned up"
    );
}

#[tokio::test]
async fn corrupt_layer_in_layout_is_refused() {
    let (_d, data) = data_dir();
    let layout = data.join("layout");
    let built = busybox_layout(&layout, &["sh"]);
    let victim = layout
        .join("blobs/sha256")
        .join(built.layer_digests[1].hex());
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let s = store(&data);
    let err = s
        .pull(
            &format!("oci:{}", layout.display()).parse().unwrap(),
            &PullOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unpack(ref d, _) if d == &built.layer_digests[1]),
        "{err:?}"
    );
    assert!(!s.layer_dir(&built.layer_digests[1]).exists());
}

#[tokio::test]
async fn pull_from_loopback_registry_by_tag_and_digest_concurrently() {
    let reg = Registry::start();
    let built = build(
        &[
            (busybox_layer(), Compression::Gzip),
            (top_layer(), Compression::Zstd),
        ],
        &["sh"],
        true,
    );
    reg.push("test/busybox", "1.0", &built).await;
    let (_d, data) = data_dir();
    let s = Arc::new(store(&data));
    let src: Source = format!("{}/test/busybox:1.0", reg.addr).parse().unwrap();
    let (opts, events) = recorder();
    let (a, b) = tokio::join!(s.pull(&src, &opts), s.ensure(&src, &opts));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    assert_eq!(a.manifest_digest, built.manifest_digest);
    check_layers(&s, &a);
    let evs = events.lock().unwrap().clone();
    let done = evs
        .iter()
        .filter(|e| matches!(e, PullEvent::LayerDone(_)))
        .count();
    assert_eq!(done, 2, "each layer downloaded once: {evs:?}");

    // By digest, from a second image name sharing the layers: nothing downloaded again.
    let by_digest: Source = format!("{}/test/busybox@{}", reg.addr, built.manifest_digest)
        .parse()
        .unwrap();
    let (opts2, events2) = recorder();
    let c = s.pull(&by_digest, &opts2).await.unwrap();
    assert_eq!(c.layers, a.layers);
    let evs2 = events2.lock().unwrap().clone();
    assert_eq!(
        evs2.iter()
            .filter(|e| matches!(e, PullEvent::LayerPresent(_)))
            .count(),
        2,
        "{evs2:?}"
    );

    // A missing tag is an error naming the registry request.
    let missing: Source = format!("{}/test/busybox:nope", reg.addr).parse().unwrap();
    assert!(matches!(
        s.pull(&missing, &PullOptions::default()).await,
        Err(StoreError::Registry { .. })
    ));
}

#[tokio::test]
async fn gc_evicts_least_recently_used_unused_images() {
    let (_d, data) = data_dir();
    let s = ImageStore::open(
        data.join("images"),
        StoreOptions {
            cache_limit_bytes: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let mut srcs = Vec::new();
    for (i, word) in ["one", "two", "three"].iter().enumerate() {
        let layout = data.join(format!("l{i}"));
        let t = tar(&[Entry::File("f", word.as_bytes().to_vec(), 0o644)]);
        let built = build(&[(t, Compression::Gzip)], &["sh"], false);
        write_layout(&layout, "latest", &built);
        let src: Source = format!("oci:{}", layout.display()).parse().unwrap();
        s.pull(&src, &PullOptions::default()).await.unwrap();
        srcs.push(src);
    }
    let in_use: HashSet<String> = [srcs[1].to_string()].into();
    let report = s.gc(&in_use).unwrap();
    assert_eq!(report.evicted_images.len(), 2, "{report:?}");
    assert_eq!(report.removed_layers.len(), 2);
    assert!(s.get(&srcs[0]).unwrap().is_none());
    assert!(s.get(&srcs[1]).unwrap().is_some(), "in use: kept");
    assert!(s.get(&srcs[2]).unwrap().is_none());
}

/// A one-layer image of 64 KiB filled with `fill`, as an OCI layout `data/<name>`.
fn small_image(data: &std::path::Path, name: &str, fill: u8) -> Source {
    let layout = data.join(name);
    let t = tar(&[Entry::File("f", vec![fill; 64 * 1024], 0o644)]);
    let built = build(&[(t, Compression::Gzip)], &["sh"], false);
    write_layout(&layout, "latest", &built);
    format!("oci:{}", layout.display()).parse().unwrap()
}

fn limited(data: &std::path::Path, limit: u64) -> ImageStore {
    ImageStore::open(
        data.join("images"),
        StoreOptions {
            cache_limit_bytes: Some(limit),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Names in the store, least recently used first.
fn names(s: &ImageStore) -> Vec<String> {
    s.list().unwrap().into_iter().map(|(n, ..)| n).collect()
}

#[tokio::test]
async fn gc_evicts_strictly_least_recently_used_first() {
    // Room for one image, then for two: A, B and C used in that order, then A again (present,
    // no pull), all within a few milliseconds.
    for room in [1u64, 2] {
        let (_d, data) = data_dir();
        let s = store(&data);
        let [a, b, c] =
            [("a", b'a'), ("b", b'b'), ("c", b'c')].map(|(n, f)| small_image(&data, n, f));
        s.ensure(&a, &PullOptions::default()).await.unwrap();
        let one = s.size().unwrap();
        assert!(one >= 64 * 1024, "{one}");
        for src in [&b, &c] {
            s.ensure(src, &PullOptions::default()).await.unwrap();
        }
        let (opts, events) = recorder();
        s.ensure(&a, &opts).await.unwrap();
        assert!(events.lock().unwrap().is_empty(), "A was present: no pull");
        assert_eq!(s.size().unwrap(), 3 * one);
        assert_eq!(names(&s), [&b, &c, &a].map(|x| x.to_string()));

        let report = limited(&data, room * one + one / 2)
            .gc(&HashSet::new())
            .unwrap();
        let expected: Vec<String> = if room == 1 {
            vec![b.to_string(), c.to_string()]
        } else {
            vec![b.to_string()]
        };
        assert_eq!(report.evicted_images, expected, "room for {room}");
        assert_eq!(report.removed_layers.len(), expected.len());
        assert_eq!(report.size_after, room * one);
        assert_eq!(s.size().unwrap(), room * one);
        assert!(s.get(&a).unwrap().is_some(), "A was used last: kept");
        assert_eq!(
            s.get(&c).unwrap().is_some(),
            room == 2,
            "C kept when it fits"
        );
        assert!(s.get(&b).unwrap().is_none());

        if room == 2 {
            // `get` marked C used after A: A is now the least recently used.
            let report = limited(&data, one + one / 2).gc(&HashSet::new()).unwrap();
            assert_eq!(report.evicted_images, vec![a.to_string()]);
            assert_eq!(names(&s), vec![c.to_string()]);
        }
    }
}

#[tokio::test]
async fn gc_never_evicts_images_in_use() {
    let (_d, data) = data_dir();
    let s = store(&data);
    let [a, b] = [("a", b'a'), ("b", b'b')].map(|(n, f)| small_image(&data, n, f));
    // A is the least recently used, but in use.
    for src in [&a, &b] {
        s.ensure(src, &PullOptions::default()).await.unwrap();
    }
    let in_use: HashSet<String> = [a.to_string()].into();
    let report = limited(&data, 1).gc(&in_use).unwrap();
    assert_eq!(report.evicted_images, vec![b.to_string()]);
    assert!(report.size_after > 1, "over the limit, but in use");
    let img = s.get(&a).unwrap().expect("in use: kept");
    assert!(s.layer_dir(&img.layers[0]).join("f").is_file());
    // Every image in use: nothing goes.
    let report = limited(&data, 1).gc(&in_use).unwrap();
    assert!(report.evicted_images.is_empty() && report.removed_layers.is_empty());

    // The async form asks for the images in use once it holds the store.
    s.ensure(&b, &PullOptions::default()).await.unwrap();
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let report = Arc::new(limited(&data, 1))
        .gc_async(|| {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            [b.to_string()].into()
        })
        .await
        .unwrap();
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(report.evicted_images, vec![a.to_string()]);
    assert!(s.get(&b).unwrap().is_some());
}

#[tokio::test]
async fn gc_keeps_layers_a_mounted_root_filesystem_uses() {
    let (_d, data) = data_dir();
    let s = store(&data);
    let a = small_image(&data, "a", b'a');
    let img = s.ensure(&a, &PullOptions::default()).await.unwrap();
    // A container's root filesystem over A's layers, while A's record goes (nobody said A was
    // in use): the layer stays as long as the overlay is mounted.
    let ctr = data.join("ctr");
    let rootfs = match sandbox::rootfs::mount(&s.lower_dirs(&img), &ctr) {
        Ok(r) => r,
        Err(e) => {
            assert!(
                std::env::var_os("NODELESS_REQUIRE_SANDBOX").is_none(),
                "overlay mount: {e}"
            );
            println!("SKIPPED: cannot mount overlayfs here: {e}");
            return;
        }
    };
    let report = limited(&data, 1).gc(&HashSet::new()).unwrap();
    assert_eq!(report.evicted_images, vec![a.to_string()]);
    assert!(report.removed_layers.is_empty(), "{report:?}");
    assert!(s.layer_dir(&img.layers[0]).join("f").is_file());
    assert!(rootfs.join("f").is_file());
    sandbox::rootfs::unmount(&ctr).unwrap();
    let report = limited(&data, 1).gc(&HashSet::new()).unwrap();
    assert_eq!(report.removed_layers, img.layers);
    assert!(!s.layer_dir(&img.layers[0]).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_during_a_pull_never_removes_its_layers() {
    let (_d, data) = data_dir();
    // W is busybox alone; X is busybox (the same layer) plus the whiteout layer.
    let w_built = build(&[(busybox_layer(), Compression::Gzip)], &["sh"], false);
    write_layout(&data.join("w"), "latest", &w_built);
    let x_built = busybox_layout(&data.join("x"), &["sh"]);
    assert_eq!(w_built.layer_digests[0], x_built.layer_digests[0]);
    let w: Source = format!("oci:{}", data.join("w").display()).parse().unwrap();
    let x: Source = format!("oci:{}", data.join("x").display()).parse().unwrap();
    let s = Arc::new(limited(&data, 1));
    s.pull(&w, &PullOptions::default()).await.unwrap();

    // gc over and over (the agent passes the image of the pod it is starting as in use) while
    // X is pulled: W goes, X's layers (the shared one included) stay.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (s, done) = (s.clone(), done.clone());
        let in_use: HashSet<String> = [x.to_string()].into();
        tokio::task::spawn_blocking(move || {
            let mut rounds = 0;
            let mut evicted = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) || rounds == 0 {
                evicted.extend(s.gc(&in_use).unwrap().evicted_images);
                rounds += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            (rounds, evicted)
        })
    };
    let img = s.pull(&x, &PullOptions::default()).await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (rounds, evicted) = gc.await.unwrap();
    assert!(rounds > 0);
    assert_eq!(evicted, vec![w.to_string()]);
    check_layers(&s, &img);
    // One more round after the pull: X is recorded and in use, so it is whole.
    let in_use: HashSet<String> = [x.to_string()].into();
    s.gc(&in_use).unwrap();
    assert_eq!(s.get(&x).unwrap(), Some(img.clone()));
    check_layers(&s, &img);
    assert!(s.get(&w).unwrap().is_none());
}

#[tokio::test]
async fn docker_schema2_images_by_tag_and_by_digest() {
    let reg = Registry::start();
    let layers = [
        (busybox_layer(), Compression::Gzip),
        (top_layer(), Compression::Gzip),
    ];
    let listed = build_as(Format::Docker, &layers, &["sh"], true);
    let single = build_as(Format::Docker, &layers, &["sh"], false);
    reg.push("test/docker", "list", &listed).await;
    reg.push("test/docker", "single", &single).await;
    let (list_bytes, list_digest) = listed.index.clone().unwrap();
    assert!(String::from_utf8_lossy(&list_bytes).contains(DOCKER_LIST));
    assert!(String::from_utf8_lossy(&listed.manifest).contains(DOCKER_MANIFEST));
    assert!(
        String::from_utf8_lossy(&listed.manifest)
            .contains("application/vnd.docker.image.rootfs.diff.tar.gzip")
    );
    let refs = [
        format!("{}/test/docker:list", reg.addr),
        format!("{}/test/docker:single", reg.addr),
        format!("{}/test/docker@{}", reg.addr, listed.manifest_digest),
        format!("{}/test/docker@{list_digest}", reg.addr),
    ];
    for (i, r) in refs.iter().enumerate() {
        // A fresh store each time, so every pull downloads and unpacks.
        let (_d, data) = data_dir();
        let s = store(&data);
        let src: Source = r.parse().unwrap();
        let img = s.pull(&src, &PullOptions::default()).await.unwrap();
        assert_eq!(img.manifest_digest, listed.manifest_digest, "{r}");
        assert_eq!(img.layers, listed.layer_digests, "{r}");
        check_layers(&s, &img);
        let stored = std::fs::read(
            data.join("images/blobs/sha256")
                .join(img.manifest_digest.hex()),
        )
        .unwrap();
        assert_eq!(
            stored, listed.manifest,
            "{r}: the manifest as the registry sent it"
        );
        assert_eq!(s.get(&src).unwrap(), Some(img), "{r} ({i})");
    }
}

/// Flips the last byte of a file, or replaces `from` by `to` (same length) when given.
fn tamper(path: &std::path::Path, swap: Option<(&str, &str)>) {
    let mut bytes = std::fs::read(path).unwrap();
    match swap {
        Some((from, to)) => {
            assert_eq!(from.len(), to.len());
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.contains(from), "{from} not in {}", path.display());
            bytes = text.replacen(from, to, 1).into_bytes();
        }
        None => {
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// Nothing of any image in the store: no blob, layer, record or leftover.
fn assert_nothing_stored(images: &std::path::Path) {
    for d in ["blobs/sha256", "layers", "records", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(images.join(d))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{d}: {left:?}");
    }
}

fn config_digest(built: &Built) -> sandbox::digest::Digest {
    let m: serde_json::Value = serde_json::from_slice(&built.manifest).unwrap();
    m["config"]["digest"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn tampered_config_or_manifest_in_a_layout_is_refused_and_nothing_stored() {
    let (_d, data) = data_dir();
    for with_index in [false, true] {
        let layout = data.join(format!("layout-{with_index}"));
        let built = build(
            &[
                (busybox_layer(), Compression::Gzip),
                (top_layer(), Compression::Zstd),
            ],
            &["sh"],
            with_index,
        );
        let src: Source = format!("oci:{}:v1", layout.display()).parse().unwrap();
        let blob = |d: &sandbox::digest::Digest| layout.join("blobs/sha256").join(d.hex());
        let cases = [
            (
                config_digest(&built),
                Some(("FROM_IMAGE=yes", "FROM_IMAGE=YES")),
            ),
            (
                built.manifest_digest.clone(),
                Some(("\"schemaVersion\":2", "\"schemaVersion\":3")),
            ),
            (built.manifest_digest.clone(), None),
        ]
        .into_iter()
        // With an index, the index blob itself too.
        .chain(built.index.iter().map(|(_, d)| (d.clone(), None)));
        for (victim, swap) in cases {
            write_layout(&layout, "v1", &built);
            tamper(&blob(&victim), swap);
            let (_d2, data2) = data_dir();
            let s = store(&data2);
            let err = s.pull(&src, &PullOptions::default()).await.unwrap_err();
            assert!(
                matches!(err, StoreError::Digest { ref expected, .. } if expected == &victim),
                "index {with_index}, {victim}: {err:?}"
            );
            eprintln!("tampered {victim}: {err}");
            assert_nothing_stored(&data2.join("images"));
            assert!(s.get(&src).unwrap().is_none());
        }
        // Untouched, the same layout pulls.
        write_layout(&layout, "v1", &built);
        let (_d2, data2) = data_dir();
        let s = store(&data2);
        let img = s.pull(&src, &PullOptions::default()).await.unwrap();
        check_layers(&s, &img);
    }
}

#[tokio::test]
async fn tampered_blobs_in_the_registry_fail_the_pull() {
    let reg = Registry::start();
    let built = build(
        &[
            (busybox_layer(), Compression::Gzip),
            (top_layer(), Compression::Gzip),
        ],
        &["sh"],
        false,
    );
    reg.push("test/tamper", "1", &built).await;
    let src: Source = format!("{}/test/tamper:1", reg.addr).parse().unwrap();
    let config = config_digest(&built);
    for (victim, swap) in [
        (built.layer_digests[1].clone(), None),
        (config.clone(), Some(("FROM_IMAGE=yes", "FROM_IMAGE=YES"))),
    ] {
        let file = reg.blob_file(&victim);
        let good = std::fs::read(&file).unwrap();
        tamper(&file, swap);
        let (_d, data) = data_dir();
        let s = store(&data);
        let err = s.pull(&src, &PullOptions::default()).await.unwrap_err();
        let text = chain(&err);
        eprintln!("tampered {victim} in the registry: {text}");
        assert!(text.to_lowercase().contains("digest"), "{text}");
        assert!(!s.layer_dir(&victim).exists());
        assert!(s.get(&src).unwrap().is_none());
        let records = std::fs::read_dir(data.join("images/records"))
            .unwrap()
            .count();
        assert_eq!(records, 0);
        assert!(
            std::fs::read_dir(data.join("images/tmp"))
                .unwrap()
                .next()
                .is_none(),
            "no download left behind"
        );
        std::fs::write(&file, good).unwrap();
    }
    let (_d, data) = data_dir();
    let s = store(&data);
    check_layers(&s, &s.pull(&src, &PullOptions::default()).await.unwrap());
}

/// The error and all its causes, one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

fn skopeo(args: &[String]) {
    let out = std::process::Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn layouts_and_archives_written_by_skopeo() {
    if !have_tool("skopeo") {
        return;
    }
    let (_d, data) = data_dir();
    let ours = data.join("ours");
    busybox_layout(&ours, &["sh"]);
    let theirs = data.join("theirs");
    let archive = data.join("image.tar");
    skopeo(&[
        "copy".into(),
        format!("oci:{}:latest", ours.display()),
        format!("oci:{}:v2", theirs.display()),
    ]);
    skopeo(&[
        "copy".into(),
        format!("oci:{}:latest", ours.display()),
        format!("oci-archive:{}:v3", archive.display()),
    ]);
    // What skopeo recorded for the tag is what must come out.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(theirs.join("index.json")).unwrap()).unwrap();
    let tagged = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v2")
        .expect("skopeo tags the manifest");
    let digest: sandbox::digest::Digest = tagged["digest"].as_str().unwrap().parse().unwrap();

    let s = store(&data);
    for r in [
        format!("oci:{}:v2", theirs.display()),
        format!("oci:{}", theirs.display()),
        format!("oci-archive:{}", archive.display()),
        format!("oci-archive:{}:v3", archive.display()),
    ] {
        let src: Source = r.parse().unwrap();
        let img = s.pull(&src, &PullOptions::default()).await.unwrap();
        assert_eq!(img.manifest_digest, digest, "{r}");
        check_layers(&s, &img);
    }
}
