//! `api::protobuf::decode` against bodies built the way kubectl builds them: k8s-pb messages encoded
//! with prost, wrapped in `runtime.Unknown` behind the `k8s\0` magic, with every Go value field
//! written (as Go's generated marshalling does) and pointer fields only when set. Each decoded object
//! is compared with the JSON kubectl would send for it, and round-tripped through the k8s-openapi
//! type to prove that every name and shape is the one Kubernetes JSON uses. Garbage never panics.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use api::protobuf::{ProtobufError, decode};
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::{RawExtension, TypeMeta, Unknown};
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Value, json};

/// The body kubectl sends: magic + runtime.Unknown (Go writes all four fields).
fn body<M: Message>(api_version: &str, kind: &str, object: &M) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(object.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = b"k8s\0".to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// ObjectMeta as Go marshals a client-built one: all value fields written, zero time as an empty message.
fn object_meta(name: &str, namespace: &str, l: &[(&str, &str)]) -> meta::ObjectMeta {
    meta::ObjectMeta {
        name: s(name),
        generate_name: s(""),
        namespace: s(namespace),
        self_link: s(""),
        uid: s(""),
        resource_version: s(""),
        generation: Some(0),
        creation_timestamp: Some(meta::Time::default()),
        labels: labels(l),
        ..Default::default()
    }
}

fn time(seconds: i64) -> Option<meta::Time> {
    Some(meta::Time {
        seconds: Some(seconds),
        nanos: Some(0),
    })
}

fn micro_time(seconds: i64, nanos: i32) -> Option<meta::MicroTime> {
    Some(meta::MicroTime {
        seconds: Some(seconds),
        nanos: Some(nanos),
    })
}

fn quantity(v: &str) -> Quantity {
    Quantity { string: s(v) }
}

/// A container as `kubectl create deployment --image=IMAGE` builds it, with Go's value fields.
fn container(name: &str, image: &str) -> core::Container {
    core::Container {
        name: s(name),
        image: s(image),
        working_dir: s(""),
        resources: Some(core::ResourceRequirements::default()),
        termination_message_path: s(""),
        termination_message_policy: s(""),
        image_pull_policy: s(""),
        stdin: Some(false),
        stdin_once: Some(false),
        tty: Some(false),
        ..Default::default()
    }
}

/// A PodSpec with Go's value fields written.
fn pod_spec(containers: Vec<core::Container>) -> core::PodSpec {
    core::PodSpec {
        containers,
        restart_policy: s(""),
        dns_policy: s(""),
        service_account_name: s(""),
        service_account: s(""),
        node_name: s(""),
        host_network: Some(false),
        host_pid: Some(false),
        host_ipc: Some(false),
        hostname: s(""),
        subdomain: s(""),
        scheduler_name: s(""),
        priority_class_name: s(""),
        ..Default::default()
    }
}

/// Asserts that k8s-openapi's type reads `json` and writes it back unchanged (nulls aside): every field
/// name and value shape is then the Kubernetes JSON one.
fn assert_openapi_roundtrip<K: serde::de::DeserializeOwned + serde::Serialize>(json: &Value) {
    fn strip_nulls(v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, strip_nulls(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
            v => v,
        }
    }
    let typed: K = serde_json::from_value(json.clone()).unwrap();
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(strip_nulls(back), strip_nulls(json.clone()));
}

#[test]
fn deployment_from_kubectl_create_deployment() {
    // kubectl create deployment web --image=nginx --replicas=2
    let app = [("app", "web")];
    let deployment = k8s_pb::api::apps::v1::Deployment {
        metadata: Some(object_meta("web", "", &app)),
        spec: Some(k8s_pb::api::apps::v1::DeploymentSpec {
            replicas: Some(2),
            selector: Some(meta::LabelSelector {
                match_labels: labels(&app),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(object_meta("", "", &app)),
                spec: Some(pod_spec(vec![container("nginx", "nginx")])),
            }),
            strategy: Some(k8s_pb::api::apps::v1::DeploymentStrategy {
                r#type: s(""),
                rolling_update: None,
            }),
            min_ready_seconds: Some(0),
            paused: Some(false),
            ..Default::default()
        }),
        status: Some(k8s_pb::api::apps::v1::DeploymentStatus {
            observed_generation: Some(0),
            replicas: Some(0),
            updated_replicas: Some(0),
            ready_replicas: Some(0),
            available_replicas: Some(0),
            unavailable_replicas: Some(0),
            ..Default::default()
        }),
    };
    let got = decode(&body("apps/v1", "Deployment", &deployment)).unwrap();
    // `kubectl create deployment web --image=nginx --replicas=2 --dry-run=client -o json`
    let want = json!({
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {"name": "web", "creationTimestamp": null, "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"creationTimestamp": null, "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}
            },
            "strategy": {}
        },
        "status": {}
    });
    assert_eq!(got, want);
    // apiVersion and kind come first, then the fields in Go's order.
    let keys: Vec<_> = got.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec", "status"]);
    assert_openapi_roundtrip::<k8s_openapi::api::apps::v1::Deployment>(&got);
}

#[test]
fn deployment_scaled_to_zero_keeps_replicas() {
    let deployment = k8s_pb::api::apps::v1::Deployment {
        metadata: Some(object_meta("web", "default", &[])),
        spec: Some(k8s_pb::api::apps::v1::DeploymentSpec {
            replicas: Some(0),
            ..Default::default()
        }),
        status: None,
    };
    let got = decode(&body("apps/v1", "Deployment", &deployment)).unwrap();
    assert_eq!(got["spec"], json!({"replicas": 0}));
    assert_eq!(
        got["metadata"],
        json!({"name": "web", "namespace": "default", "creationTimestamp": null})
    );
}

#[test]
fn pod_with_inline_structs_int_or_string_quantities_and_status() {
    let mut c = container("app", "registry.example/app:1");
    c.ports = vec![core::ContainerPort {
        name: s("http"),
        host_port: Some(0),
        container_port: Some(8080),
        protocol: s("TCP"),
        host_ip: s(""),
    }];
    c.env = vec![
        core::EnvVar {
            name: s("PLAIN"),
            value: s("x"),
            value_from: None,
        },
        core::EnvVar {
            name: s("FROM_CM"),
            value: s(""),
            value_from: Some(core::EnvVarSource {
                config_map_key_ref: Some(core::ConfigMapKeySelector {
                    local_object_reference: Some(core::LocalObjectReference { name: s("cfg") }),
                    key: s("k"),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        },
    ];
    c.env_from = vec![core::EnvFromSource {
        prefix: s(""),
        secret_ref: Some(core::SecretEnvSource {
            local_object_reference: Some(core::LocalObjectReference { name: s("creds") }),
            optional: None,
        }),
        ..Default::default()
    }];
    c.resources = Some(core::ResourceRequirements {
        limits: [
            ("cpu".to_string(), quantity("500m")),
            ("memory".to_string(), quantity("128Mi")),
        ]
        .into(),
        requests: [("cpu".to_string(), quantity("250m"))].into(),
        claims: vec![],
    });
    c.readiness_probe = Some(core::Probe {
        handler: Some(core::ProbeHandler {
            http_get: Some(core::HttpGetAction {
                path: s("/healthz"),
                port: Some(IntOrString {
                    r#type: Some(1),
                    int_val: Some(0),
                    str_val: s("http"),
                }),
                host: s(""),
                scheme: s("HTTP"),
                http_headers: vec![],
            }),
            ..Default::default()
        }),
        initial_delay_seconds: Some(0),
        timeout_seconds: Some(1),
        period_seconds: Some(10),
        success_threshold: Some(1),
        failure_threshold: Some(3),
        termination_grace_period_seconds: None,
    });
    c.liveness_probe = Some(core::Probe {
        handler: Some(core::ProbeHandler {
            tcp_socket: Some(core::TcpSocketAction {
                port: Some(IntOrString {
                    r#type: Some(0),
                    int_val: Some(8080),
                    str_val: s(""),
                }),
                host: s(""),
            }),
            ..Default::default()
        }),
        initial_delay_seconds: Some(5),
        ..Default::default()
    });
    c.security_context = Some(core::SecurityContext {
        run_as_user: Some(0),
        allow_privilege_escalation: Some(false),
        ..Default::default()
    });
    c.volume_mounts = vec![core::VolumeMount {
        name: s("config"),
        read_only: Some(true),
        mount_path: s("/etc/app"),
        sub_path: s(""),
        sub_path_expr: s(""),
        ..Default::default()
    }];
    let mut spec = pod_spec(vec![c]);
    spec.termination_grace_period_seconds = Some(0);
    spec.automount_service_account_token = Some(false);
    spec.node_selector = labels(&[("kubernetes.io/os", "linux")]);
    spec.volumes = vec![
        core::Volume {
            name: s("config"),
            volume_source: Some(core::VolumeSource {
                config_map: Some(core::ConfigMapVolumeSource {
                    local_object_reference: Some(core::LocalObjectReference { name: s("cfg") }),
                    items: vec![core::KeyToPath {
                        key: s("a"),
                        path: s("a.txt"),
                        mode: None,
                    }],
                    default_mode: Some(0o644),
                    optional: None,
                }),
                ..Default::default()
            }),
        },
        core::Volume {
            name: s("scratch"),
            volume_source: Some(core::VolumeSource {
                empty_dir: Some(core::EmptyDirVolumeSource {
                    medium: s(""),
                    size_limit: Some(quantity("1Gi")),
                }),
                ..Default::default()
            }),
        },
    ];
    spec.tolerations = vec![core::Toleration {
        key: s("node.kubernetes.io/not-ready"),
        operator: s("Exists"),
        value: s(""),
        effect: s("NoExecute"),
        toleration_seconds: Some(300),
    }];
    let pod = core::Pod {
        metadata: Some(meta::ObjectMeta {
            annotations: labels(&[("note", "")]),
            owner_references: vec![meta::OwnerReference {
                api_version: s("apps/v1"),
                kind: s("ReplicaSet"),
                name: s("web-abc"),
                uid: s("0b1c"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }],
            creation_timestamp: time(1_700_000_000),
            ..object_meta("web-abc-xyz", "default", &[("app", "web")])
        }),
        spec: Some(spec),
        status: Some(core::PodStatus {
            phase: s("Running"),
            pod_ip: s("10.0.0.7"),
            pod_ips: vec![core::PodIp { ip: s("10.0.0.7") }],
            host_ip: s("192.0.2.1"),
            start_time: time(1_700_000_100),
            conditions: vec![core::PodCondition {
                r#type: s("Ready"),
                status: s("True"),
                last_probe_time: Some(meta::Time::default()),
                last_transition_time: time(1_700_000_200),
                reason: s(""),
                message: s(""),
                ..Default::default()
            }],
            container_statuses: vec![core::ContainerStatus {
                name: s("app"),
                state: Some(core::ContainerState {
                    running: Some(core::ContainerStateRunning {
                        started_at: time(1_700_000_150),
                    }),
                    ..Default::default()
                }),
                last_state: Some(core::ContainerState::default()),
                ready: Some(true),
                restart_count: Some(0),
                image: s("registry.example/app:1"),
                image_id: s(""),
                container_id: s(""),
                started: Some(true),
                ..Default::default()
            }],
            qos_class: s("Burstable"),
            ..Default::default()
        }),
    };
    let got = decode(&body("v1", "Pod", &pod)).unwrap();
    let want = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-abc-xyz",
            "namespace": "default",
            "creationTimestamp": "2023-11-14T22:13:20Z",
            "labels": {"app": "web"},
            "annotations": {"note": ""},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "0b1c",
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "volumes": [
                {"name": "config", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "a.txt"}], "defaultMode": 420}},
                {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}}
            ],
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "envFrom": [{"secretRef": {"name": "creds"}}],
                "env": [
                    {"name": "PLAIN", "value": "x"},
                    {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k", "optional": false}}}
                ],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "250m"}},
                "volumeMounts": [{"name": "config", "readOnly": true, "mountPath": "/etc/app"}],
                "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 5},
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                    "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3
                },
                "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": false}
            }],
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "automountServiceAccountToken": false,
            "tolerations": [{
                "key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": 300
            }]
        },
        "status": {
            "phase": "Running",
            "conditions": [{
                "type": "Ready", "status": "True", "lastProbeTime": null,
                "lastTransitionTime": "2023-11-14T22:16:40Z"
            }],
            "hostIP": "192.0.2.1",
            "podIP": "10.0.0.7",
            "podIPs": [{"ip": "10.0.0.7"}],
            "startTime": "2023-11-14T22:15:00Z",
            "containerStatuses": [{
                "name": "app",
                "state": {"running": {"startedAt": "2023-11-14T22:15:50Z"}},
                "lastState": {},
                "ready": true,
                "restartCount": 0,
                "image": "registry.example/app:1",
                "imageID": "",
                "started": true
            }],
            "qosClass": "Burstable"
        }
    });
    assert_eq!(
        got,
        want,
        "got {}",
        serde_json::to_string_pretty(&got).unwrap()
    );
    assert_openapi_roundtrip::<k8s_openapi::api::core::v1::Pod>(&got);
}

#[test]
fn namespace_configmap_secret_service_account() {
    // kubectl create namespace team-a
    let ns = core::Namespace {
        metadata: Some(object_meta("team-a", "", &[])),
        spec: Some(core::NamespaceSpec::default()),
        status: Some(core::NamespaceStatus {
            phase: s(""),
            conditions: vec![],
        }),
    };
    let got = decode(&body("v1", "Namespace", &ns)).unwrap();
    let want = json!({
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": {"name": "team-a", "creationTimestamp": null},
        "spec": {}, "status": {}
    });
    assert_eq!(got, want);
    assert_openapi_roundtrip::<k8s_openapi::api::core::v1::Namespace>(&got);

    // kubectl create configmap cfg --from-literal=a=1 --from-file=bin=./blob
    let cm = core::ConfigMap {
        metadata: Some(object_meta("cfg", "default", &[])),
        immutable: None,
        data: labels(&[("a", "1"), ("empty", "")]),
        binary_data: [("bin".to_string(), vec![0u8, 1, 2, 255])].into(),
    };
    let got = decode(&body("v1", "ConfigMap", &cm)).unwrap();
    let want = json!({
        "kind": "ConfigMap", "apiVersion": "v1",
        "metadata": {"name": "cfg", "namespace": "default", "creationTimestamp": null},
        "data": {"a": "1", "empty": ""},
        "binaryData": {"bin": "AAEC/w=="}
    });
    assert_eq!(got, want);
    assert_openapi_roundtrip::<k8s_openapi::api::core::v1::ConfigMap>(&got);

    // kubectl create secret generic creds --from-literal=password=s3cret
    let secret = core::Secret {
        metadata: Some(object_meta("creds", "", &[])),
        immutable: Some(true),
        data: [("password".to_string(), b"s3cret".to_vec())].into(),
        string_data: BTreeMap::new(),
        r#type: s("Opaque"),
    };
    let got = decode(&body("v1", "Secret", &secret)).unwrap();
    let want = json!({
        "kind": "Secret", "apiVersion": "v1",
        "metadata": {"name": "creds", "creationTimestamp": null},
        "immutable": true,
        "data": {"password": "czNjcmV0"},
        "type": "Opaque"
    });
    assert_eq!(got, want);
    assert_openapi_roundtrip::<k8s_openapi::api::core::v1::Secret>(&got);

    // kubectl create serviceaccount builder
    let sa = core::ServiceAccount {
        metadata: Some(object_meta("builder", "ci", &[])),
        secrets: vec![core::ObjectReference {
            name: s("builder-token"),
            ..Default::default()
        }],
        image_pull_secrets: vec![core::LocalObjectReference { name: s("regcred") }],
        automount_service_account_token: Some(false),
    };
    let got = decode(&body("v1", "ServiceAccount", &sa)).unwrap();
    assert_eq!(got["secrets"], json!([{"name": "builder-token"}]));
    assert_eq!(got["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(got["automountServiceAccountToken"], json!(false));
    assert_openapi_roundtrip::<k8s_openapi::api::core::v1::ServiceAccount>(&got);
}

#[test]
fn service_from_kubectl_create_service() {
    // kubectl create service clusterip web --tcp=80:8080
    let svc = core::Service {
        metadata: Some(object_meta("web", "", &[("app", "web")])),
        spec: Some(core::ServiceSpec {
            ports: vec![core::ServicePort {
                name: s("80-8080"),
                protocol: s("TCP"),
                port: Some(80),
                target_port: Some(IntOrString {
                    r#type: Some(0),
                    int_val: Some(8080),
                    str_val: s(""),
                }),
                node_port: Some(0),
                ..Default::default()
            }],
            selector: labels(&[("app", "web")]),
            cluster_ip: s(""),
            r#type: s("ClusterIP"),
            session_affinity: s(""),
            load_balancer_ip: s(""),
            external_name: s(""),
            external_traffic_policy: s(""),
            health_check_node_port: Some(0),
            publish_not_ready_addresses: Some(false),
            ..Default::default()
        }),
        status: Some(core::ServiceStatus {
            load_balancer: Some(core::LoadBalancerStatus::default()),
            conditions: vec![],
        }),
    };
    let got = decode(&body("v1", "Service", &svc)).unwrap();
    let want = json!({
        "kind": "Service", "apiVersion": "v1",
        "metadata": {"name": "web", "creationTimestamp": null, "labels": {"app": "web"}},
        "spec": {
            "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
            "selector": {"app": "web"},
            "type": "ClusterIP"
        },
        "status": {"loadBalancer": {}}
    });
    assert_eq!(got, want);
    assert_openapi_roundtrip::<k8s_openapi::api::core::v1::Service>(&got);
}

#[test]
fn node_endpoints_binding_and_core_event() {
    let node = core::Node {
        metadata: Some(object_meta(
            "worker-1",
            "",
            &[("kubernetes.io/hostname", "worker-1")],
        )),
        spec: Some(core::NodeSpec {
            pod_cidr: s("10.244.1.0/24"),
            pod_cid_rs: vec!["10.244.1.0/24".into()],
            provider_id: s(""),
            unschedulable: Some(true),
            taints: vec![core::Taint {
                key: s("node.kubernetes.io/unschedulable"),
                value: s(""),
                effect: s("NoSchedule"),
                time_added: time(1_700_000_000),
            }],
            ..Default::default()
        }),
        status: Some(core::NodeStatus {
            capacity: [
                ("cpu".to_string(), quantity("4")),
                ("pods".to_string(), quantity("110")),
            ]
            .into(),
            allocatable: [("cpu".to_string(), quantity("3800m"))].into(),
            phase: s(""),
            addresses: vec![core::NodeAddress {
                r#type: s("InternalIP"),
                address: s("192.0.2.10"),
            }],
            node_info: Some(core::NodeSystemInfo {
                machine_id: s("m1"),
                system_uuid: s("u1"),
                boot_id: s("b1"),
                kernel_version: s("6.1"),
                os_image: s("Debian"),
                container_runtime_version: s("nodeless://0.1"),
                kubelet_version: s("v1.33.0"),
                kube_proxy_version: s(""),
                operating_system: s("linux"),
                architecture: s("amd64"),
                swap: None,
            }),
            daemon_endpoints: Some(core::NodeDaemonEndpoints {
                kubelet_endpoint: Some(core::DaemonEndpoint { port: Some(10250) }),
            }),
            ..Default::default()
        }),
    };
    let got = decode(&body("v1", "Node", &node)).unwrap();
    assert_eq!(got["spec"]["podCIDR"], json!("10.244.1.0/24"));
    assert_eq!(got["spec"]["podCIDRs"], json!(["10.244.1.0/24"]));
    assert_eq!(got["spec"]["unschedulable"], json!(true));
    assert_eq!(
        got["spec"]["taints"][0]["timeAdded"],
        json!("2023-11-14T22:13:20Z")
    );
    assert_eq!(
        got["status"]["capacity"],
        json!({"cpu": "4", "pods": "110"})
    );
    assert_eq!(
        got["status"]["nodeInfo"],
        json!({
            "machineID": "m1", "systemUUID": "u1", "bootID": "b1", "kernelVersion": "6.1",
            "osImage": "Debian", "containerRuntimeVersion": "nodeless://0.1", "kubeletVersion": "v1.33.0",
            "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"
        })
    );
    assert_eq!(
        got["status"]["daemonEndpoints"],
        json!({"kubeletEndpoint": {"Port": 10250}})
    );
    assert_openapi_roundtrip::<k8s_openapi::api::core::v1::Node>(&got);

    let endpoints = core::Endpoints {
        metadata: Some(object_meta("web", "default", &[])),
        subsets: vec![core::EndpointSubset {
            addresses: vec![core::EndpointAddress {
                ip: s("10.0.0.7"),
                hostname: s(""),
                node_name: s("worker-1"),
                target_ref: Some(core::ObjectReference {
                    kind: s("Pod"),
                    namespace: s("default"),
                    name: s("web-1"),
                    ..Default::default()
                }),
            }],
            ports: vec![core::EndpointPort {
                name: s(""),
                port: Some(8080),
                protocol: s("TCP"),
                app_protocol: None,
            }],
            ..Default::default()
        }],
    };
    let got = decode(&body("v1", "Endpoints", &endpoints)).unwrap();
    assert_eq!(
        got["subsets"],
        json!([{
            "addresses": [{"ip": "10.0.0.7", "nodeName": "worker-1",
                           "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-1"}}],
            "ports": [{"port": 8080, "protocol": "TCP"}]
        }])
    );
    assert_openapi_roundtrip::<k8s_openapi::api::core::v1::Endpoints>(&got);

    let binding = core::Binding {
        metadata: Some(object_meta("web-1", "default", &[])),
        target: Some(core::ObjectReference {
            kind: s("Node"),
            name: s("worker-1"),
            ..Default::default()
        }),
    };
    let got = decode(&body("v1", "Binding", &binding)).unwrap();
    assert_eq!(got["target"], json!({"kind": "Node", "name": "worker-1"}));
    assert_eq!(got["kind"], json!("Binding"));
    assert_openapi_roundtrip::<k8s_openapi::api::core::v1::Binding>(&got);

    let event = core::Event {
        metadata: Some(object_meta("web-1.17a", "default", &[])),
        involved_object: Some(core::ObjectReference {
            kind: s("Pod"),
            name: s("web-1"),
            ..Default::default()
        }),
        reason: s("Scheduled"),
        message: s("Successfully assigned default/web-1 to worker-1"),
        source: Some(core::EventSource {
            component: s("nodeless-scheduler"),
            host: s(""),
        }),
        first_timestamp: time(1_700_000_000),
        last_timestamp: time(1_700_000_000),
        count: Some(1),
        r#type: s("Normal"),
        event_time: micro_time(1_700_000_000, 123_456_789),
        reporting_component: s("nodeless-scheduler"),
        reporting_instance: s(""),
        action: s("Binding"),
        ..Default::default()
    };
    let got = decode(&body("v1", "Event", &event)).unwrap();
    assert_eq!(got["eventTime"], json!("2023-11-14T22:13:20.123456Z"));
    assert_eq!(got["firstTimestamp"], json!("2023-11-14T22:13:20Z"));
    assert_eq!(got["count"], json!(1));
    assert_eq!(got["reportingComponent"], json!("nodeless-scheduler"));
    assert_eq!(got["source"], json!({"component": "nodeless-scheduler"}));
    assert_openapi_roundtrip::<k8s_openapi::api::core::v1::Event>(&got);
}

#[test]
fn replicaset_scale_job_cronjob() {
    let rs = k8s_pb::api::apps::v1::ReplicaSet {
        metadata: Some(object_meta("web-abc", "default", &[])),
        spec: Some(k8s_pb::api::apps::v1::ReplicaSetSpec {
            replicas: Some(3),
            min_ready_seconds: Some(0),
            selector: Some(meta::LabelSelector {
                match_expressions: vec![meta::LabelSelectorRequirement {
                    key: s("tier"),
                    operator: s("In"),
                    values: vec!["web".into(), "api".into()],
                }],
                ..Default::default()
            }),
            template: None,
        }),
        status: Some(k8s_pb::api::apps::v1::ReplicaSetStatus {
            replicas: Some(0),
            ..Default::default()
        }),
    };
    let got = decode(&body("apps/v1", "ReplicaSet", &rs)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"replicas": 3, "selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]}})
    );
    assert_eq!(got["status"], json!({"replicas": 0}));
    assert_openapi_roundtrip::<k8s_openapi::api::apps::v1::ReplicaSet>(&got);

    // kubectl scale deployment web --replicas=0
    let scale = k8s_pb::api::autoscaling::v1::Scale {
        metadata: Some(meta::ObjectMeta {
            resource_version: s("42"),
            ..object_meta("web", "default", &[])
        }),
        spec: Some(k8s_pb::api::autoscaling::v1::ScaleSpec { replicas: Some(0) }),
        status: Some(k8s_pb::api::autoscaling::v1::ScaleStatus {
            replicas: Some(2),
            selector: s("app=web"),
        }),
    };
    let got = decode(&body("autoscaling/v1", "Scale", &scale)).unwrap();
    let want = json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": "42", "creationTimestamp": null},
        "spec": {"replicas": 0},
        "status": {"replicas": 2, "selector": "app=web"}
    });
    assert_eq!(got, want);
    assert_openapi_roundtrip::<k8s_openapi::api::autoscaling::v1::Scale>(&got);

    // kubectl create job hello --image=busybox -- echo hi
    let mut c = container("hello", "busybox");
    c.command = vec!["echo".into(), "hi".into()];
    let mut spec = pod_spec(vec![c]);
    spec.restart_policy = s("Never");
    let template = core::PodTemplateSpec {
        metadata: Some(object_meta("", "", &[])),
        spec: Some(spec),
    };
    let job = k8s_pb::api::batch::v1::Job {
        metadata: Some(object_meta("hello", "", &[])),
        spec: Some(k8s_pb::api::batch::v1::JobSpec {
            template: Some(template.clone()),
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(0),
            ..Default::default()
        }),
        status: Some(k8s_pb::api::batch::v1::JobStatus {
            active: Some(0),
            succeeded: Some(0),
            failed: Some(0),
            ..Default::default()
        }),
    };
    let got = decode(&body("batch/v1", "Job", &job)).unwrap();
    let want = json!({
        "kind": "Job", "apiVersion": "batch/v1",
        "metadata": {"name": "hello", "creationTimestamp": null},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"creationTimestamp": null},
                "spec": {
                    "containers": [{"name": "hello", "image": "busybox", "command": ["echo", "hi"], "resources": {}}],
                    "restartPolicy": "Never"
                }
            },
            "ttlSecondsAfterFinished": 0
        },
        "status": {}
    });
    assert_eq!(got, want);
    assert_openapi_roundtrip::<k8s_openapi::api::batch::v1::Job>(&got);

    // kubectl create cronjob nightly --image=busybox --schedule="0 3 * * *"
    let cron = k8s_pb::api::batch::v1::CronJob {
        metadata: Some(object_meta("nightly", "", &[])),
        spec: Some(k8s_pb::api::batch::v1::CronJobSpec {
            schedule: s("0 3 * * *"),
            time_zone: None,
            job_template: Some(k8s_pb::api::batch::v1::JobTemplateSpec {
                metadata: Some(object_meta("nightly", "", &[])),
                spec: Some(k8s_pb::api::batch::v1::JobSpec {
                    template: Some(template),
                    ..Default::default()
                }),
            }),
            concurrency_policy: s(""),
            suspend: Some(false),
            successful_jobs_history_limit: Some(0),
            ..Default::default()
        }),
        status: Some(k8s_pb::api::batch::v1::CronJobStatus {
            last_schedule_time: time(1_700_000_000),
            ..Default::default()
        }),
    };
    let got = decode(&body("batch/v1", "CronJob", &cron)).unwrap();
    assert_eq!(got["spec"]["schedule"], json!("0 3 * * *"));
    assert_eq!(got["spec"]["suspend"], json!(false));
    assert_eq!(got["spec"]["successfulJobsHistoryLimit"], json!(0));
    assert_eq!(
        got["spec"]["jobTemplate"]["metadata"],
        json!({"name": "nightly", "creationTimestamp": null})
    );
    assert_eq!(
        got["status"],
        json!({"lastScheduleTime": "2023-11-14T22:13:20Z"})
    );
    assert_openapi_roundtrip::<k8s_openapi::api::batch::v1::CronJob>(&got);
}

#[test]
fn lease_and_events_v1_use_micro_time() {
    let lease = k8s_pb::api::coordination::v1::Lease {
        metadata: Some(object_meta("worker-1", "kube-node-lease", &[])),
        spec: Some(k8s_pb::api::coordination::v1::LeaseSpec {
            holder_identity: s("worker-1"),
            lease_duration_seconds: Some(40),
            renew_time: micro_time(1_700_000_000, 5_000),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    };
    let got = decode(&body("coordination.k8s.io/v1", "Lease", &lease)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"holderIdentity": "worker-1", "leaseDurationSeconds": 40,
               "renewTime": "2023-11-14T22:13:20.000005Z", "leaseTransitions": 0})
    );
    assert_openapi_roundtrip::<k8s_openapi::api::coordination::v1::Lease>(&got);

    let event = k8s_pb::api::events::v1::Event {
        metadata: Some(object_meta("web-1.17a", "default", &[])),
        event_time: micro_time(1_700_000_000, 999_999_999),
        series: Some(k8s_pb::api::events::v1::EventSeries {
            count: Some(2),
            last_observed_time: micro_time(1_700_000_060, 0),
        }),
        reporting_controller: s("nodeless/scheduler"),
        reporting_instance: s("nodeless-1"),
        action: s("Scheduling"),
        reason: s("FailedScheduling"),
        regarding: Some(core::ObjectReference {
            kind: s("Pod"),
            name: s("web-1"),
            ..Default::default()
        }),
        note: s("no capacity"),
        r#type: s("Warning"),
        deprecated_first_timestamp: Some(meta::Time::default()),
        deprecated_count: Some(0),
        ..Default::default()
    };
    let got = decode(&body("events.k8s.io/v1", "Event", &event)).unwrap();
    assert_eq!(got["eventTime"], json!("2023-11-14T22:13:20.999999Z"));
    assert_eq!(
        got["series"],
        json!({"count": 2, "lastObservedTime": "2023-11-14T22:14:20.000000Z"})
    );
    assert_eq!(got["regarding"], json!({"kind": "Pod", "name": "web-1"}));
    assert_eq!(got["deprecatedFirstTimestamp"], Value::Null);
    assert_openapi_roundtrip::<k8s_openapi::api::events::v1::Event>(&got);
}

#[test]
fn eviction_token_request_and_delete_options() {
    // kubectl drain: an Eviction per pod.
    let eviction = k8s_pb::api::policy::v1::Eviction {
        metadata: Some(object_meta("web-1", "default", &[])),
        delete_options: Some(meta::DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        }),
    };
    let got = decode(&body("policy/v1", "Eviction", &eviction)).unwrap();
    let want = json!({
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": "web-1", "namespace": "default", "creationTimestamp": null},
        "deleteOptions": {"gracePeriodSeconds": 0}
    });
    assert_eq!(got, want);
    assert_openapi_roundtrip::<k8s_openapi::api::policy::v1::Eviction>(&got);

    // kubectl create token builder --duration=1h
    let token = k8s_pb::api::authentication::v1::TokenRequest {
        metadata: Some(object_meta("", "", &[])),
        spec: Some(k8s_pb::api::authentication::v1::TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        }),
        status: Some(k8s_pb::api::authentication::v1::TokenRequestStatus {
            token: s(""),
            expiration_timestamp: Some(meta::Time::default()),
        }),
    };
    let got = decode(&body("authentication.k8s.io/v1", "TokenRequest", &token)).unwrap();
    let want = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "metadata": {"creationTimestamp": null},
        "spec": {"expirationSeconds": 3600},
        "status": {"token": "", "expirationTimestamp": null}
    });
    assert_eq!(got, want);

    // DELETE with a body, under any group's apiVersion.
    let options = meta::DeleteOptions {
        grace_period_seconds: Some(30),
        preconditions: Some(meta::Preconditions {
            uid: s("0b1c"),
            resource_version: None,
        }),
        orphan_dependents: None,
        propagation_policy: s("Foreground"),
        dry_run: vec!["All".into()],
        ignore_store_read_error_with_cluster_breaking_potential: None,
    };
    for api_version in ["v1", "apps/v1", "meta.k8s.io/v1"] {
        let got = decode(&body(api_version, "DeleteOptions", &options)).unwrap();
        let want = json!({
            "apiVersion": api_version, "kind": "DeleteOptions",
            "gracePeriodSeconds": 30,
            "preconditions": {"uid": "0b1c"},
            "propagationPolicy": "Foreground",
            "dryRun": ["All"]
        });
        assert_eq!(got, want);
    }
}

#[test]
fn subject_access_review_extra_is_a_map_of_string_lists() {
    use k8s_pb::api::authorization::v1 as authz;
    let review = authz::SubjectAccessReview {
        metadata: Some(object_meta("", "", &[])),
        spec: Some(authz::SubjectAccessReviewSpec {
            non_resource_attributes: Some(authz::NonResourceAttributes {
                path: s("/healthz"),
                verb: s("get"),
            }),
            user: s("alice"),
            groups: vec!["system:authenticated".into()],
            extra: [
                (
                    "scopes".to_string(),
                    authz::ExtraValue {
                        items: vec!["a".into(), "b".into()],
                    },
                ),
                ("empty".to_string(), authz::ExtraValue { items: vec![] }),
            ]
            .into(),
            uid: s(""),
            ..Default::default()
        }),
        status: None,
    };
    let got = decode(&body(
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
        &review,
    ))
    .unwrap();
    assert_eq!(
        got["spec"],
        json!({
            "nonResourceAttributes": {"path": "/healthz", "verb": "get"},
            "user": "alice",
            "groups": ["system:authenticated"],
            "extra": {"empty": [], "scopes": ["a", "b"]}
        })
    );
    assert_openapi_roundtrip::<k8s_openapi::api::authorization::v1::SubjectAccessReview>(&got);
}

#[test]
fn raw_extension_and_managed_fields_embed_json() {
    let revision = k8s_pb::api::apps::v1::ControllerRevision {
        metadata: Some(meta::ObjectMeta {
            managed_fields: vec![meta::ManagedFieldsEntry {
                manager: s("kubectl-create"),
                operation: s("Update"),
                api_version: s("apps/v1"),
                time: time(1_700_000_000),
                fields_type: s("FieldsV1"),
                fields_v1: Some(meta::FieldsV1 {
                    raw: Some(br#"{"f:data":{}}"#.to_vec()),
                }),
                subresource: s(""),
            }],
            ..object_meta("web-1", "default", &[])
        }),
        data: Some(RawExtension {
            raw: Some(br#"{"spec":{"template":{"x":[1,2]}}}"#.to_vec()),
        }),
        revision: Some(1),
    };
    let got = decode(&body("apps/v1", "ControllerRevision", &revision)).unwrap();
    assert_eq!(got["data"], json!({"spec": {"template": {"x": [1, 2]}}}));
    assert_eq!(
        got["metadata"]["managedFields"],
        json!([{"manager": "kubectl-create", "operation": "Update", "apiVersion": "apps/v1",
                "time": "2023-11-14T22:13:20Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {}}}])
    );
    assert_eq!(got["revision"], json!(1));

    // A RawExtension holding a protobuf object (magic + Unknown) decodes to that object's JSON.
    let inner = body(
        "v1",
        "ConfigMap",
        &core::ConfigMap {
            metadata: Some(object_meta("cfg", "", &[])),
            data: labels(&[("a", "1")]),
            ..Default::default()
        },
    );
    let nested = k8s_pb::api::apps::v1::ControllerRevision {
        metadata: None,
        data: Some(RawExtension { raw: Some(inner) }),
        revision: None,
    };
    let got = decode(&body("apps/v1", "ControllerRevision", &nested)).unwrap();
    assert_eq!(
        got["data"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "creationTimestamp": null}, "data": {"a": "1"}})
    );

    let bad = k8s_pb::api::apps::v1::ControllerRevision {
        data: Some(RawExtension {
            raw: Some(b"{not json".to_vec()),
        }),
        ..Default::default()
    };
    assert!(matches!(
        decode(&body("apps/v1", "ControllerRevision", &bad)),
        Err(ProtobufError::EmbeddedJson { .. })
    ));
}

#[test]
fn proto_merge_and_forward_compatibility() {
    // A singular message sent twice is merged (proto semantics); an unknown field number is skipped.
    let first = core::ConfigMap {
        metadata: Some(object_meta("cfg", "", &[])),
        ..Default::default()
    }
    .encode_to_vec();
    let second = core::ConfigMap {
        metadata: Some(meta::ObjectMeta {
            namespace: s("ns"),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let mut raw = first;
    raw.extend(second);
    raw.extend([0xf8, 0x07, 0x01]); // field 127, varint 1
    raw.extend([0xfa, 0x07, 0x02, 0xaa, 0xbb]); // field 127, bytes
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: s("v1"),
            kind: s("ConfigMap"),
        }),
        raw: Some(raw),
        ..Default::default()
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    let got = decode(&body).unwrap();
    assert_eq!(
        got["metadata"],
        json!({"name": "cfg", "namespace": "ns", "creationTimestamp": null})
    );
}

#[test]
fn envelope_errors() {
    assert!(matches!(decode(b""), Err(ProtobufError::BadMagic)));
    assert!(matches!(
        decode(b"{\"kind\":\"Pod\"}"),
        Err(ProtobufError::BadMagic)
    ));
    assert!(matches!(decode(b"k8s"), Err(ProtobufError::BadMagic)));
    assert!(matches!(
        decode(b"k8s\0"),
        Err(ProtobufError::MissingTypeMeta)
    ));
    let unknown_kind = body("example.com/v1", "Widget", &core::ConfigMap::default());
    match decode(&unknown_kind) {
        Err(ProtobufError::UnknownKind { api_version, kind }) => {
            assert_eq!(
                (api_version.as_str(), kind.as_str()),
                ("example.com/v1", "Widget")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        decode(&body("v1", "Deployment", &core::ConfigMap::default())),
        Err(ProtobufError::UnknownKind { .. })
    ));
    let gzip = Unknown {
        type_meta: Some(TypeMeta {
            api_version: s("v1"),
            kind: s("ConfigMap"),
        }),
        raw: Some(vec![]),
        content_encoding: s("gzip"),
        content_type: s(""),
    };
    let mut b = b"k8s\0".to_vec();
    b.extend(gzip.encode_to_vec());
    assert!(matches!(decode(&b), Err(ProtobufError::ContentEncoding(_))));
    // A JSON payload inside the envelope is accepted as is.
    let json_inside = Unknown {
        type_meta: Some(TypeMeta {
            api_version: s("v1"),
            kind: s("ConfigMap"),
        }),
        raw: Some(br#"{"metadata":{"name":"cfg"}}"#.to_vec()),
        content_encoding: s(""),
        content_type: s("application/json"),
    };
    let mut b = b"k8s\0".to_vec();
    b.extend(json_inside.encode_to_vec());
    assert_eq!(
        decode(&b).unwrap(),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}})
    );
    // A string field holding a varint is a wire type error, not a guess.
    let mut wrong = b"k8s\0".to_vec();
    wrong.extend(
        Unknown {
            type_meta: Some(TypeMeta {
                api_version: s("v1"),
                kind: s("ConfigMap"),
            }),
            raw: Some(vec![0x0a, 0x02, 0x08, 0x01]), // metadata { name: varint 1 }
            ..Default::default()
        }
        .encode_to_vec(),
    );
    assert!(matches!(
        decode(&wrong),
        Err(ProtobufError::WrongWireType { .. })
    ));
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    // ControllerRevision.data holding a protobuf ControllerRevision, 500 times over.
    let mut inner = body("v1", "ConfigMap", &core::ConfigMap::default());
    for _ in 0..500 {
        let revision = k8s_pb::api::apps::v1::ControllerRevision {
            metadata: None,
            data: Some(RawExtension { raw: Some(inner) }),
            revision: None,
        };
        inner = body("apps/v1", "ControllerRevision", &revision);
    }
    assert!(matches!(decode(&inner), Err(ProtobufError::TooDeep)));
    // Deep embedded JSON stops at serde_json's own recursion limit.
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let revision = k8s_pb::api::apps::v1::ControllerRevision {
        data: Some(RawExtension {
            raw: Some(deep_json.into_bytes()),
        }),
        ..Default::default()
    };
    assert!(decode(&body("apps/v1", "ControllerRevision", &revision)).is_err());
}

#[test]
fn kubectl_bodies_decode_to_kubectl_json() {
    for (name, hex, want) in KUBECTL_GOLDEN {
        let body = unhex(hex);
        let got = decode(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Value = serde_json::from_str(want).unwrap();
        assert_eq!(
            got,
            want,
            "{name}: got {}",
            serde_json::to_string(&got).unwrap()
        );
    }
    // Two more kubectl bodies without a client-side dry run: `create token` and `auth can-i`.
    let token = "6b3873000a280a1861757468656e7469636174696f6e2e6b38732e696f2f7631120c546f6b656e52657175657374121d0a100a0012001a0022002a00320038004200120320901c1a040a0012001a002200";
    assert_eq!(
        decode(&unhex(token)).unwrap(),
        json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"expirationSeconds": 3600},
            "status": {"token": "", "expirationTimestamp": null}
        })
    );
    let can_i = "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a656374416363657373526576696577123c0a100a0012001a0022002a00320038004200121e0a1c0a0764656661756c7412036765741a0022002a04706f647332003a001a08080012001a0020001a002200";
    let got = decode(&unhex(can_i)).unwrap();
    assert_eq!(
        got,
        json!({
            "kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": {"resourceAttributes": {"namespace": "default", "verb": "get", "resource": "pods"}},
            "status": {"allowed": false}
        })
    );
    assert_openapi_roundtrip::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>(&got);
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Bodies captured from kubectl 1.33 (`kubectl.1.33 -n default create ...` against a logging server on
/// loopback), with `--dry-run=client -o json` of the same command: the JSON the JSON API would carry.
const KUBECTL_GOLDEN: &[(&str, &str, &str)] = &[
    (
        "POST-apis_apps_v1_namespaces_default_deployments",
        "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412b2010a260a0377656212001a0764656661756c7422002a003200380042005a0a0a036170701203776562127a0802120c0a0a0a0361707012037765621a600a1c0a0012001a0022002a003200380042005a0a0a036170701203776562124012220a056e67696e7812056e67696e782a0042006a007200800100880100900100a201001a00320042004a0052005800600068008201008a01009a0100c2010022020a00280038001a0c0800100018002000280038001a002200",
        r#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"web","namespace":"default","creationTimestamp":null,"labels":{"app":"web"}},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"creationTimestamp":null,"labels":{"app":"web"}},"spec":{"containers":[{"name":"nginx","image":"nginx","resources":{}}]}},"strategy":{}},"status":{}}"#,
    ),
    (
        "POST-api_v1_namespaces",
        "6b3873000a0f0a02763112094e616d657370616365121e0a160a067465616d2d6112001a0022002a0032003800420012001a020a001a002200",
        r#"{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"team-a","creationTimestamp":null},"spec":{},"status":{}}"#,
    ),
    (
        "POST-api_v1_namespaces_default_configmaps",
        "6b3873000a0f0a0276311209436f6e6669674d617012240a1a0a0363666712001a0764656661756c7422002a0032003800420012060a01611201311a002200",
        r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cfg","namespace":"default","creationTimestamp":null},"data":{"a":"1"}}"#,
    ),
    (
        "POST-api_v1_namespaces_default_secrets",
        "6b3873000a0c0a027631120653656372657412340a1c0a05637265647312001a0764656661756c7422002a0032003800420012120a0870617373776f726412067333637265741a001a002200",
        r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"creds","namespace":"default","creationTimestamp":null},"data":{"password":"czNjcmV0"}}"#,
    ),
    (
        "POST-api_v1_namespaces_default_services",
        "6b3873000a0d0a02763112075365727669636512790a2c0a0677656273766312001a0764656661756c7422002a003200380042005a0d0a03617070120677656273766312450a1b0a0738302d38303830120354435018502207080010903f1a002800120d0a0361707012067765627376631a002209436c757374657249503a00420052005a00600068001a020a001a002200",
        r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"websvc","namespace":"default","creationTimestamp":null,"labels":{"app":"websvc"}},"spec":{"ports":[{"name":"80-8080","protocol":"TCP","port":80,"targetPort":8080}],"selector":{"app":"websvc"},"type":"ClusterIP"},"status":{"loadBalancer":{}}}"#,
    ),
    (
        "POST-apis_batch_v1_namespaces_default_jobs",
        "6b3873000a0f0a0862617463682f763112034a6f621291010a1c0a0568656c6c6f12001a0764656661756c7422002a00320038004200126732650a100a0012001a0022002a003200380042001251122e0a0568656c6c6f120762757379626f781a046563686f1a0268692a0042006a007200800100880100900100a201001a054e65766572320042004a0052005800600068008201008a01009a0100c201001a082000280030003a001a002200",
        r#"{"kind":"Job","apiVersion":"batch/v1","metadata":{"name":"hello","namespace":"default","creationTimestamp":null},"spec":{"template":{"metadata":{"creationTimestamp":null},"spec":{"containers":[{"name":"hello","image":"busybox","command":["echo","hi"],"resources":{}}],"restartPolicy":"Never"}}},"status":{}}"#,
    ),
    (
        "POST-apis_batch_v1_namespaces_default_cronjobs",
        "6b3873000a130a0862617463682f7631120743726f6e4a6f6212b2010a1e0a076e696768746c7912001a0764656661756c7422002a00320038004200128d010a09302033202a202a202a1a002a7e0a170a076e696768746c7912001a0022002a00320038004200126332610a100a0012001a0022002a00320038004200124d12260a076e696768746c79120762757379626f782a0042006a007200800100880100900100a201001a094f6e4661696c757265320042004a0052005800600068008201008a01009a0100c201001a001a002200",
        r#"{"kind":"CronJob","apiVersion":"batch/v1","metadata":{"name":"nightly","namespace":"default","creationTimestamp":null},"spec":{"schedule":"0 3 * * *","jobTemplate":{"metadata":{"name":"nightly","creationTimestamp":null},"spec":{"template":{"metadata":{"creationTimestamp":null},"spec":{"containers":[{"name":"nightly","image":"busybox","resources":{}}],"restartPolicy":"OnFailure"}}}}},"status":{}}"#,
    ),
    (
        "POST-api_v1_namespaces_default_serviceaccounts",
        "6b3873000a140a027631120e536572766963654163636f756e7412200a1e0a076275696c64657212001a0764656661756c7422002a003200380042001a002200",
        r#"{"kind":"ServiceAccount","apiVersion":"v1","metadata":{"name":"builder","namespace":"default","creationTimestamp":null}}"#,
    ),
    (
        "POST-apis_policy_v1_namespaces_default_poddisruptionbudgets",
        "6b3873000a200a09706f6c6963792f76311213506f6444697372757074696f6e427564676574123e0a180a017012001a0764656661756c7422002a0032003800420012160a06080010011a00120c0a0a0a0361707012037765621a0a080018002000280030001a002200",
        r#"{"kind":"PodDisruptionBudget","apiVersion":"policy/v1","metadata":{"name":"p","namespace":"default","creationTimestamp":null},"spec":{"minAvailable":1,"selector":{"matchLabels":{"app":"web"}}},"status":{"disruptionsAllowed":0,"currentHealthy":0,"desiredHealthy":0,"expectedPods":0}}"#,
    ),
    (
        "POST-apis_scheduling.k8s.io_v1_priorityclasses",
        "6b3873000a250a147363686564756c696e672e6b38732e696f2f7631120d5072696f72697479436c61737312330a140a046869676812001a0022002a0032003800420010e807180022002a14507265656d70744c6f7765725072696f726974791a002200",
        r#"{"kind":"PriorityClass","apiVersion":"scheduling.k8s.io/v1","metadata":{"name":"high","creationTimestamp":null},"value":1000,"preemptionPolicy":"PreemptLowerPriority"}"#,
    ),
    (
        "POST-api_v1_namespaces_default_resourcequotas",
        "6b3873000a130a027631120d5265736f7572636551756f746112380a180a017112001a0764656661756c7422002a00320038004200121a0a0a0a0363707512030a01320a0c0a04706f647312040a0231301a001a002200",
        r#"{"kind":"ResourceQuota","apiVersion":"v1","metadata":{"name":"q","namespace":"default","creationTimestamp":null},"spec":{"hard":{"cpu":"2","pods":"10"}},"status":{}}"#,
    ),
    (
        "POST-apis_networking.k8s.io_v1_namespaces_default_ingresses",
        "6b3873000a1f0a146e6574776f726b696e672e6b38732e696f2f76311207496e677265737312510a1a0a03696e6712001a0764656661756c7422002a00320038004200122f1a2d0a07666f6f2e636f6d12220a200a1e0a042f626172120f220d0a047376633112050a0010903f1a0545786163741a020a001a002200",
        r#"{"kind":"Ingress","apiVersion":"networking.k8s.io/v1","metadata":{"name":"ing","namespace":"default","creationTimestamp":null},"spec":{"rules":[{"host":"foo.com","http":{"paths":[{"path":"/bar","pathType":"Exact","backend":{"service":{"name":"svc1","port":{"number":8080}}}}]}}]},"status":{"loadBalancer":{}}}"#,
    ),
];

/// How many fuzz rounds to run: the default, or `NODELESS_FUZZ_ITERATIONS` for a longer hunt.
fn iterations(default: usize) -> usize {
    std::env::var("NODELESS_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn sample_bodies() -> Vec<Vec<u8>> {
    let mut c = container("app", "nginx");
    c.ports = vec![core::ContainerPort {
        container_port: Some(80),
        ..Default::default()
    }];
    c.resources = Some(core::ResourceRequirements {
        limits: [("cpu".to_string(), quantity("1"))].into(),
        ..Default::default()
    });
    let pod = core::Pod {
        metadata: Some(object_meta("p", "default", &[("a", "b")])),
        spec: Some(pod_spec(vec![c])),
        status: Some(core::PodStatus {
            start_time: time(1_700_000_000),
            ..Default::default()
        }),
    };
    let secret = core::Secret {
        metadata: Some(object_meta("s", "", &[])),
        data: [("k".to_string(), vec![1, 2, 3])].into(),
        ..Default::default()
    };
    let lease = k8s_pb::api::coordination::v1::Lease {
        metadata: Some(object_meta("l", "", &[])),
        spec: Some(k8s_pb::api::coordination::v1::LeaseSpec {
            renew_time: micro_time(1, 2),
            ..Default::default()
        }),
    };
    let revision = k8s_pb::api::apps::v1::ControllerRevision {
        data: Some(RawExtension {
            raw: Some(body("v1", "Secret", &secret)),
        }),
        ..Default::default()
    };
    let mut bodies: Vec<Vec<u8>> = KUBECTL_GOLDEN
        .iter()
        .map(|(_, hex, _)| unhex(hex))
        .collect();
    bodies.extend([
        body("v1", "Pod", &pod),
        body("v1", "Secret", &secret),
        body("coordination.k8s.io/v1", "Lease", &lease),
        body("apps/v1", "ControllerRevision", &revision),
    ]);
    bodies
}

#[test]
fn truncations_and_mutations_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for sample in sample_bodies() {
        assert!(decode(&sample).is_ok());
        for len in 0..sample.len() {
            let _ = decode(&sample[..len]);
        }
        for _ in 0..iterations(1_500) {
            let mut mutated = sample.clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(mutated.len());
                match rng.below(4) {
                    0 => mutated[at] ^= 1 << rng.below(8),
                    1 => mutated[at] = rng.next_u64() as u8,
                    2 => {
                        mutated.insert(at, rng.next_u64() as u8);
                    }
                    _ => {
                        mutated.remove(at);
                        if mutated.is_empty() {
                            mutated.push(0);
                        }
                    }
                }
            }
            let _ = decode(&mutated);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let seed = std::env::var("NODELESS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(42);
    let mut rng = Rng(seed | 1);
    for _ in 0..iterations(20_000) {
        let len = rng.below(200);
        let mut b = b"k8s\0".to_vec();
        b.extend((0..len).map(|_| rng.next_u64() as u8));
        let _ = decode(&b);
        // Random raw bytes inside a valid envelope for a big kind: exercises every field type.
        let kind = ["Pod", "Node", "Service", "Secret", "Event"][rng.below(5)];
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: s("v1"),
                kind: s(kind),
            }),
            raw: Some(b[4..].to_vec()),
            ..Default::default()
        };
        let mut b = b"k8s\0".to_vec();
        b.extend(unknown.encode_to_vec());
        let _ = decode(&b);
    }
}
