//! Checks on the generated CustomResourceDefinition that the API server does not make.

use kube::CustomResourceExt;
use serde_json::Value;
use storagegrant_api::StorageGrant;

fn schema() -> Value {
    let crd = serde_json::to_value(StorageGrant::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Calls `visit` with the JSON path and body of every schema node.
fn walk(node: &Value, path: &str, visit: &mut dyn FnMut(&str, &serde_json::Map<String, Value>)) {
    let Some(object) = node.as_object() else {
        return;
    };
    visit(path, object);
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            walk(child, &format!("{path}.{name}"), visit);
        }
    }
    if let Some(items) = object.get("items") {
        walk(items, &format!("{path}[]"), visit);
    }
    if let Some(values) = object.get("additionalProperties") {
        walk(values, &format!("{path}{{}}"), visit);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for child in object
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            walk(child, path, visit);
        }
    }
}

#[test]
fn crd_has_no_defaults() {
    let mut defaults = Vec::new();
    walk(&schema(), "", &mut |path, node| {
        if node.contains_key("default") {
            defaults.push(path.to_owned());
        }
    });
    assert!(defaults.is_empty(), "schema defaults at {defaults:?}");
}

#[test]
fn every_list_and_string_is_bounded() {
    let mut unbounded = Vec::new();
    walk(&schema(), "", &mut |path, node| {
        let kind = node.get("type").and_then(Value::as_str);
        let bounded = match kind {
            Some("array") => node.contains_key("maxItems"),
            Some("string") => node.contains_key("maxLength") || node.contains_key("enum"),
            Some("object") if node.contains_key("additionalProperties") => {
                node.contains_key("maxProperties")
            }
            _ => true,
        };
        if !bounded && !path.starts_with(".metadata") {
            unbounded.push(path.to_owned());
        }
    });
    assert!(unbounded.is_empty(), "unbounded at {unbounded:?}");
}

#[test]
fn crd_names_and_subresources() {
    let crd = serde_json::to_value(StorageGrant::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "storagegrants.storagegrant.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "sg");
    assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object());
    let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|column| column["name"].as_str().unwrap())
        .collect();
    for expected in ["Provider", "Method", "Ready", "Age"] {
        assert!(
            columns.contains(&expected),
            "no printer column {expected}: {columns:?}"
        );
    }
}
