//! glassbox-server: feature dashboards. An HTTP JSON API over a run directory's feature
//! store (`features.sqlite`), a small web UI embedded in the binary (one HTML page, one
//! script, one stylesheet, no external requests), live views that run the model with the
//! dictionary (prompt view, steering playground), and a static HTML export of every
//! unit page. It also serves the attribution graphs of a transcoder set (or of a run's
//! `graphs/` folder) with interventions on their features. The API is documented in this
//! crate's README.

mod api;
mod error;
mod export;
mod graphs;
mod live;
mod store;
mod svg;

pub use api::router;
pub use error::ApiError;
pub use export::{export_static, ExportSummary};
pub use graphs::{check_graph_name, Graphs, SetIndex, GRAPHS_DIR, MAX_EDITS, MAX_TOP};
pub use live::{Live, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, TOP_FEATURES_PER_TOKEN};
pub use store::{Kind, ListQuery, Sort, Store, STORE_FILE};
pub use svg::histogram_svg;

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The embedded web UI.
pub mod assets {
    pub const INDEX_HTML: &str = include_str!("../assets/index.html");
    pub const APP_JS: &str = include_str!("../assets/app.js");
    pub const STYLE_CSS: &str = include_str!("../assets/style.css");

    /// An embedded asset by its file name under `/static/`: (content type, body).
    pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
        match name {
            "app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
            "style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
            _ => None,
        }
    }

    /// The single page, with asset links relative to `root` (`/` when served, a
    /// relative `../../` in the static export) and, for the export, the page's data
    /// embedded as JSON.
    pub fn page_html(root: &str, data: Option<&serde_json::Value>) -> String {
        let data = match data {
            // `<` escaped so the JSON can never close the script element
            Some(v) => format!(
                r#"<script id="gb-data" type="application/json">{}</script>"#,
                v.to_string()
                    .replace('<', "\\u003c")
                    .replace('\u{2028}', "\\u2028")
                    .replace('\u{2029}', "\\u2029")
            ),
            None => String::new(),
        };
        INDEX_HTML
            .replace("{{ROOT}}", root)
            .replace("{{DATA}}", &data)
    }
}

/// A directory opened for serving: a dictionary run (the feature store, the dictionary
/// and, lazily, the model) or a transcoder set (no store at its root); either may hold
/// attribution graphs in `graphs/`.
pub struct App {
    pub run_dir: PathBuf,
    /// the run's feature store; `None` for a transcoder set
    pub store: Option<Store>,
    /// the run's live views; `None` for a transcoder set
    pub live: Option<Live>,
    pub graphs: Graphs,
}

/// Where the run's dictionary lives: the run directory itself (what `train-sae --out`
/// writes) or the store's `sae_dir` (relative to the run directory or absolute).
pub fn find_dictionary(run_dir: &Path, sae_dir: Option<&str>) -> Result<PathBuf> {
    let is_dict = |p: &Path| p.join("cfg.json").is_file();
    if is_dict(run_dir) {
        return Ok(run_dir.to_path_buf());
    }
    if let Some(s) = sae_dir.filter(|s| !s.is_empty()) {
        let p = Path::new(s);
        for cand in [run_dir.join(p), p.to_path_buf()] {
            if is_dict(&cand) {
                return Ok(cand);
            }
        }
    }
    bail!(
        "no dictionary in {}: expected cfg.json + sae_weights.safetensors there (a `glassbox train-sae --out DIR` run directory){}",
        run_dir.display(),
        sae_dir
            .map(|s| format!(", or at the store's sae_dir `{s}`"))
            .unwrap_or_default()
    )
}

/// The model spec of a run: `model = "..."` in config.toml, else what the store's meta
/// recorded (`model_spec`, as given to `features build`, then `model`).
fn model_spec(run_dir: &Path, meta: &BTreeMap<String, String>) -> Result<Option<String>> {
    let cfg = run_dir.join("config.toml");
    if cfg.is_file() {
        let text = std::fs::read_to_string(&cfg)
            .with_context(|| format!("cannot read {}", cfg.display()))?;
        let v: toml::Value = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", cfg.display()))?;
        if let Some(m) = v.get("model").and_then(|m| m.as_str()) {
            return Ok(Some(m.to_string()));
        }
    }
    Ok(["model_spec", "model"]
        .iter()
        .filter_map(|k| meta.get(*k))
        .find(|m| !m.is_empty())
        .cloned())
}

impl App {
    /// Opens a directory: a transcoder set when it has a set's `index.json`, else a
    /// dictionary run, which fails clearly when it has no feature store or dictionary.
    pub fn open(run_dir: &Path) -> Result<App> {
        if !run_dir.is_dir() {
            bail!("{} is not a directory", run_dir.display());
        }
        if let Some(index) = SetIndex::read(run_dir)? {
            return Ok(App {
                run_dir: run_dir.to_path_buf(),
                store: None,
                live: None,
                graphs: Graphs::new(run_dir, Some(index)),
            });
        }
        let store = Store::open_run(run_dir)?;
        let meta = store.meta()?;
        let dict_dir = find_dictionary(run_dir, meta.get("sae_dir").map(String::as_str))?;
        let dictionary = glassbox_sae::format::load(&dict_dir)
            .with_context(|| format!("cannot load the dictionary in {}", dict_dir.display()))?;
        let spec = model_spec(run_dir, &meta)?;
        Ok(App {
            run_dir: run_dir.to_path_buf(),
            store: Some(store),
            live: Some(Live::new(dictionary, dict_dir, spec)),
            graphs: Graphs::new(run_dir, None),
        })
    }

    /// The run's feature store, or a 404 saying this is a transcoder set.
    pub fn store(&self) -> Result<&Store, ApiError> {
        self.store.as_ref().ok_or_else(|| self.not_a_run())
    }

    /// The run's live views, or a 404 saying this is a transcoder set.
    pub fn live(&self) -> Result<&Live, ApiError> {
        self.live.as_ref().ok_or_else(|| self.not_a_run())
    }

    fn not_a_run(&self) -> ApiError {
        ApiError::not_found(format!(
            "{} is a transcoder set, not a dictionary run: it has no feature store at its root; \
             its graphs are under /api/graphs and its layers' features under /api/layers/{{layer}}/features/{{id}}",
            self.run_dir.display()
        ))
    }
}

/// Serves `app` on an already bound listener until the process ends.
pub fn serve_listener(app: Arc<App>, listener: std::net::TcpListener) -> Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(l, router(app)).await?;
        Ok(())
    })
}

/// `glassbox serve DIR`: opens the run, binds `host:port`, prints the URL and serves.
pub fn serve(run_dir: &Path, host: &str, port: u16) -> Result<()> {
    let app = Arc::new(App::open(run_dir)?);
    let listener = std::net::TcpListener::bind((host, port))
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr()?;
    let n_graphs = app.graphs.names().len();
    match (&app.store, &app.graphs.set_index) {
        (Some(store), _) => {
            let counts = store.counts()?;
            println!(
                "serving {} ({} features, {} neurons{}) at http://{addr}/",
                app.run_dir.display(),
                counts.get("feature").copied().unwrap_or(0),
                counts.get("neuron").copied().unwrap_or(0),
                if n_graphs > 0 {
                    format!(", {n_graphs} graphs")
                } else {
                    String::new()
                },
            );
        }
        (None, index) => {
            let layers = index.as_ref().map_or(0, |i| i.layers.len());
            println!(
                "serving the transcoder set {} ({layers} layers, {n_graphs} graphs in {}) at http://{addr}/",
                app.run_dir.display(),
                app.graphs.graphs_dir.display(),
            );
        }
    }
    if addr.ip().is_unspecified() {
        println!("listening on every interface: anyone on the network can reach it");
    }
    println!("press Ctrl-C to stop");
    serve_listener(app, listener)
}
