#!/usr/bin/env bash
# Sets up, builds and runs the main job: a local nodeless API server (SQLite store) and a kubectl
# session against it. Leaves the server running in the background; prints how to use and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PATH:/usr/lib/google-cloud-sdk/bin"
cargo build --release -p nodeless
DATA="${NODELESS_DATA_DIR:-$PWD/.nodeless-demo}"
mkdir -p "$DATA"
if [ -f "$DATA/server.pid" ] && kill -0 "$(cat "$DATA/server.pid")" 2>/dev/null; then
  kill "$(cat "$DATA/server.pid")"; sleep 0.5
fi
./target/release/nodeless server --data-dir "$DATA" --bind 127.0.0.1:6443 >"$DATA/server.log" 2>&1 &
echo $! >"$DATA/server.pid"
export KUBECONFIG="$DATA/admin.kubeconfig"
for _ in $(seq 100); do [ -f "$KUBECONFIG" ] && kubectl get --raw /readyz >/dev/null 2>&1 && break; sleep 0.1; done
set -x
kubectl version
kubectl get namespaces
kubectl create deployment hello --image=busybox:1.36 --replicas=2 --dry-run=server -o name
kubectl apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
YAML
kubectl scale deployment web --replicas=3
kubectl get deployments -o wide
kubectl get deployment web -o jsonpath='{.spec.replicas}{"\n"}'
set +x
echo
echo "nodeless server is running (pid $(cat "$DATA/server.pid")). Use it with:"
echo "  export KUBECONFIG=$KUBECONFIG"
echo "Stop it with: kill \$(cat $DATA/server.pid)"
