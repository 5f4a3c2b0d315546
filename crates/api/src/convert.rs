//! Conversions between resources that share storage: `events.k8s.io/v1 Event` is stored as
//! `core/v1 Event` (as upstream, both APIs serve the same objects).

use serde_json::{Map, Value};

/// A resource stored as another: its storage location and the two conversions.
#[derive(Debug, Clone, Copy)]
pub struct Conversion {
    /// The storage key's group segment ("core" for the core group) and plural.
    pub storage_group: &'static str,
    pub storage_plural: &'static str,
    /// From the stored form to this resource's form.
    pub from_storage: fn(Value) -> Value,
    /// From this resource's form to the stored form.
    pub to_storage: fn(Value) -> Value,
}

const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(obj: Value, api_version: &str, forward: bool) -> Value {
    let Value::Object(map) = obj else { return obj };
    let mut out = Map::new();
    for (k, v) in map {
        let renamed = EVENT_FIELDS
            .iter()
            .find(|(core, v1)| if forward { core == &k } else { v1 == &k })
            .map(|(core, v1)| if forward { *v1 } else { *core });
        match (k.as_str(), renamed) {
            ("apiVersion", _) => {
                out.insert(k, Value::String(api_version.to_string()));
            }
            (_, Some(name)) => {
                out.insert(name.to_string(), v);
            }
            (_, None) => {
                out.insert(k, v);
            }
        }
    }
    Value::Object(out)
}

/// core/v1 Event -> events.k8s.io/v1 Event.
pub fn event_core_to_v1(obj: Value) -> Value {
    rename(obj, "events.k8s.io/v1", true)
}

/// events.k8s.io/v1 Event -> core/v1 Event.
pub fn event_v1_to_core(obj: Value) -> Value {
    rename(obj, "v1", false)
}

pub static EVENTS_AS_CORE: Conversion = Conversion {
    storage_group: "core",
    storage_plural: "events",
    from_storage: event_core_to_v1,
    to_storage: event_v1_to_core,
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_convert_both_ways() {
        let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"},
            "message": "hi", "reason": "Started", "count": 2, "source": {"component": "kubelet"}, "reportingComponent": "kubelet", "type": "Normal"});
        let v1 = event_core_to_v1(core.clone());
        assert_eq!(v1["apiVersion"], "events.k8s.io/v1");
        assert_eq!(v1["regarding"]["name"], "p");
        assert_eq!(v1["note"], "hi");
        assert_eq!(v1["deprecatedCount"], 2);
        assert_eq!(v1["reportingController"], "kubelet");
        assert_eq!(event_v1_to_core(v1), core);
    }
}
