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
