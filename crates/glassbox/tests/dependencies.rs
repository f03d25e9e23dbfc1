//! Every dependency is pinned to a version range: `"*"` lets a new major version (with
//! another API or other numerics) in unnoticed.

use std::path::Path;

fn unpinned(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let mut tables = vec![];
    for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
        tables.extend(doc.get(key).and_then(|t| t.as_table()).cloned());
        if let Some(ws) = doc.get("workspace").and_then(|w| w.as_table()) {
            tables.extend(ws.get(key).and_then(|t| t.as_table()).cloned());
        }
    }
    let mut bad = vec![];
    for t in tables {
        for (name, spec) in t {
            let version = match &spec {
                toml::Value::String(v) => Some(v.as_str()),
                toml::Value::Table(t) => t.get("version").and_then(|v| v.as_str()),
                _ => None,
            };
            if version.is_some_and(|v| v.trim() == "*") {
                bad.push(format!("{}: {name}", manifest.display()));
            }
        }
    }
    bad
}

#[test]
fn no_dependency_is_unpinned() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut manifests = vec![root.join("Cargo.toml")];
    for e in std::fs::read_dir(root.join("crates")).unwrap() {
        let m = e.unwrap().path().join("Cargo.toml");
        if m.exists() {
            manifests.push(m);
        }
    }
    assert!(manifests.len() > 5, "found the crates");
    let bad: Vec<String> = manifests.iter().flat_map(|m| unpinned(m)).collect();
    assert!(bad.is_empty(), "unpinned dependencies: {bad:?}");
}
