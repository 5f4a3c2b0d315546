//! Keeps the schema table of `api::protobuf` (the block between `// BEGIN GENERATED SCHEMA` and
//! `// END GENERATED SCHEMA` in `src/protobuf.rs`) in step with its sources: k8s-pb's prost code
//! (field numbers, field kinds, message types) and k8s-openapi's serde code (JSON names, `required`,
//! Go-inlined structs). Both are read from the cargo registry at the versions in `Cargo.lock`.
//!
//! `cargo test -p api --test protobuf_schema` fails when the table drifts;
//! `NODELESS_UPDATE_PROTOBUF_SCHEMA=1 cargo test -p api --test protobuf_schema` rewrites the block.
//! Where the registry sources are absent (vendored or offline builds) the test says so and skips.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};

/// The group/versions whose top-level kinds (and everything they reference) the table covers.
const ROOT_GROUP_VERSIONS: &[&str] = &[
    "v1",
    "apps/v1",
    "batch/v1",
    "autoscaling/v1",
    "autoscaling/v2",
    "coordination.k8s.io/v1",
    "events.k8s.io/v1",
    "policy/v1",
    "authentication.k8s.io/v1",
    "authorization.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
    "networking.k8s.io/v1",
    "storage.k8s.io/v1",
    "discovery.k8s.io/v1",
    "scheduling.k8s.io/v1",
    "node.k8s.io/v1",
    "certificates.k8s.io/v1",
];

/// Kinds served as subresources, which k8s-pb does not mark as resources.
const EXTRA_KINDS: &[(&str, &str, &str)] = &[
    ("autoscaling/v1", "Scale", "api::autoscaling::v1::Scale"),
    ("policy/v1", "Eviction", "api::policy::v1::Eviction"),
    (
        "authentication.k8s.io/v1",
        "TokenRequest",
        "api::authentication::v1::TokenRequest",
    ),
];

const META_KINDS: &[&str] = &[
    "DeleteOptions",
    "CreateOptions",
    "UpdateOptions",
    "PatchOptions",
    "GetOptions",
    "ListOptions",
    "Status",
];

/// Messages with a JSON form of their own (the decoder knows them by key).
const LEAVES: &[&str] = &[
    "apimachinery::pkg::apis::meta::v1::Time",
    "apimachinery::pkg::apis::meta::v1::MicroTime",
    "apimachinery::pkg::apis::meta::v1::Duration",
    "apimachinery::pkg::util::intstr::IntOrString",
    "apimachinery::pkg::api::resource::Quantity",
    "apimachinery::pkg::runtime::RawExtension",
    "apimachinery::pkg::apis::meta::v1::FieldsV1",
    "api::authentication::v1::ExtraValue",
    "api::authorization::v1::ExtraValue",
    "api::certificates::v1::ExtraValue",
    "apimachinery::pkg::apis::meta::v1::Verbs",
    "apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON",
];

/// The k8s-openapi module whose `required` fields count (the workspace's feature).
const OPENAPI_REQUIRED_VERSION: &str = "v1_33";
/// k8s-openapi modules searched for JSON names, newest first.
const OPENAPI_VERSIONS: &[&str] = &["v1_37", "v1_36", "v1_35", "v1_34", "v1_33"];

struct PbField {
    tag: u32,
    name: String,
    label: &'static str,
    /// `string`, `int32`, `int64`, `bool`, `double`, `bytes` or `message`.
    kind: String,
    /// Absolute module path of the message type, for `message`.
    message: Option<String>,
}

fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{name}\"") {
            let version = lines.next()?;
            return Some(
                version
                    .strip_prefix("version = \"")?
                    .trim_end_matches('"')
                    .to_string(),
            );
        }
    }
    None
}

/// `$CARGO_HOME/registry/src/*/NAME-VERSION/src`.
fn registry_source(name: &str, version: &str) -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    for index in fs::read_dir(cargo_home.join("registry/src")).ok()? {
        let dir = index.ok()?.path().join(format!("{name}-{version}/src"));
        if dir.is_dir() {
            return Some(dir);
        }
    }
    None
}

fn short(key: &str) -> String {
    let p: Vec<&str> = key.split("::").collect();
    let n = p.len();
    let versioned =
        |s: &str| s.starts_with('v') && s[1..].starts_with(|c: char| c.is_ascii_digit());
    if versioned(p[n - 2]) {
        format!("{}.{}.{}", p[n - 3], p[n - 2], p[n - 1])
    } else {
        format!("{}.{}", p[n - 2], p[n - 1])
    }
}

fn norm(s: &str) -> String {
    s.replace('_', "").to_lowercase()
}

fn quoted(s: &str) -> Option<&str> {
    let start = s.find('"')? + 1;
    let end = start + s[start..].find('"')?;
    Some(&s[start..end])
}

/// Reads every prost message of k8s-pb: `module::Name` -> fields; and the (apiVersion, kind) of resources.
/// Messages by absolute module path, and resources by (apiVersion, kind).
type PbSources = (
    HashMap<String, Vec<PbField>>,
    BTreeMap<(String, String), String>,
);

fn read_k8s_pb(root: &Path) -> PbSources {
    let mut messages = HashMap::new();
    let mut resources = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            }
        }
        let file = dir.join("mod.rs");
        if dir == root || !file.is_file() {
            continue;
        }
        let module = dir
            .strip_prefix(root)
            .unwrap()
            .to_str()
            .unwrap()
            .replace('/', "::");
        let text = fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut current: Option<String> = None;
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            if let Some(name) = line
                .strip_prefix("pub struct ")
                .and_then(|r| r.strip_suffix(" {"))
            {
                let key = format!("{module}::{name}");
                messages.insert(key.clone(), Vec::new());
                current = Some(key);
            }
            if let (Some(attr), Some(cur)) = (
                line.strip_prefix("#[prost(")
                    .and_then(|r| r.strip_suffix(")]")),
                current.as_ref(),
            ) {
                let mut decl = String::new();
                loop {
                    i += 1;
                    decl.push_str(lines[i]);
                    decl = decl.replace(",>", ">");
                    if decl.ends_with(',') && decl.matches('<').count() == decl.matches('>').count()
                    {
                        break;
                    }
                }
                let decl = decl
                    .strip_prefix("pub ")
                    .unwrap()
                    .strip_suffix(',')
                    .unwrap();
                let (name, ty) = decl.split_once(':').unwrap();
                let name = name.trim_start_matches("r#").to_string();
                let ty = ty.replace(' ', "");
                let tag = attr
                    .split("tag = \"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let mut kind = attr.split(',').next().unwrap().trim().to_string();
                let label = if kind.contains("map") {
                    "map"
                } else if attr.contains("repeated") {
                    "repeated"
                } else {
                    "optional"
                };
                let mut inner = ty.as_str();
                for wrapper in [
                    "::core::option::Option<",
                    "::prost::alloc::vec::Vec<",
                    "::prost::alloc::boxed::Box<",
                ] {
                    if let Some(rest) = inner.strip_prefix(wrapper) {
                        inner = rest.strip_suffix('>').unwrap();
                    }
                }
                if kind.starts_with("btree_map") {
                    let value_kind = attr
                        .split("\"string, ")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap();
                    if value_kind == "message" {
                        inner = ty
                            .strip_prefix("::prost::alloc::collections::BTreeMap<::prost::alloc::string::String,")
                            .unwrap()
                            .strip_suffix('>')
                            .unwrap();
                    }
                    kind = value_kind.to_string();
                } else if kind.starts_with("bytes") {
                    kind = "bytes".to_string();
                }
                let message = (kind == "message").then(|| {
                    let mut base: Vec<&str> = module.split("::").collect();
                    let mut parts: Vec<&str> = inner.split("::").collect();
                    while parts.first() == Some(&"super") {
                        base.pop();
                        parts.remove(0);
                    }
                    base.extend(parts);
                    base.join("::")
                });
                messages.get_mut(cur).unwrap().push(PbField {
                    tag,
                    name,
                    label,
                    kind,
                    message,
                });
            }
            if let Some(name) = line
                .strip_prefix("impl crate::Resource for ")
                .and_then(|r| r.strip_suffix(" {"))
            {
                let constant = |c: &str| {
                    lines[i..]
                        .iter()
                        .find(|l| l.starts_with(c))
                        .and_then(|l| quoted(l))
                        .unwrap()
                        .to_string()
                };
                let api_version = constant("const API_VERSION");
                let kind = constant("const KIND");
                resources.insert((api_version, kind), format!("{module}::{name}"));
            }
            i += 1;
        }
    }
    (messages, resources)
}

/// A k8s-openapi struct: (rust field -> JSON name, in source order) and its required rust fields.
#[derive(Clone)]
struct OpenApi {
    names: Vec<(String, String)>,
    required: HashSet<String>,
}

struct OpenApiIndex {
    root: PathBuf,
    dirs: HashMap<PathBuf, HashMap<String, OpenApi>>,
}

impl OpenApiIndex {
    fn dir(&mut self, dir: &Path) -> &HashMap<String, OpenApi> {
        self.dirs.entry(dir.to_path_buf()).or_insert_with(|| {
            let mut index = HashMap::new();
            let Ok(entries) = fs::read_dir(dir) else {
                return index;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let src = fs::read_to_string(&path).unwrap();
                let mut names = Vec::new();
                let mut required = HashSet::new();
                for line in src.lines() {
                    if let Some((json, rest)) = line.trim().split_once(" => Field::Key_") {
                        let json = json.trim_matches('"');
                        if let Some(rust) = rest.strip_suffix(',')
                            && !json.is_empty()
                            && json.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                            && line.trim().starts_with('"')
                        {
                            names.push((rust.to_string(), json.to_string()));
                        }
                    }
                    if let Some(rest) = line.strip_prefix("    pub ")
                        && let Some((field, ty)) = rest.split_once(": ")
                        && !ty.starts_with("Option<")
                    {
                        let field = field.trim_start_matches("r#");
                        if field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                            required.insert(field.to_string());
                        }
                    }
                }
                for line in src.lines() {
                    if let Some(rest) = line.strip_prefix("pub struct ") {
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        index.insert(
                            name.to_lowercase(),
                            OpenApi {
                                names: names.clone(),
                                required: required.clone(),
                            },
                        );
                    }
                }
            }
            index
        })
    }

    fn lookup(&mut self, key: &str) -> Option<OpenApi> {
        let parts: Vec<&str> = key.split("::").collect();
        let (name, module) = parts.split_last().unwrap();
        let name = name.to_lowercase();
        for version in OPENAPI_VERSIONS {
            let dir = module
                .iter()
                .fold(self.root.join(version), |d, p| d.join(p));
            if !dir.is_dir() {
                continue;
            }
            let Some(mut found) = self.dir(&dir).get(&name).cloned() else {
                continue;
            };
            if *version != OPENAPI_REQUIRED_VERSION {
                let old = module
                    .iter()
                    .fold(self.root.join(OPENAPI_REQUIRED_VERSION), |d, p| d.join(p));
                if old.is_dir()
                    && let Some(older) = self.dir(&old).get(&name)
                {
                    found.required = older.required.clone();
                }
            }
            return Some(found);
        }
        None
    }
}

fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' && !upper {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn generate(pb_root: &Path, openapi_root: &Path) -> String {
    let (messages, mut resources) = read_k8s_pb(pb_root);
    for (api_version, kind, key) in EXTRA_KINDS {
        resources.insert((api_version.to_string(), kind.to_string()), key.to_string());
    }
    let roots: Vec<(String, String, String)> = resources
        .iter()
        .filter(|((av, kind), _)| {
            ROOT_GROUP_VERSIONS.contains(&av.as_str()) && !kind.ends_with("List")
        })
        .map(|((av, kind), key)| (av.clone(), kind.clone(), key.clone()))
        .collect();
    let mut todo: VecDeque<String> = roots.iter().map(|r| r.2.clone()).collect();
    todo.extend(
        META_KINDS
            .iter()
            .map(|k| format!("apimachinery::pkg::apis::meta::v1::{k}")),
    );
    let mut seen: Vec<String> = Vec::new();
    while let Some(key) = todo.pop_front() {
        if seen.contains(&key) || LEAVES.contains(&key.as_str()) {
            continue;
        }
        for field in &messages[&key] {
            if let Some(m) = &field.message {
                todo.push_back(m.clone());
            }
        }
        seen.push(key);
    }
    let mut index = OpenApiIndex {
        root: openapi_root.to_path_buf(),
        dirs: HashMap::new(),
    };
    let mut info: HashMap<String, Option<OpenApi>> =
        seen.iter().map(|k| (k.clone(), index.lookup(k))).collect();
    // Go-inlined structs: a message field with no JSON name whose sub-fields are the parent's names.
    let mut inline: HashSet<(String, String)> = HashSet::new();
    let mut changed = true;
    while changed {
        changed = false;
        for key in &seen {
            let Some(parent) = info[key].clone() else {
                continue;
            };
            let names: HashSet<String> = parent.names.iter().map(|(r, _)| norm(r)).collect();
            for field in &messages[key] {
                let Some(child) = &field.message else {
                    continue;
                };
                if names.contains(&norm(&field.name))
                    || LEAVES.contains(&child.as_str())
                    || inline.contains(&(key.clone(), field.name.clone()))
                {
                    continue;
                }
                let sub: Vec<String> = messages[child].iter().map(|f| norm(&f.name)).collect();
                let child_unknown = info[child].is_none();
                if sub.iter().all(|n| names.contains(n))
                    || (child_unknown && sub.iter().any(|n| names.contains(n)))
                {
                    inline.insert((key.clone(), field.name.clone()));
                    changed = true;
                    if child_unknown {
                        info.insert(child.clone(), Some(parent.clone()));
                    }
                }
            }
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_by_key(|k| short(k));
    let mut lines = Vec::new();
    for key in &sorted {
        let openapi = &info[key];
        let mut specs = Vec::new();
        for field in &messages[key] {
            let ty = match &field.message {
                Some(m) => short(m),
                None => match field.kind.as_str() {
                    "string" => "s",
                    "int32" => "i",
                    "int64" => "l",
                    "bool" => "b",
                    "double" => "d",
                    "bytes" => "y",
                    other => panic!("{key}.{}: unknown kind {other}", field.name),
                }
                .to_string(),
            };
            let mut json = openapi.as_ref().and_then(|o| {
                o.names
                    .iter()
                    .filter(|(r, _)| norm(r) == norm(&field.name))
                    .map(|(_, j)| j.clone())
                    .next_back()
            });
            if inline.contains(&(key.clone(), field.name.clone())) {
                json = Some("-".to_string());
            }
            let json = json.unwrap_or_else(|| camel(&field.name));
            let required = openapi
                .as_ref()
                .is_some_and(|o| o.required.iter().any(|r| norm(r) == norm(&field.name)));
            let prefix = match field.label {
                "map" => "%",
                "repeated" => "*",
                _ => "",
            };
            specs.push(format!(
                "{} {json} {prefix}{ty}{}",
                field.tag,
                if required { "!" } else { "" }
            ));
        }
        lines.push(format!("{}|{}", short(key), specs.join("|")));
    }
    let mut out = vec![
        "// BEGIN GENERATED SCHEMA (regenerate: see the module docs; do not edit by hand)".to_string(),
        "/// Served kinds, `apiVersion kind` per line; the message is `group.version.Kind` (core for \"\").".into(),
        "const KINDS: &str = \"\\".into(),
    ];
    out.extend(
        roots
            .iter()
            .map(|(av, kind, _)| format!("{av} {kind}\\n\\")),
    );
    out.push("\";".into());
    out.push(String::new());
    out.push("/// One message per line: `group.version.Name|tag jsonName type|...` (see [`Schema::parse`]).".into());
    out.push("const SCHEMA: &str = \"\\".into());
    out.extend(lines.iter().map(|l| format!("{l}\\n\\")));
    out.push("\";".into());
    out.push("// END GENERATED SCHEMA".into());
    out.push(String::new());
    out.join("\n")
}

#[test]
fn schema_matches_k8s_pb() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock = fs::read_to_string(manifest.join("../../Cargo.lock")).unwrap();
    let (Some(pb_version), Some(openapi_version)) = (
        locked_version(&lock, "k8s-pb"),
        locked_version(&lock, "k8s-openapi"),
    ) else {
        panic!("k8s-pb or k8s-openapi missing from Cargo.lock");
    };
    let (Some(pb_root), Some(openapi_root)) = (
        registry_source("k8s-pb", &pb_version),
        registry_source("k8s-openapi", &openapi_version),
    ) else {
        eprintln!(
            "SKIPPED schema_matches_k8s_pb: k8s-pb {pb_version} / k8s-openapi {openapi_version} sources not in the cargo registry"
        );
        return;
    };
    let generated = generate(&pb_root, &openapi_root);
    let source_path = manifest.join("src/protobuf.rs");
    let source = fs::read_to_string(&source_path).unwrap();
    let begin = source.find("// BEGIN GENERATED SCHEMA").unwrap();
    let end_marker = "// END GENERATED SCHEMA\n";
    let end = source.find(end_marker).unwrap() + end_marker.len();
    let current = &source[begin..end];
    if current == generated {
        return;
    }
    if std::env::var_os("NODELESS_UPDATE_PROTOBUF_SCHEMA").is_some() {
        let updated = format!("{}{generated}{}", &source[..begin], &source[end..]);
        fs::write(&source_path, updated).unwrap();
        eprintln!("rewrote the schema block of {}", source_path.display());
        return;
    }
    let first_difference = current
        .lines()
        .zip(generated.lines())
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("\n  in file:   {a}\n  generated: {b}"))
        .unwrap_or_else(|| " (one is a prefix of the other)".to_string());
    panic!(
        "src/protobuf.rs's schema block differs from k8s-pb {pb_version} + k8s-openapi {openapi_version}{first_difference}\n\
         rerun with NODELESS_UPDATE_PROTOBUF_SCHEMA=1 to rewrite it"
    );
}
