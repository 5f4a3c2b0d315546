#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ from the fixtures in seeds/objects/ and the
kubectl protobuf bodies captured in crates/api/tests/protobuf.rs. Deterministic: rerun after
changing a fixture; the output is committed (a few dozen KB)."""
import json, os, random, re, shutil, yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OBJ = os.path.join(HERE, "objects")
TARGETS = ["protobuf", "body", "patch", "patch_structured", "apply", "selector", "quantity", "resource"]
# Order of api::resource::RESOURCES (the resource target's first byte).
KINDS = ["namespace", "pod", "node", "event", "configmap", "secret", "service", "serviceaccount",
         "endpoints", "deployment", "replicaset", "job", "lease", "event_v1",
         "serverlessprofile"]

def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)

def fixture(name):
    with open(os.path.join(OBJ, name + ".json")) as f:
        return json.load(f)

for t in TARGETS:
    shutil.rmtree(os.path.join(HERE, t), ignore_errors=True)
    os.makedirs(os.path.join(HERE, t))

# protobuf: every hex body of crates/api/tests/protobuf.rs (kubectl 1.33 captures).
src = open(os.path.join(ROOT, "crates/api/tests/protobuf.rs")).read()
bodies = [bytes.fromhex(h) for h in re.findall(r'"(6b387300[0-9a-f]+)"', src)]
assert len(bodies) >= 10, len(bodies)
for i, b in enumerate(bodies):
    write("protobuf", f"kubectl-{i:02}", b)

# body: 0 = application/json, 1 = application/yaml, 2 = protobuf (lib.rs BODY_TYPES).
for k in KINDS + ["deployment_applied"]:
    obj = fixture(k)
    write("body", f"json-{k}", b"\x00" + json.dumps(obj).encode())
    write("body", f"yaml-{k}", b"\x01" + yaml.safe_dump(obj, sort_keys=False).encode())
write("body", "yaml-multi-anchor", b"\x01a: &x {b: [1, 2.5, null, ~, yes, 0x1f]}\nc: *x\nd: !!binary aGk=\n")
for i, b in enumerate(bodies[:4]):
    write("body", f"protobuf-{i}", b"\x02" + b)

# patch: 0 = json patch, 1 = merge patch, 2 = strategic merge patch; target 0xFF patch.
def patch(name, mode, target, p):
    write("patch", name, bytes([mode]) + json.dumps(fixture(target)).encode() + b"\xff" + json.dumps(p).encode())
patch("json-scale", 0, "deployment", [{"op": "replace", "path": "/spec/replicas", "value": 5},
      {"op": "test", "path": "/metadata/name", "value": "web"}])
patch("json-add-label", 0, "pod", [{"op": "add", "path": "/metadata/labels/new~1key", "value": "v"},
      {"op": "remove", "path": "/spec/containers/0/ports/1"},
      {"op": "copy", "from": "/metadata/labels", "path": "/metadata/annotations"},
      {"op": "move", "from": "/spec/nodeName", "path": "/spec/hostname"},
      {"op": "add", "path": "/metadata/finalizers/-", "value": "x/y"}])
patch("merge-scale", 1, "deployment", {"spec": {"replicas": 0}})
patch("merge-label-delete", 1, "pod", {"metadata": {"labels": {"app": None, "new": "x"}}, "spec": {"containers": [{"name": "only"}]}})
patch("smp-set-image", 2, "deployment", {"spec": {"template": {"spec": {
      "$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}],
      "containers": [{"name": "nginx", "image": "nginx:1.28"}]}}}})
patch("smp-delete-container", 2, "deployment", {"spec": {"template": {"spec": {
      "containers": [{"name": "sidecar", "$patch": "delete"}],
      "volumes": [{"name": "cache", "$patch": "delete"}, {"name": "new", "emptyDir": {}}]}}}})
patch("smp-retain-keys", 2, "deployment", {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None}}})
patch("smp-primitive-list", 2, "pod", {"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/cleanup"], "finalizers": ["b"]},
      "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 9090, "protocol": "TCP"}], "$patch": "replace"}],
               "tolerations": [{"key": "x", "operator": "Exists"}]}})
patch("smp-replace-map", 2, "service", {"spec": {"selector": {"$patch": "replace", "app": "other"},
      "ports": [{"port": 80, "protocol": "TCP", "targetPort": 9090}, {"$patch": "merge"}]}})

# structured targets: bytes for the generator (any bytes work; these give the corpus a start).
rng = random.Random(20250601)
for t in ["patch_structured", "apply"]:
    for i in range(6):
        write(t, f"random-{i}", bytes(rng.randrange(256) for _ in range(256 + 256 * i)))

# selector: 0 = label text, 1 = field text, 2 = label selector JSON.
for i, s in enumerate(["app=web", "env in (prod,staging),tier notin (frontend)", "!canary,app",
                       "x>1,y<3", "a==b,c!=d", "example.com/part-of=web-1.2_3", "a in (),b"]):
    write("selector", f"label-{i}", b"\x00" + s.encode())
for i, s in enumerate(["metadata.name=web", "spec.nodeName=node-1,status.phase!=Running",
                       "metadata.name=a\\,b\\=c\\\\", "metadata.namespace==default,type=Opaque", "=,,x"]):
    write("selector", f"field-{i}", b"\x01" + s.encode())
for i, s in enumerate([{"matchLabels": {"app": "web"}},
                       {"matchLabels": {"a": "b"}, "matchExpressions": [
                           {"key": "tier", "operator": "In", "values": ["b", "a"]},
                           {"key": "gpu", "operator": "DoesNotExist"},
                           {"key": "x", "operator": "NotIn", "values": ["1"]}]},
                       None, {}]):
    write("selector", f"json-{i}", b"\x02" + json.dumps(s).encode())

# quantity
for i, q in enumerate(["100m", "1Gi", "0.5", "1e3", "+1.5Ki", ".5", "5.", "-1", "1E-2", "1Ei", "1n",
                       "123456789012345678901234567890123456789", "0.000000000000000000000000000000000000000001",
                       "9.99999999999999999999E+18", "512Mi", "3900m", "1.5e-3"]):
    write("quantity", f"q-{i:02}", q)

# resource: [index into RESOURCES, 0 = raw JSON | 1 = generated] + data.
for i, k in enumerate(KINDS):
    write("resource", f"json-{k}", bytes([i, 0]) + json.dumps(fixture(k)).encode())
    write("resource", f"gen-{k}", bytes([i, 1]) + bytes(rng.randrange(256) for _ in range(128)))
write("resource", "json-deployment_applied", bytes([KINDS.index("deployment"), 0]) + json.dumps(fixture("deployment_applied")).encode())
