#!/usr/bin/env bash
# Sets up this machine, builds nodeless and runs the main job: a local cluster (API server with its
# SQLite store, controllers, scheduler and registry, plus a node agent) with a workload running in
# it, driven by the real kubectl. Leaves the cluster running; prints how to use and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PATH:/usr/lib/google-cloud-sdk/bin"
cargo build --release -p nodeless
DATA="${NODELESS_DATA_DIR:-$PWD/.nodeless-demo}"
mkdir -p "$DATA"
for pidfile in "$DATA"/*.pid; do
  [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
done
sleep 0.5
./target/release/nodeless server --data-dir "$DATA" --bind 127.0.0.1:6443 --registry-bind 127.0.0.1:6444 >"$DATA/server.log" 2>&1 &
echo $! >"$DATA/server.pid"
export KUBECONFIG="$DATA/admin.kubeconfig"
for _ in $(seq 100); do [ -f "$KUBECONFIG" ] && kubectl get --raw /readyz >/dev/null 2>&1 && break; sleep 0.1; done
# A node agent with two nodes. The fake runtime reports pods Running as kubelet would (kwok-style);
# per-pod sandboxes (gVisor, crun, micro-VMs) replace it as the data plane lands.
./target/release/nodeless agent --kubeconfig "$KUBECONFIG" --worker --runtime fake --nodes 2 >"$DATA/agent.log" 2>&1 &
echo $! >"$DATA/agent.pid"
set -x
kubectl version
kubectl get nodes -o wide
kubectl apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        resources:
          requests: {cpu: 100m, memory: 64Mi}
YAML
kubectl rollout status deployment/web --timeout=60s
kubectl get deployments,replicasets,pods -o wide
set +x
echo
echo "nodeless is running: API server (pid $(cat "$DATA/server.pid")), agent (pid $(cat "$DATA/agent.pid"))."
echo "Use it with:  export KUBECONFIG=$KUBECONFIG"
echo "Registry:     $(cat "$DATA/registry/endpoint")  (nodeless registry --data-dir $DATA/registry ...)"
echo "Stop it with: kill \$(cat $DATA/server.pid) \$(cat $DATA/agent.pid)"
