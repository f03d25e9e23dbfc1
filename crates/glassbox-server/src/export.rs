//! Static export: the list page, every unit page, the comparison page, and the script
//! and stylesheet, as plain files that open from disk (`file://`) with no server and no
//! network. Each page embeds its data as JSON; the same script renders it.

use crate::assets;
use crate::store::{Kind, Store};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    /// the export's directory, as given
    pub out_dir: PathBuf,
    /// feature pages written
    pub features: usize,
    /// neuron pages written
    pub neurons: usize,
    /// files written in all (pages, assets and the export marker)
    pub files: usize,
}

/// A file that marks a directory as a glassbox export (so a re-export may replace it).
const MARKER: &str = ".glassbox-export";
/// What an export puts in its output directory.
const ENTRIES: [&str; 7] = [
    "index.html",
    "compare.html",
    "prompt.html",
    "steer.html",
    "static",
    "unit",
    MARKER,
];

fn write(path: &Path, body: &str, files: &mut usize) -> Result<()> {
    std::fs::write(path, body).with_context(|| format!("cannot write {}", path.display()))?;
    *files += 1;
    Ok(())
}

fn page(root: &str, mut data: Value) -> String {
    data["static"] = json!(true);
    data["root"] = json!(root);
    assets::page_html(root, Some(&data))
}

fn write_all(store: &Store, dir: &Path) -> Result<ExportSummary> {
    let mut files = 0;
    std::fs::create_dir_all(dir.join("static"))?;
    write(&dir.join("static/app.js"), assets::APP_JS, &mut files)?;
    write(&dir.join("static/style.css"), assets::STYLE_CSS, &mut files)?;
    let meta = store.meta()?;
    let counts = store.counts()?;
    let mut summaries = serde_json::Map::new();
    let mut n = [0usize; 2];
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        let units = store.all_summaries(kind)?;
        let kdir = dir.join("unit").join(kind.as_str());
        std::fs::create_dir_all(&kdir)?;
        for u in &units {
            let id = u["id"].as_i64().context("a unit without an id")?;
            let detail = store
                .unit(kind, id)?
                .with_context(|| format!("{} {id} vanished", kind.as_str()))?;
            let html = page(
                "../../",
                json!({"page": "unit", "kind": kind, "id": id, "unit": detail}),
            );
            write(&kdir.join(format!("{id}.html")), &html, &mut files)?;
        }
        n[k] = units.len();
        summaries.insert(kind.as_str().into(), Value::Array(units));
    }
    write(
        &dir.join("index.html"),
        &page(
            "./",
            json!({"page": "list", "meta": meta, "counts": counts, "units": summaries}),
        ),
        &mut files,
    )?;
    write(
        &dir.join("compare.html"),
        &page(
            "./",
            json!({"page": "compare", "comparison": store.comparison()?}),
        ),
        &mut files,
    )?;
    for p in ["prompt", "steer"] {
        write(
            &dir.join(format!("{p}.html")),
            &page("./", json!({"page": p})),
            &mut files,
        )?;
    }
    write(
        &dir.join(MARKER),
        "glassbox static export (glassbox serve DIR --export OUT)\n",
        &mut files,
    )?;
    Ok(ExportSummary {
        out_dir: PathBuf::new(),
        features: n[0],
        neurons: n[1],
        files,
    })
}

/// Writes the dashboards of the run in `run_dir` as static files into `out_dir`:
/// `index.html` (the searchable list), `unit/feature/{id}.html`, `unit/neuron/{id}.html`,
/// `compare.html`, `prompt.html` / `steer.html` (which say they need `glassbox serve`)
/// and `static/`. Everything is written into `out_dir/.tmp-export-…` first and then
/// moved into place; `out_dir` must be new, empty, or a previous export.
pub fn export_static(run_dir: &Path, out_dir: &Path) -> Result<ExportSummary> {
    let store = Store::open_run(run_dir)?;
    if out_dir.exists() {
        if !out_dir.is_dir() {
            bail!("{} exists and is not a directory", out_dir.display());
        }
        let mut entries = std::fs::read_dir(out_dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".tmp-export-"));
        let marked = out_dir.join(MARKER).is_file();
        if !marked && entries.next().is_some() {
            bail!(
                "{} is not empty and is not a previous glassbox export: choose a new or empty directory",
                out_dir.display()
            );
        }
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let tmp = out_dir.join(format!(".tmp-export-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    let mut summary = match write_all(&store, &tmp) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    for entry in ENTRIES {
        let (src, dst) = (tmp.join(entry), out_dir.join(entry));
        if dst.is_dir() {
            // move the old one aside first so the new one appears in a single rename
            let old = out_dir.join(format!(".tmp-export-old-{}-{entry}", std::process::id()));
            std::fs::rename(&dst, &old)?;
            std::fs::rename(&src, &dst)
                .with_context(|| format!("cannot move the export to {}", dst.display()))?;
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&src, &dst)
                .with_context(|| format!("cannot move the export to {}", dst.display()))?;
        }
    }
    std::fs::remove_dir_all(&tmp)?;
    summary.out_dir = out_dir.to_path_buf();
    Ok(summary)
}
