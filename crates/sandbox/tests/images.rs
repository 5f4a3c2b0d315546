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

/// A registry serving one image from memory over plain HTTP on loopback (one thread per
/// connection, `Connection: close`), counting the GETs of every blob and manifest and sending
/// blobs slowly (`chunk_delay_ms` between 16 KiB pieces, after a pause), so that pulls overlap.
struct SlowRegistry {
    addr: String,
    /// GETs per path tail (`sha256:…` for blobs and manifests by digest, the tag otherwise).
    gets: Arc<Mutex<std::collections::HashMap<String, usize>>>,
    /// Blob bytes sent so far, all requests together.
    sent: Arc<std::sync::atomic::AtomicU64>,
    /// Milliseconds between two pieces of a blob (and before the first); changeable at any time.
    chunk_delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl SlowRegistry {
    fn start(built: &Built, tag: &str, chunk_delay_ms: u64) -> SlowRegistry {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut manifests: Vec<(String, Vec<u8>, &'static str, String)> = Vec::new();
        let (top, top_type, top_digest) = match &built.index {
            Some((b, d)) => (b.clone(), built.index_media_type, d.clone()),
            None => (
                built.manifest.clone(),
                built.media_type,
                built.manifest_digest.clone(),
            ),
        };
        manifests.push((
            tag.to_owned(),
            top.clone(),
            top_type,
            top_digest.to_string(),
        ));
        manifests.push((
            top_digest.to_string(),
            top,
            top_type,
            top_digest.to_string(),
        ));
        let md = built.manifest_digest.to_string();
        manifests.push((md.clone(), built.manifest.clone(), built.media_type, md));
        for (d, m) in &built.extra_manifests {
            manifests.push((d.to_string(), m.clone(), built.media_type, d.to_string()));
        }
        let blobs: Vec<(String, Vec<u8>)> = built
            .blobs
            .iter()
            .map(|(d, b)| (d.to_string(), b.clone()))
            .collect();
        let state = Arc::new((manifests, blobs));
        let gets = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let delay = Arc::new(AtomicU64::new(chunk_delay_ms));
        let (g, s, dl) = (gets.clone(), sent.clone(), delay.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (state, gets, sent, delay) = (state.clone(), g.clone(), s.clone(), dl.clone());
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut conn = conn;
                    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            // A TLS hello (the HTTPS probe) or a closed connection: drop it.
                            Ok(n) if n > 0 && buf[0] != 0x16 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let tail = path.rsplit('/').next().unwrap_or("").to_owned();
                    let (manifests, blobs) = &*state;
                    let reply = |conn: &mut std::net::TcpStream, status: &str, headers: &str| {
                        let _ = conn.write_all(
                            format!("HTTP/1.1 {status}\r\n{headers}Connection: close\r\n\r\n")
                                .as_bytes(),
                        );
                    };
                    if method == "GET" {
                        *gets.lock().unwrap().entry(tail.clone()).or_insert(0) += 1;
                    }
                    if path == "/v2/" {
                        reply(
                            &mut conn,
                            "200 OK",
                            "Content-Length: 2\r\nContent-Type: application/json\r\n",
                        );
                        let _ = conn.write_all(b"{}");
                    } else if path.contains("/manifests/") {
                        match manifests.iter().find(|m| m.0 == tail) {
                            Some((_, body, media_type, digest)) => {
                                reply(
                                    &mut conn,
                                    "200 OK",
                                    &format!(
                                        "Content-Length: {}\r\nContent-Type: {media_type}\r\nDocker-Content-Digest: {digest}\r\n",
                                        body.len()
                                    ),
                                );
                                if method == "GET" {
                                    let _ = conn.write_all(body);
                                }
                            }
                            None => reply(&mut conn, "404 Not Found", "Content-Length: 0\r\n"),
                        }
                    } else if path.contains("/blobs/") {
                        match blobs.iter().find(|b| b.0 == tail) {
                            Some((digest, body)) => {
                                reply(
                                    &mut conn,
                                    "200 OK",
                                    &format!(
                                        "Content-Length: {}\r\nContent-Type: application/octet-stream\r\nDocker-Content-Digest: {digest}\r\n",
                                        body.len()
                                    ),
                                );
                                if method != "GET" {
                                    return;
                                }
                                for piece in body.chunks(16 * 1024) {
                                    let ms = delay.load(Ordering::SeqCst);
                                    std::thread::sleep(std::time::Duration::from_millis(ms));
                                    if conn.write_all(piece).is_err() {
                                        return;
                                    }
                                    sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
                                }
                            }
                            None => reply(&mut conn, "404 Not Found", "Content-Length: 0\r\n"),
                        }
                    } else {
                        reply(&mut conn, "404 Not Found", "Content-Length: 0\r\n");
                    }
                });
            }
        });
        SlowRegistry {
            addr,
            gets,
            sent,
            chunk_delay_ms: delay,
        }
    }

    fn gets(&self, what: &impl ToString) -> usize {
        self.gets
            .lock()
            .unwrap()
            .get(&what.to_string())
            .copied()
            .unwrap_or(0)
    }
}

/// `nodeless sandbox pull --data-dir DATA IMAGE` running as a separate process, its stderr
/// collected as it comes.
struct CliPull {
    child: std::process::Child,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl CliPull {
    fn start(bin: &std::path::Path, data: &std::path::Path, image: &str) -> CliPull {
        let mut child = std::process::Command::new(bin)
            .args(["sandbox", "pull", "--data-dir"])
            .arg(data)
            .arg(image)
            .env("NODELESS_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |mut r: Box<dyn std::io::Read + Send>| {
            let out = Arc::new(Mutex::new(String::new()));
            let o = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    o.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
            out
        };
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        CliPull {
            child,
            stderr,
            stdout,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (at most a minute) for the exit; its status with stdout and stderr.
    fn wait(mut self) -> (std::process::ExitStatus, String, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the readers drain the pipes.
                std::thread::sleep(std::time::Duration::from_millis(100));
                let out = self.stdout.lock().unwrap().clone();
                return (status, out, self.stderr());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("pull did not end within a minute: {}", self.stderr());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Polls `cond` every 20 ms for at most `secs` seconds.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn tmp_entries(data: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(data.join("images/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn cli_test_image() -> Built {
    build(
        &[
            (busybox_layer(), Compression::Gzip),
            (top_layer(), Compression::Zstd),
        ],
        &["sh"],
        true,
    )
}

/// Two `nodeless sandbox pull` processes pulling one image into one data dir at the same time
/// download every blob (config and layers) and the platform manifest once: the second waits
/// for the first (and says so), then finds the blobs verified in the store.
#[test]
fn concurrent_pulls_in_two_processes_download_every_blob_once() {
    if !use_shim() {
        return;
    }
    let bin = nodeless_binary().unwrap();
    let built = cli_test_image();
    let reg = SlowRegistry::start(&built, "1.0", 40);
    let (_d, data) = data_dir();
    let image = format!("{}/test/busybox:1.0", reg.addr);
    let a = CliPull::start(&bin, &data, &image);
    let b = CliPull::start(&bin, &data, &image);
    let (sa, outa, erra) = a.wait();
    let (sb, outb, errb) = b.wait();
    eprintln!("first pull:\n{erra}\nsecond pull:\n{errb}");
    assert!(sa.success(), "first pull: {sa}\n{erra}");
    assert!(sb.success(), "second pull: {sb}\n{errb}");
    let line = format!("{image} {}", built.manifest_digest);
    assert_eq!(outa.trim(), line);
    assert_eq!(outb.trim(), line);
    for (d, _) in &built.blobs {
        assert_eq!(reg.gets(d), 1, "blob {d} fetched once\n{erra}\n{errb}");
    }
    assert_eq!(
        reg.gets(&built.manifest_digest),
        1,
        "the platform manifest fetched once"
    );
    assert!(
        erra.contains("waiting for another pull of sha256:")
            || errb.contains("waiting for another pull of sha256:"),
        "the pulls overlapped and one waited for the other:\n{erra}\n{errb}"
    );
    let s = store(&data);
    let src: Source = image.parse().unwrap();
    let img = s.get(&src).unwrap().expect("image recorded");
    assert_eq!(img.manifest_digest, built.manifest_digest);
    check_layers(&s, &img);
    assert_eq!(
        tmp_entries(&data),
        Vec::<String>::new(),
        "no temp files left"
    );
}

/// A pull killed with SIGKILL in the middle of a layer leaves nothing half done: a second pull
/// that was waiting for it takes over at once (the lock went with the process), downloads the
/// layer itself, completes, and removes the dead pull's temp file.
#[test]
fn a_pull_killed_mid_blob_leaves_the_store_consistent_and_a_waiting_pull_completes() {
    if !use_shim() {
        return;
    }
    let bin = nodeless_binary().unwrap();
    let built = cli_test_image();
    let big = built.layer_digests[0].clone();
    let reg = SlowRegistry::start(&built, "1.0", 100);
    let (_d, data) = data_dir();
    let image = format!("{}/test/busybox:1.0", reg.addr);
    let mut a = CliPull::start(&bin, &data, &image);
    wait_for(30, "the first pull is downloading the big layer", || {
        reg.gets(&big) == 1
            && reg.sent.load(std::sync::atomic::Ordering::SeqCst) > 64 * 1024
            && tmp_entries(&data).iter().any(|n| n.starts_with("blob-"))
    });
    let b = CliPull::start(&bin, &data, &image);
    wait_for(30, "the second pull waits for the first", || {
        b.stderr()
            .contains(&format!("waiting for another pull of {big}"))
    });
    a.child.kill().unwrap();
    let killed = a.child.wait().unwrap();
    assert!(!killed.success());
    let s = store(&data);
    let src: Source = image.parse().unwrap();
    assert!(!s.layer_dir(&big).exists(), "no half layer in the store");
    reg.chunk_delay_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let (sb, outb, errb) = b.wait();
    eprintln!("the waiting pull:\n{errb}");
    assert!(sb.success(), "the waiting pull: {sb}\n{errb}");
    assert_eq!(outb.trim(), format!("{image} {}", built.manifest_digest));
    assert_eq!(reg.gets(&big), 2, "downloaded again after the kill\n{errb}");
    for (d, _) in built.blobs.iter().filter(|(d, _)| *d != big) {
        assert!(reg.gets(d) <= 1, "blob {d} fetched at most once\n{errb}");
    }
    let img = s.get(&src).unwrap().expect("image recorded");
    check_layers(&s, &img);
    assert_eq!(
        tmp_entries(&data),
        Vec::<String>::new(),
        "the killed pull's temp file is gone"
    );
    // And a pull after that finds everything present.
    let (sc, _, errc) = CliPull::start(&bin, &data, &image).wait();
    assert!(sc.success(), "{errc}");
    assert_eq!(reg.gets(&big), 2);
}

/// Two store objects over one data dir (as two processes have; the lock is the `flock`, not
/// this process's mutex): the second waits for the first's download of each blob and reports
/// the other's progress meanwhile, so a progress bar does not look stuck; each blob is fetched
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_waiting_for_another_store_reports_its_progress() {
    let built = cli_test_image();
    let big = built.layer_digests[0].clone();
    let reg = SlowRegistry::start(&built, "1.0", 40);
    let (_d, data) = data_dir();
    let (first, second) = (store(&data), store(&data));
    let src: Source = format!("{}/test/busybox:1.0", reg.addr).parse().unwrap();
    let (opts, events) = recorder();
    let quiet = PullOptions::default();
    let a = first.pull(&src, &quiet);
    let b = async {
        // Starts once the first is well into the big layer.
        while reg.sent.load(std::sync::atomic::Ordering::SeqCst) < 64 * 1024 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        second.pull(&src, &opts).await
    };
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    for (d, _) in &built.blobs {
        assert_eq!(reg.gets(d), 1, "blob {d} fetched once");
    }
    let evs = events.lock().unwrap().clone();
    let present = evs
        .iter()
        .position(|e| *e == PullEvent::LayerPresent(big.clone()))
        .unwrap_or_else(|| panic!("the big layer was found present: {evs:?}"));
    let seen: Vec<u64> = evs[..present]
        .iter()
        .filter_map(|e| match e {
            PullEvent::LayerProgress { digest, done } if *digest == big => Some(*done),
            _ => None,
        })
        .collect();
    assert!(
        seen.len() >= 2 && seen.windows(2).all(|w| w[0] < w[1]) && seen[0] > 0,
        "the other pull's progress, growing: {seen:?}"
    );
    check_layers(&second, &b);
}

/// gc over and over while two store objects over one data dir (as two processes) pull one image,
/// the second waiting for the first's blob locks: nothing deadlocks (gc takes only the store
/// lock, pulls take blob locks under it), the image is whole, and gc clears the lock files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_while_pulls_wait_for_each_other_never_deadlocks() {
    let built = cli_test_image();
    let reg = SlowRegistry::start(&built, "1.0", 10);
    let (_d, data) = data_dir();
    let (first, second) = (limited(&data, 1), limited(&data, 1));
    let gc_store = Arc::new(limited(&data, 1));
    let src: Source = format!("{}/test/busybox:1.0", reg.addr).parse().unwrap();
    let in_use: HashSet<String> = [src.to_string()].into();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let (s, done, in_use) = (gc_store.clone(), done.clone(), in_use.clone());
        tokio::task::spawn_blocking(move || {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                s.gc(&in_use).unwrap();
                rounds += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            rounds
        })
    };
    let quiet = PullOptions::default();
    let a = first.pull(&src, &quiet);
    let b = async {
        while reg.sent.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        second.pull(&src, &quiet).await
    };
    let (a, b) = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        tokio::join!(a, b)
    })
    .await
    .expect("no deadlock");
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(gc.await.unwrap() > 0);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b);
    for (d, _) in &built.blobs {
        assert_eq!(reg.gets(d), 1, "blob {d} fetched once");
    }
    gc_store.gc(&in_use).unwrap();
    check_layers(
        &gc_store,
        &gc_store.get(&src).unwrap().expect("still stored"),
    );
    let locks: Vec<_> = std::fs::read_dir(data.join("images/locks"))
        .unwrap()
        .collect();
    assert!(locks.is_empty(), "{locks:?}");
}
