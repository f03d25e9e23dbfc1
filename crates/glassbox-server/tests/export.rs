//! Static export: every page is written, embeds its data, and references nothing outside
//! the export.

mod common;

use common::*;
use glassbox_server::export_static;
use std::path::Path;

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn export_writes_every_page_with_no_external_reference() {
    let run = run_dir();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("site");
    let s = export_static(run.path(), &target).unwrap();
    assert_eq!(s.features, N_FEATURES);
    assert_eq!(s.neurons, N_NEURONS);

    for f in [
        "index.html",
        "compare.html",
        "prompt.html",
        "steer.html",
        "static/app.js",
        "static/style.css",
    ] {
        assert!(target.join(f).is_file(), "{f} missing");
    }
    for id in 0..N_FEATURES {
        assert!(target.join(format!("unit/feature/{id}.html")).is_file());
    }
    for id in 0..N_NEURONS {
        assert!(target.join(format!("unit/neuron/{id}.html")).is_file());
    }
    let all = files_under(&target);
    assert_eq!(all.len(), s.files);
    assert!(
        !all.iter()
            .any(|p| p.to_string_lossy().contains(".tmp-export")),
        "temporary files left: {all:?}"
    );

    // nothing refers outside the export: no URL with a scheme, no protocol-relative link
    for p in &all {
        let text = std::fs::read_to_string(p).unwrap();
        for bad in [
            "http://",
            "https://",
            "src=\"//",
            "href=\"//",
            "url(",
            "@import",
        ] {
            assert!(!text.contains(bad), "{} contains {bad:?}", p.display());
        }
    }

    // unit pages: relative assets, embedded data (with the histogram drawn in Rust)
    let page = std::fs::read_to_string(target.join("unit/feature/3.html")).unwrap();
    assert!(page.contains(r#"<script src="../../static/app.js">"#));
    assert!(page.contains(r#"href="../../static/style.css""#));
    assert!(page.contains(r#"id="gb-data""#));
    assert!(page.contains("cat and kitten"));
    assert!(
        page.contains("\\u003csvg class=\\\"histogram\\\""),
        "histogram SVG embedded"
    );
    let data = embedded(&page);
    assert_eq!(data["page"], "unit");
    assert_eq!(data["unit"]["label"], "cat and kitten");
    assert_eq!(data["unit"]["top_examples"][0]["tokens"][1], " cat");

    // a label that tries to close the script element stays inside the JSON
    let nasty = std::fs::read_to_string(target.join("unit/feature/5.html")).unwrap();
    assert_eq!(
        nasty.matches("</script>").count(),
        2,
        "only the page's own two"
    );
    assert_eq!(embedded(&nasty)["unit"]["label"], NASTY_LABEL);

    let index = std::fs::read_to_string(target.join("index.html")).unwrap();
    assert!(index.contains(r#"<script src="./static/app.js">"#));
    let list = embedded(&index);
    assert_eq!(
        list["units"]["feature"].as_array().unwrap().len(),
        N_FEATURES
    );
    assert_eq!(list["units"]["neuron"].as_array().unwrap().len(), N_NEURONS);

    let prompt = std::fs::read_to_string(target.join("prompt.html")).unwrap();
    assert_eq!(embedded(&prompt)["page"], "prompt");
    let js = std::fs::read_to_string(target.join("static/app.js")).unwrap();
    assert!(
        js.contains("glassbox serve"),
        "live views say they need the server"
    );
}

fn embedded(page: &str) -> serde_json::Value {
    let start = page
        .find(r#"<script id="gb-data" type="application/json">"#)
        .unwrap();
    let rest = &page[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest.find("</script>").unwrap();
    serde_json::from_str(&rest[open..close]).unwrap()
}

#[test]
fn export_replaces_a_previous_export_but_not_a_foreign_directory() {
    let run = run_dir();
    let out = tempfile::tempdir().unwrap();
    export_static(run.path(), out.path()).unwrap();
    // a stale page from an earlier export disappears on re-export
    std::fs::write(out.path().join("unit/feature/999.html"), "stale").unwrap();
    export_static(run.path(), out.path()).unwrap();
    assert!(!out.path().join("unit/feature/999.html").exists());
    assert!(out.path().join("unit/feature/3.html").is_file());

    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("thesis.tex"), "precious").unwrap();
    let e = export_static(run.path(), foreign.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(foreign.path().join("thesis.tex")).unwrap(),
        "precious"
    );

    let nowhere = tempfile::tempdir().unwrap();
    let e = export_static(nowhere.path(), &out.path().join("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("glassbox features build --run"), "{e}");
}
