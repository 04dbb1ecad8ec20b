//! The desired field set of a grant on one object, and how it compares with what the object
//! holds and with who owns each field (`metadata.managedFields`).
//!
//! A grant writes a few *entries*: an env entry of a container (a list-map element keyed by
//! `name`), a volume, a volume mount, a map key such as an annotation, or a scalar field such
//! as `spec.s3.secretName`. Every write, the ownership check, the no-op check and release are
//! derived from the same list of entries.

use serde_json::{Map, Value};

/// One step of a path into an object, in the terms of server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A field of an object (`f:name` in `fieldsV1`).
    Field(String),
    /// The element of a list-map whose key fields have these values (`k:{...}`).
    Key(Map<String, Value>),
}

impl Step {
    pub fn field(name: &str) -> Self {
        Self::Field(name.to_owned())
    }

    /// A list-map element keyed by one field, such as a container by `name`.
    pub fn key(field: &str, value: &str) -> Self {
        let mut key = Map::new();
        key.insert(field.to_owned(), Value::String(value.to_owned()));
        Self::Key(key)
    }

    fn fields_v1_key(&self) -> String {
        match self {
            Self::Field(name) => format!("f:{name}"),
            Self::Key(key) => format!("k:{}", Value::Object(key.clone())),
        }
    }

    /// Whether a `fieldsV1` key such as `k:{"name":"tikv"}` denotes this step.
    fn matches_fields_v1_key(&self, fields_key: &str) -> bool {
        match self {
            Self::Field(name) => fields_key.strip_prefix("f:") == Some(name.as_str()),
            Self::Key(key) => fields_key
                .strip_prefix("k:")
                .and_then(|json| serde_json::from_str::<Map<String, Value>>(json).ok())
                .is_some_and(|parsed| &parsed == key),
        }
    }
}

/// A path from the object's root to an entry.
pub type Path = Vec<Step>;

/// One thing the grant writes: the entry at `path` must equal `value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub path: Path,
    pub value: Value,
    /// A short name of the entry for messages, such as `env AWS_ACCESS_KEY_ID of container tikv`.
    pub label: String,
}

/// Renders a path the way people read it: `spec.template.spec.containers[name=tikv].env`.
pub fn display_path(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Step::Key(key) => {
                let pairs: Vec<String> = key
                    .iter()
                    .map(|(field, value)| match value {
                        Value::String(text) => format!("{field}={text}"),
                        other => format!("{field}={other}"),
                    })
                    .collect();
                out.push_str(&format!("[{}]", pairs.join(",")));
            }
        }
    }
    out
}

/// Builds the body of a server-side apply that contains exactly `entries`, on top of `base`
/// (which carries `apiVersion`, `kind` and the identifying metadata).
pub fn apply_body(base: Value, entries: &[Entry]) -> Value {
    let mut body = base;
    for entry in entries {
        insert(&mut body, &entry.path, entry.value.clone());
    }
    body
}

fn insert(node: &mut Value, path: &[Step], value: Value) {
    let Some((step, rest)) = path.split_first() else {
        merge(node, value);
        return;
    };
    match step {
        Step::Field(name) => {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            let child = node
                .as_object_mut()
                .expect("node was made an object above")
                .entry(name.clone())
                .or_insert(Value::Null);
            insert(child, rest, value);
        }
        Step::Key(key) => {
            if !node.is_array() {
                *node = Value::Array(Vec::new());
            }
            let items = node.as_array_mut().expect("node was made an array above");
            let position = items.iter().position(|item| has_key(item, key));
            let index = position.unwrap_or_else(|| {
                items.push(Value::Object(key.clone()));
                items.len() - 1
            });
            insert(&mut items[index], rest, value);
        }
    }
}

/// Merges `value` into `node`, object fields recursively; anything else replaces.
fn merge(node: &mut Value, value: Value) {
    match (node, value) {
        (Value::Object(existing), Value::Object(incoming)) => {
            for (field, child) in incoming {
                merge(existing.entry(field).or_insert(Value::Null), child);
            }
        }
        (node, value) => *node = value,
    }
}

fn has_key(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter()
        .all(|(field, expected)| item.get(field) == Some(expected))
}

/// The value at `path` in a live object, if any.
pub fn lookup<'a>(object: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut node = object;
    for step in path {
        node = match step {
            Step::Field(name) => node.get(name)?,
            Step::Key(key) => node.as_array()?.iter().find(|item| has_key(item, key))?,
        };
    }
    Some(node)
}

/// Whether every field of `desired` is present in `live` with the same value; `live` may hold
/// more (fields the API server or other managers added).
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => desired
            .iter()
            .all(|(field, value)| live.get(field).is_some_and(|found| contains(found, value))),
        (live, desired) => live == desired,
    }
}

/// The `fieldsV1` subtree at `path`, if the managed field set reaches that far.
pub fn fields_at<'a>(fields: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut node = fields;
    for step in path {
        node = node
            .as_object()?
            .iter()
            .find(|(fields_key, _)| step.matches_fields_v1_key(fields_key))
            .map(|(_, child)| child)?;
    }
    Some(node)
}

/// The `fieldsV1` form of `value` written at `path`, as server-side apply records it: each
/// list-map element on the way also records its key fields and itself (`.`).
pub fn fields_of(path: &[Step], value: &Value) -> Value {
    let mut node = fields_of_value(value);
    for step in path.iter().rev() {
        if let Step::Key(key) = step {
            let element = node.as_object_mut().expect("fieldsV1 nodes are objects");
            element.insert(".".into(), Value::Object(Map::new()));
            for field in key.keys() {
                element
                    .entry(format!("f:{field}"))
                    .or_insert(Value::Object(Map::new()));
            }
        }
        let mut outer = Map::new();
        outer.insert(step.fields_v1_key(), node);
        node = Value::Object(outer);
    }
    node
}

fn fields_of_value(value: &Value) -> Value {
    let mut fields = Map::new();
    if let Value::Object(object) = value {
        for (name, child) in object {
            fields.insert(format!("f:{name}"), fields_of_value(child));
        }
    }
    Value::Object(fields)
}

/// Lists the leaf fields of a `fieldsV1` subtree as dotted paths relative to it.
pub fn leaf_fields(fields: &Value) -> Vec<String> {
    let mut leaves = Vec::new();
    collect_leaves(fields, String::new(), &mut leaves);
    leaves
}

fn collect_leaves(fields: &Value, prefix: String, leaves: &mut Vec<String>) {
    let children: Vec<(&String, &Value)> = fields
        .as_object()
        .map(|object| {
            object
                .iter()
                .filter(|(key, _)| key.as_str() != ".")
                .collect()
        })
        .unwrap_or_default();
    if children.is_empty() {
        leaves.push(if prefix.is_empty() {
            ".".to_owned()
        } else {
            prefix
        });
        return;
    }
    for (key, child) in children {
        let name = key.strip_prefix("f:").unwrap_or(key);
        let next = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        };
        collect_leaves(child, next, leaves);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn env_path(container: &str, variable: &str) -> Path {
        vec![
            Step::field("spec"),
            Step::field("containers"),
            Step::key("name", container),
            Step::field("env"),
            Step::key("name", variable),
        ]
    }

    #[test]
    fn apply_body_nests_list_map_entries() {
        let entries = vec![
            Entry {
                path: env_path("tikv", "A"),
                value: json!({"name": "A", "value": "1"}),
                label: "A".into(),
            },
            Entry {
                path: env_path("tikv", "B"),
                value: json!({"name": "B", "value": "2"}),
                label: "B".into(),
            },
        ];
        let body = apply_body(json!({"kind": "X"}), &entries);
        assert_eq!(
            body,
            json!({"kind": "X", "spec": {"containers": [{"name": "tikv", "env": [
                {"name": "A", "value": "1"}, {"name": "B", "value": "2"}
            ]}]}})
        );
    }

    #[test]
    fn lookup_finds_list_map_entry_by_key() {
        let object = json!({"spec": {"containers": [
            {"name": "other", "env": [{"name": "A", "value": "x"}]},
            {"name": "tikv", "env": [{"name": "A", "value": "1"}]}
        ]}});
        assert_eq!(
            lookup(&object, &env_path("tikv", "A")),
            Some(&json!({"name": "A", "value": "1"}))
        );
        assert_eq!(lookup(&object, &env_path("tikv", "B")), None);
    }

    #[test]
    fn fields_at_parses_list_map_keys() {
        let fields = json!({"f:spec": {"f:containers": {"k:{\"name\":\"tikv\"}": {
            ".": {}, "f:name": {}, "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}}
        }}}});
        let owned = fields_at(&fields, &env_path("tikv", "A")).unwrap();
        assert_eq!(leaf_fields(owned), vec!["name", "value"]);
        assert!(fields_at(&fields, &env_path("tikv", "B")).is_none());
    }

    #[test]
    fn fields_of_matches_server_side_apply_form() {
        let fields = fields_of(&env_path("tikv", "A"), &json!({"name": "A", "value": "1"}));
        let entry = fields_at(&fields, &env_path("tikv", "A")).unwrap();
        assert_eq!(entry, &json!({".": {}, "f:name": {}, "f:value": {}}));
    }

    #[test]
    fn contains_ignores_extra_live_fields() {
        let live = json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": false}}});
        assert!(contains(
            &live,
            &json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})
        ));
        assert!(!contains(
            &live,
            &json!({"name": "A", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}})
        ));
    }

    #[test]
    fn display_path_reads_like_kubectl() {
        assert_eq!(
            display_path(&env_path("tikv", "A")),
            "spec.containers[name=tikv].env[name=A]"
        );
    }
}
