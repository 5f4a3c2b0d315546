#!/usr/bin/env bash
# Installs what nodeless builds and tests with on a fresh Debian 12 machine (run as root).
# Idempotent: packages already present are skipped.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in protobuf-compiler etcd-server skopeo podman curl busybox-static crun runsc umoci docker-registry erofs-utils iproute2 qemu-system-x86 lz4 util-linux golang-go golang-github-docker-spdystream-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The micro-VM runtime's guest kernel (Debian's cloud kernel, not installed on the host) and the
# static guest agent.
"$(dirname "$0")/microvm-assets.sh" >/dev/null
# docker-registry starts a system service on install; tests start their own instances.
systemctl stop docker-registry >/dev/null 2>&1 || true
# The Python client used by the end-to-end tests (python3 here is pyenv's, not Debian's).
if ! python3 -c 'import kubernetes' >/dev/null 2>&1; then
  echo "setup: pip install kubernetes" >&2
  python3 -m pip install -q kubernetes
fi
if ! command -v kubectl.1.33 >/dev/null 2>&1 && [ ! -x /usr/lib/google-cloud-sdk/bin/kubectl.1.33 ]; then
  echo "setup: the kubectl package (with kubectl.1.NN clients) is missing; install it from the Kubernetes apt repository" >&2
  exit 1
fi
