#!/usr/bin/env bash
# Sets up a fresh machine and runs every test (unit, backend suites against sqlite, memory and a real
# etcd, end-to-end tests with the real kubectl, kube-rs and Python clients).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PATH:/usr/lib/google-cloud-sdk/bin"
export NODELESS_REQUIRE_ETCD=1
export NODELESS_REQUIRE_SANDBOX=1
export NODELESS_REQUIRE_MICROVM=1
# A one-shot build on a fresh machine: no incremental caches and no debug info, which together
# keep the target directory several times smaller (CI machines can be short of disk).
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=false
cargo build --workspace --all-targets
# Bounded parallelism: the machine has 2 cores and the end-to-end tests start servers.
cargo test --workspace --no-fail-fast -- --test-threads=4
