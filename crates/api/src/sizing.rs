//! Serverless pod sizing: the CPU and memory a pod's sandbox gets (and is billed for), as
//! EKS on Fargate computes it (/work/shared/reference/fargate.md):
//!
//! 1. CPU and memory separately: the larger of the largest init container's request and the
//!    sum of the regular containers' requests; a container with only a limit counts its limit.
//!    Sidecars (init containers with `restartPolicy: Always`) run beside the others, so they
//!    count as Kubernetes counts them: added to the regular sum and to the init containers
//!    that start after them.
//! 2. Add 256 MiB of memory for the node components.
//! 3. Round up to the smallest supported combination (GB = 1024 MiB here).
//!
//! Also parses Kubernetes quantities (`resource.Quantity` syntax). Pure functions; must not
//! depend on anything that does IO.

use std::fmt;

use serde_json::Value;

/// Why a pod cannot be sized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizingError {
    /// A quantity that does not parse (upstream's message).
    #[error("{0}")]
    Quantity(String),
    /// A resource quantity of a container that is not valid.
    #[error("{field}: invalid quantity {value:?}: {reason}")]
    InvalidResource {
        field: String,
        value: String,
        reason: String,
    },
    /// The pod needs more than the largest size.
    #[error("pod needs {needed}, more than the largest size {largest}")]
    TooLarge { needed: String, largest: String },
}

const ERR_FORMAT: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
const ERR_NUMERIC: &str = "unable to parse numeric part of quantity";
const ERR_SUFFIX: &str = "unable to parse quantity's suffix";

/// An exact Kubernetes quantity: `mantissa * 10^exp10 * 1024^binary`, with a sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    pub negative: bool,
    pub mantissa: u128,
    pub exp10: i32,
    pub binary: u32,
}

/// Parse a Kubernetes quantity: an optionally signed decimal number (`1`, `1.5`, `.5`, `5.`)
/// followed by a binary suffix (`Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`), a decimal suffix (`n`, `u`,
/// `m`, `k`, `M`, `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`).
pub fn parse_quantity(s: &str) -> Result<Quantity, SizingError> {
    let err = |m: &str| SizingError::Quantity(m.to_string());
    if s.is_empty() {
        return Err(err(ERR_FORMAT));
    }
    let bytes = s.as_bytes();
    let mut pos = 0;
    let mut negative = false;
    if let Some(&c) = bytes.first()
        && (c == b'+' || c == b'-')
    {
        negative = c == b'-';
        pos = 1;
    }
    let num_start = pos;
    while pos < bytes.len() && (bytes[pos].is_ascii_digit() || bytes[pos] == b'.') {
        pos += 1;
    }
    let number = &s[num_start..pos];
    let suffix = &s[pos..];
    if number.is_empty() {
        return Err(err(ERR_FORMAT));
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return Err(err(ERR_NUMERIC));
    }
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        if digits.len() > 36 {
            return Err(err(ERR_NUMERIC));
        }
        digits.parse().map_err(|_| err(ERR_NUMERIC))?
    };
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| err(ERR_NUMERIC))?;
    let (suffix_exp10, binary): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 1),
        "Mi" => (0, 2),
        "Gi" => (0, 3),
        "Ti" => (0, 4),
        "Pi" => (0, 5),
        "Ei" => (0, 6),
        other => {
            let Some(exp) = other.strip_prefix('e').or_else(|| other.strip_prefix('E')) else {
                return Err(err(ERR_SUFFIX));
            };
            let valid = !exp.is_empty()
                && exp.trim_start_matches(['+', '-']).len() + 1 >= exp.len()
                && exp
                    .trim_start_matches(['+', '-'])
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                && !exp.trim_start_matches(['+', '-']).is_empty();
            if !valid {
                return Err(err(ERR_SUFFIX));
            }
            let e: i32 = exp.parse().map_err(|_| err(ERR_SUFFIX))?;
            if !(-1000..=1000).contains(&e) {
                return Err(err(ERR_SUFFIX));
            }
            (e, 0)
        }
    };
    Ok(Quantity {
        negative,
        mantissa,
        exp10: suffix_exp10 - frac_len,
        binary,
    })
}

impl Quantity {
    /// `ceil(self * 10^scale)` for a non-negative quantity; None when negative or too large.
    pub fn scaled_ceil(&self, scale: i32) -> Option<u128> {
        if self.mantissa == 0 {
            return Some(0);
        }
        if self.negative {
            return None;
        }
        let bin = 1u128.checked_shl(10 * self.binary)?;
        let n = self.mantissa.checked_mul(bin)?;
        let e = self.exp10.checked_add(scale)?;
        if e >= 0 {
            let p = 10u128.checked_pow(u32::try_from(e).ok()?)?;
            n.checked_mul(p)
        } else {
            let Some(d) = 10u128.checked_pow(e.unsigned_abs()) else {
                // Divisor larger than any u128 numerator: a positive value rounds up to 1.
                return Some(1);
            };
            Some(n.div_ceil(d))
        }
    }

    /// Upstream `MilliValue` (rounded up), for CPU.
    pub fn milli_value(&self) -> Option<u128> {
        self.scaled_ceil(3)
    }

    /// Upstream `Value` (rounded up), for bytes.
    pub fn value(&self) -> Option<u128> {
        self.scaled_ceil(0)
    }
}

/// A provisioned pod size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodSize {
    pub millicpu: u32,
    pub memory_mib: u64,
}

/// Memory the node components take on every pod, added before rounding.
pub const OVERHEAD_MIB: u64 = 256;

/// The supported combinations: vCPU (milli) and the memory choices (MiB) for it.
fn sizes() -> impl Iterator<Item = PodSize> {
    const GIB: u64 = 1024;
    let table: [(u32, Vec<u64>); 7] = [
        (250, vec![512, GIB, 2 * GIB]),
        (500, (1..=4).map(|g| g * GIB).collect()),
        (1000, (2..=8).map(|g| g * GIB).collect()),
        (2000, (4..=16).map(|g| g * GIB).collect()),
        (4000, (8..=30).map(|g| g * GIB).collect()),
        (8000, (16..=60).step_by(4).map(|g| g * GIB).collect()),
        (16000, (32..=120).step_by(8).map(|g| g * GIB).collect()),
    ];
    table.into_iter().flat_map(|(millicpu, mems)| {
        mems.into_iter().map(move |memory_mib| PodSize {
            millicpu,
            memory_mib,
        })
    })
}

/// The largest supported size (16 vCPU, 120 GB).
pub fn largest_size() -> PodSize {
    PodSize {
        millicpu: 16000,
        memory_mib: 120 * 1024,
    }
}

/// `1000 -> "1"`, `250 -> "0.25"`, `8448 / 1024 -> "8.25"`: a ratio without trailing zeros.
fn decimal(numerator: u128, denominator: u128) -> String {
    let whole = numerator / denominator;
    let mut rem = numerator % denominator;
    if rem == 0 {
        return whole.to_string();
    }
    let mut out = format!("{whole}.");
    for _ in 0..4 {
        rem *= 10;
        out.push(char::from(
            b'0' + u8::try_from(rem / denominator).unwrap_or(0),
        ));
        rem %= denominator;
        if rem == 0 {
            break;
        }
    }
    out
}

impl PodSize {
    /// vCPUs as a number (0.25, 2...).
    pub fn vcpu(&self) -> f64 {
        f64::from(self.millicpu) / 1000.0
    }

    /// Memory in GB of 1024 MiB (0.5, 9...).
    pub fn memory_gb(&self) -> f64 {
        self.memory_mib as f64 / 1024.0
    }

    /// The `CapacityProvisioned` annotation value, e.g. `0.25vCPU 0.5GB`.
    pub fn capacity_provisioned(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for PodSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}vCPU {}GB",
            decimal(u128::from(self.millicpu), 1000),
            decimal(u128::from(self.memory_mib), 1024)
        )
    }
}

/// What one container asks for: (millicpu, memory bytes).
fn container_request(c: &Value, field: &str) -> Result<(u128, u128), SizingError> {
    let resources = c.get("resources");
    let pick = |name: &str| -> Option<(&'static str, &Value)> {
        let requested = resources
            .and_then(|r| r.get("requests"))
            .and_then(|r| r.get(name));
        let limited = resources
            .and_then(|r| r.get("limits"))
            .and_then(|r| r.get(name));
        match (requested, limited) {
            (Some(v), _) if !v.is_null() => Some(("requests", v)),
            (_, Some(v)) if !v.is_null() => Some(("limits", v)),
            _ => None,
        }
    };
    let amount = |name: &str, scale: i32| -> Result<u128, SizingError> {
        let Some((kind, v)) = pick(name) else {
            return Ok(0);
        };
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        let invalid = |reason: String| SizingError::InvalidResource {
            field: format!("{field}.resources.{kind}.{name}"),
            value: text.clone(),
            reason,
        };
        let q = parse_quantity(&text).map_err(|e| invalid(e.to_string()))?;
        q.scaled_ceil(scale)
            .ok_or_else(|| invalid("must be a non-negative quantity of reasonable size".into()))
    };
    Ok((amount("cpu", 3)?, amount("memory", 0)?))
}

fn containers<'a>(spec: &'a Value, key: &str) -> &'a [Value] {
    spec.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The size a pod with this spec gets (the Fargate rules, see the module docs). Accepts a
/// PodSpec, or a whole Pod (its `spec` is used).
pub fn pod_size(pod_spec: &Value) -> Result<PodSize, SizingError> {
    let spec = match pod_spec.get("spec") {
        Some(s) if pod_spec.get("containers").is_none() => s,
        _ => pod_spec,
    };
    let mut regular = (0u128, 0u128);
    for (i, c) in containers(spec, "containers").iter().enumerate() {
        let (cpu, mem) = container_request(c, &format!("spec.containers[{i}]"))?;
        regular = (regular.0.saturating_add(cpu), regular.1.saturating_add(mem));
    }
    let mut sidecars = (0u128, 0u128);
    let mut init_max = (0u128, 0u128);
    for (i, c) in containers(spec, "initContainers").iter().enumerate() {
        let (cpu, mem) = container_request(c, &format!("spec.initContainers[{i}]"))?;
        if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            sidecars = (
                sidecars.0.saturating_add(cpu),
                sidecars.1.saturating_add(mem),
            );
            // A sidecar starts while the sidecars before it run.
            init_max = (init_max.0.max(sidecars.0), init_max.1.max(sidecars.1));
        } else {
            init_max = (
                init_max.0.max(cpu.saturating_add(sidecars.0)),
                init_max.1.max(mem.saturating_add(sidecars.1)),
            );
        }
    }
    let running = (
        regular.0.saturating_add(sidecars.0),
        regular.1.saturating_add(sidecars.1),
    );
    let millicpu = running.0.max(init_max.0);
    let memory_bytes = running.1.max(init_max.1);
    let memory_mib = memory_bytes
        .div_ceil(1024 * 1024)
        .saturating_add(u128::from(OVERHEAD_MIB));
    sizes()
        .find(|s| u128::from(s.millicpu) >= millicpu && u128::from(s.memory_mib) >= memory_mib)
        .ok_or_else(|| SizingError::TooLarge {
            needed: format!(
                "{}vCPU {}GB",
                decimal(millicpu, 1000),
                decimal(memory_mib, 1024)
            ),
            largest: largest_size().to_string(),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn milli(s: &str) -> u128 {
        parse_quantity(s).unwrap().milli_value().unwrap()
    }

    fn bytes(s: &str) -> u128 {
        parse_quantity(s).unwrap().value().unwrap()
    }

    fn size(spec: Value) -> String {
        pod_size(&spec).unwrap().to_string()
    }

    fn one(cpu: &str, memory: &str) -> Value {
        json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]})
    }

    #[test]
    fn quantities() {
        assert_eq!(milli("1"), 1000);
        assert_eq!(milli("250m"), 250);
        assert_eq!(milli("0.5"), 500);
        assert_eq!(milli(".5"), 500);
        assert_eq!(milli("5."), 5000);
        assert_eq!(milli("1.5k"), 1_500_000);
        assert_eq!(milli("100n"), 1, "rounds up");
        assert_eq!(milli("1u"), 1);
        assert_eq!(milli("0"), 0);
        assert_eq!(milli("+2"), 2000);
        assert_eq!(bytes("1Ki"), 1024);
        assert_eq!(bytes("512Mi"), 512 * 1024 * 1024);
        assert_eq!(bytes("1.5Gi"), 1536 * 1024 * 1024);
        assert_eq!(bytes("2Ti"), 2 << 40);
        assert_eq!(bytes("1Pi"), 1 << 50);
        assert_eq!(bytes("1Ei"), 1 << 60);
        assert_eq!(bytes("1k"), 1000);
        assert_eq!(bytes("1M"), 1_000_000);
        assert_eq!(bytes("8G"), 8_000_000_000);
        assert_eq!(bytes("1T"), 1_000_000_000_000);
        assert_eq!(bytes("1P"), 10u128.pow(15));
        assert_eq!(bytes("1E"), 10u128.pow(18));
        assert_eq!(bytes("1e3"), 1000);
        assert_eq!(bytes("1E3"), 1000);
        assert_eq!(bytes("12e-1"), 2, "1.2 rounds up");
        assert_eq!(bytes("1e+2"), 100);
        assert_eq!(bytes("129e6"), 129_000_000);
        assert_eq!(bytes("0.1m"), 1);
        assert!(parse_quantity("-1").unwrap().negative);
        assert_eq!(parse_quantity("-1").unwrap().value(), None);
    }

    #[test]
    fn bad_quantities() {
        for (s, msg) in [
            ("", ERR_FORMAT),
            ("Mi", ERR_FORMAT),
            ("abc", ERR_FORMAT),
            ("-", ERR_FORMAT),
            ("1..2", ERR_NUMERIC),
            (".", ERR_NUMERIC),
            ("1Mib", ERR_SUFFIX),
            ("1 Mi", ERR_SUFFIX),
            ("1e", ERR_SUFFIX),
            ("1e1.5", ERR_SUFFIX),
            ("1e+-2", ERR_SUFFIX),
            ("1x", ERR_SUFFIX),
            ("1ki", ERR_SUFFIX),
            ("1K", ERR_SUFFIX),
            ("1e99999999999", ERR_SUFFIX),
        ] {
            assert_eq!(
                parse_quantity(s),
                Err(SizingError::Quantity(msg.to_string())),
                "{s:?}"
            );
        }
        // Parses, but is too large to size.
        assert_eq!(parse_quantity("1e1000").unwrap().value(), None);
        assert_eq!(parse_quantity("1e-1000").unwrap().value(), Some(1));
        assert!(parse_quantity(&"9".repeat(37)).is_err());
    }

    #[test]
    fn fargate_examples() {
        assert_eq!(
            size(json!({"containers": [{"name": "c", "image": "nginx"}]})),
            "0.25vCPU 0.5GB"
        );
        assert_eq!(size(json!({})), "0.25vCPU 0.5GB");
        assert_eq!(size(one("1", "8Gi")), "2vCPU 9GB");
        assert_eq!(
            pod_size(&one("1", "8Gi")).unwrap(),
            PodSize {
                millicpu: 2000,
                memory_mib: 9 * 1024
            }
        );
    }

    #[test]
    fn rounding_table() {
        let cases = [
            ("100m", "100Mi", "0.25vCPU 0.5GB"),
            ("250m", "256Mi", "0.25vCPU 0.5GB"),
            ("250m", "257Mi", "0.25vCPU 1GB"),
            ("250m", "1792Mi", "0.25vCPU 2GB"),
            ("250m", "1793Mi", "0.5vCPU 3GB"),
            ("251m", "0", "0.5vCPU 1GB"),
            ("500m", "3.5Gi", "0.5vCPU 4GB"),
            ("500m", "4Gi", "1vCPU 5GB"),
            ("1", "0", "1vCPU 2GB"),
            ("1", "2Gi", "1vCPU 3GB"),
            ("1", "7.75Gi", "1vCPU 8GB"),
            ("1.5", "1Gi", "2vCPU 4GB"),
            ("2", "15.75Gi", "2vCPU 16GB"),
            ("2", "16Gi", "4vCPU 17GB"),
            ("3", "20Gi", "4vCPU 21GB"),
            ("4", "29.75Gi", "4vCPU 30GB"),
            ("4", "30Gi", "8vCPU 32GB"),
            ("5", "1Gi", "8vCPU 16GB"),
            ("8", "16Gi", "8vCPU 20GB"),
            ("8", "59.75Gi", "8vCPU 60GB"),
            ("9", "1Gi", "16vCPU 32GB"),
            ("16", "60Gi", "16vCPU 64GB"),
            ("16", "119.75Gi", "16vCPU 120GB"),
            ("4000m", "8G", "4vCPU 8GB"),
        ];
        for (cpu, mem, want) in cases {
            assert_eq!(size(one(cpu, mem)), want, "{cpu} {mem}");
        }
    }

    #[test]
    fn too_large() {
        let e = pod_size(&one("17", "1Gi")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod needs 17vCPU 1.25GB, more than the largest size 16vCPU 120GB"
        );
        let e = pod_size(&one("1", "120Gi")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod needs 1vCPU 120.25GB, more than the largest size 16vCPU 120GB"
        );
        assert!(matches!(
            pod_size(&one("1", "1e30")),
            Err(SizingError::TooLarge { .. })
        ));
    }

    #[test]
    fn sums_inits_and_limits() {
        let spec = json!({
            "initContainers": [
                {"name": "migrate", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}},
                {"name": "small", "resources": {"requests": {"cpu": "100m"}}}
            ],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}}},
                // Only limits: the limit counts.
                {"name": "c", "resources": {"limits": {"cpu": "250m", "memory": "512Mi"}}},
                // A request beats the limit.
                {"name": "d", "resources": {"requests": {"memory": "256Mi"}, "limits": {"memory": "4Gi"}}}
            ]
        });
        // cpu: max(2, 1.25) = 2; memory: max(1Gi, 3.75Gi) + 256Mi = 4Gi -> 2vCPU 4GB.
        assert_eq!(size(spec), "2vCPU 4GB");
        // The init container dominates memory.
        let spec = json!({
            "initContainers": [{"name": "i", "resources": {"requests": {"memory": "6Gi"}}}],
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]
        });
        assert_eq!(size(spec), "1vCPU 7GB");
        // Numbers as JSON numbers (YAML `cpu: 1`).
        let spec = json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": 1, "memory": 1073741824}}}]});
        assert_eq!(size(spec), "1vCPU 2GB");
        // A whole Pod works too.
        let pod = json!({"kind": "Pod", "spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "3"}}}]}});
        assert_eq!(size(pod), "4vCPU 8GB");
    }

    #[test]
    fn sidecars_run_beside_the_containers() {
        let spec = json!({
            "initContainers": [
                {"name": "proxy", "restartPolicy": "Always", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
                {"name": "setup", "resources": {"requests": {"cpu": "1", "memory": "512Mi"}}}
            ],
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]
        });
        // Running: 1 vCPU, 2Gi; setup runs beside the proxy: 1.5 vCPU, 1.5Gi -> 1.5 vCPU, 2Gi + 256Mi.
        assert_eq!(size(spec), "2vCPU 4GB");
    }

    #[test]
    fn invalid_quantities_name_the_field() {
        let spec = json!({"containers": [{"name": "a"}, {"name": "b", "resources": {"limits": {"memory": "lots"}}}]});
        let e = pod_size(&spec).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "spec.containers[1].resources.limits.memory: invalid quantity \"lots\": {ERR_FORMAT}"
            )
        );
        let spec = json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "-1"}}}]});
        assert!(matches!(
            pod_size(&spec),
            Err(SizingError::InvalidResource { .. })
        ));
        let spec = json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": true}}}]});
        assert!(pod_size(&spec).is_err());
    }

    #[test]
    fn display_and_helpers() {
        let s = PodSize {
            millicpu: 250,
            memory_mib: 512,
        };
        assert_eq!(s.capacity_provisioned(), "0.25vCPU 0.5GB");
        assert_eq!(s.vcpu(), 0.25);
        assert_eq!(s.memory_gb(), 0.5);
        assert_eq!(largest_size().to_string(), "16vCPU 120GB");
        assert_eq!(sizes().count(), 3 + 4 + 7 + 13 + 23 + 12 + 12);
        // The table is ordered: the first fit is the smallest.
        let all: Vec<PodSize> = sizes().collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for s in [
            "",
            "+",
            "-",
            ".",
            "..",
            "e",
            "1e",
            "1e-",
            "9".repeat(100).as_str(),
            "1Ei",
            "99999999999999999999999999999999999Ei",
            "1e38",
            "\u{0}",
            "é",
            "1é",
        ] {
            if let Ok(q) = parse_quantity(s) {
                let _ = q.milli_value();
                let _ = q.value();
            }
        }
        for spec in [
            json!(null),
            json!([]),
            json!({"containers": "x"}),
            json!({"containers": [null, 1, {"resources": []}]}),
            json!({"containers": [{"resources": {"requests": {"cpu": "99999999999999999999999999999999999Ei"}}}]}),
        ] {
            let _ = pod_size(&spec);
        }
    }
}
