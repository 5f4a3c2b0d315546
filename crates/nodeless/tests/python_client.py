"""Drives nodeless with the official Python `kubernetes` client (run by tests/clients.rs)."""
import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()

core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="web"),
    spec=client.V1DeploymentSpec(
        replicas=2,
        selector=client.V1LabelSelector(match_labels={"app": "web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx:1.27")]),
        ),
    ),
)
created = apps.create_namespaced_deployment("py", dep)
assert created.spec.replicas == 2, created.spec
assert created.spec.strategy.type == "RollingUpdate", "defaulted"


scaled = apps.patch_namespaced_deployment("web", "py", {"spec": {"replicas": 4}})
assert scaled.spec.replicas == 4
scale = apps.read_namespaced_deployment_scale("web", "py")
assert scale.spec.replicas == 4, scale

names = [d.metadata.name for d in apps.list_namespaced_deployment("py", label_selector="").items]
assert names == ["web"], names

cm = core.create_namespaced_config_map("py", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c", labels={"a": "b"}), data={"x": "1"}))
w = watch.Watch()
seen = []
for ev in w.stream(core.list_namespaced_config_map, "py", resource_version="0", timeout_seconds=5):
    seen.append((ev["type"], ev["object"].metadata.name))
    if ev["object"].metadata.name == "c":
        w.stop()
assert ("ADDED", "c") in seen, seen

try:
    core.read_namespaced_config_map("missing", "py")
    raise SystemExit("expected a 404")
except ApiException as e:
    assert e.status == 404, e

try:
    core.create_namespaced_config_map("py", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c")))
    raise SystemExit("expected a 409")
except ApiException as e:
    assert e.status == 409 and "AlreadyExists" in e.body, e

apps.delete_namespaced_deployment("web", "py")
print("python client: ok")
