#!/usr/bin/env bash
# Sets up this machine, builds nodeless and runs the main job: `nodeless up`, a one-machine
# serverless cluster (API server on SQLite, controllers and schedulers, the registry, a local host
# agent running pods in gVisor sandboxes), then the EKS-on-Fargate walkthrough with the real kubectl:
# an image pushed to the cluster's registry, a Deployment whose pods each run in their own sandbox
# on their own `serverless-ip-*` node, logs and exec. Leaves the cluster running.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PATH:/usr/lib/google-cloud-sdk/bin"
cargo build --release -p nodeless
NL="$PWD/target/release/nodeless"
DATA="${NODELESS_DATA_DIR:-$PWD/.nodeless-demo}"
mkdir -p "$DATA"
if [ -f "$DATA/up.pid" ]; then
  kill "$(cat "$DATA/up.pid")" 2>/dev/null || true
  sleep 1
fi
"$NL" up --data-dir "$DATA" --bind 127.0.0.1:6443 --registry-bind 127.0.0.1:6444 >"$DATA/up.log" 2>&1 &
echo $! >"$DATA/up.pid"
export KUBECONFIG="$DATA/admin.kubeconfig"
for _ in $(seq 300); do
  kubectl get leases -n kube-system -l nodeless.io/host-agent=true -o name 2>/dev/null | grep -q . && break
  sleep 0.2
done
# An image built here from Debian's static busybox, pushed to the cluster's registry as users push to ECR.
REG=127.0.0.1:6444
"$NL" registry create-repository demo/web --data-dir "$DATA/registry" >/dev/null 2>&1 || true
rm -rf "$DATA/layout"
./scripts/busybox-image.py "$DATA/layout" 1 sh -c 'echo serving from $(hostname); exec httpd -f -p 8080 -h /www'
"$NL" registry get-login-password --data-dir "$DATA/registry" |
  skopeo login --cert-dir "$DATA/registry/tls" --username nodeless --password-stdin "$REG" >/dev/null
skopeo copy --quiet --dest-cert-dir "$DATA/registry/tls" "oci:$DATA/layout:1" "docker://$REG/demo/web:1"
set -x
kubectl version
kubectl get sp
kubectl delete deployment first-container --ignore-not-found
kubectl create deployment first-container --image=$REG/demo/web:1 --replicas=3
kubectl rollout status deployment/first-container --timeout=120s
kubectl get pods -o wide
kubectl get nodes -o wide
POD=$(kubectl get pods -l app=first-container -o jsonpath='{.items[0].metadata.name}')
kubectl logs "$POD"
kubectl exec "$POD" -- cat /www/index.html
set +x
echo
echo "nodeless is running (pid $(cat "$DATA/up.pid"), logs in $DATA/up.log)."
echo "Use it with:  export KUBECONFIG=$KUBECONFIG"
echo "Registry:     $REG  (nodeless registry --data-dir $DATA/registry ...)"
echo "Stop it with: kubectl delete deployment first-container; kill \$(cat $DATA/up.pid)"
echo "(Pods outlive the process on purpose, as they outlive a restart of the agent: delete them first.)"
