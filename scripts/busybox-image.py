#!/usr/bin/env python3
"""Writes a small OCI image layout from Debian's static busybox (no network needed).

usage: busybox-image.py LAYOUT_DIR TAG [CMD...]
The image has busybox with its applets in /bin, /www/index.html, and CMD as its command.
"""
import hashlib
import io
import json
import os
import sys
import tarfile

APPLETS = ["sh", "echo", "cat", "ls", "httpd", "wget", "sleep", "ps", "nc", "hostname",
           "date", "env", "id", "mkdir", "touch", "true", "false", "head", "wc", "grep"]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    layout, tag, cmd = sys.argv[1], sys.argv[2], sys.argv[3:] or ["sh"]
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        def add(path, data=None, mode=0o644, kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 1700000000, link
            info.size = len(data) if data is not None else 0
            t.addfile(info, io.BytesIO(data) if data is not None else None)
        for d in ["bin", "etc", "tmp", "www", "root"]:
            add(d, mode=0o755, kind=tarfile.DIRTYPE)
        with open("/bin/busybox", "rb") as f:
            add("bin/busybox", f.read(), 0o755)
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
        add("etc/group", b"root:x:0:\nnobody:x:65534:\n")
        add("www/index.html", b"hello from a nodeless pod\n")
        for a in APPLETS:
            add("bin/" + a, kind=tarfile.SYMTYPE, mode=0o777, link="busybox")
    layer = buf.getvalue()

    def blob(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        return "sha256:" + digest, len(data)

    layer_digest, layer_size = blob(layer)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}
    config_digest, config_size = blob(json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": config_size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer_digest, "size": layer_size}]}
    manifest_digest, manifest_size = blob(json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
         "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')


if __name__ == "__main__":
    main()
