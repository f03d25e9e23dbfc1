//! glassbox-server: feature dashboards. An HTTP JSON API over a run directory's feature
//! store (`features.sqlite`), a small web UI embedded in the binary (one HTML page, one
//! script, one stylesheet, no external requests), live views that run the model with the
//! dictionary (prompt view, steering playground), and a static HTML export of every
//! unit page. It also serves the attribution graphs of a transcoder set (or of a run's
//! `graphs/` folder) with interventions on their features. The API is documented in this
//! crate's README.
//!
//! [`App::open`] opens a directory, [`router`] is its HTTP API and pages, [`serve`] (what
//! `glassbox serve DIR` runs) binds and serves them under [`Limits`], and
//! [`export_static`] writes the pages as files instead.
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! use glassbox_features::{build, BuildInput, BuildOptions};
//! use glassbox_server::{export_static, App, STORE_FILE};
//!
//! // a run directory on the tiny llama fixture: a random 16-feature transcoder for
//! // layer 1 and its feature store, built from a few token windows
//! let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny-llama");
//! let model = glassbox_model::load_model(fixture.as_ref())?;
//! let dict = glassbox_sae::testing::RandomTranscoder::new(1, model.config().d_model, 16, 7)
//!     .build()?;
//! let run = tempfile::tempdir()?;
//! glassbox_sae::format::save_saelens(&dict, run.path())?;
//! // 4 windows of 12 tokens, BOS (id 1) first
//! let window = |w: u32| -> Vec<u32> {
//!     (0..12).map(|p| if p == 0 { 1 } else { 3 + (w * 37 + p * 11) % 500 }).collect()
//! };
//! let windows: Vec<Vec<u32>> = (0..4).map(window).collect();
//! build(
//!     &BuildInput {
//!         model: &model.transformer,
//!         dict: &dict,
//!         hook: dict.hook_name.as_deref().unwrap(),
//!         windows: &windows,
//!         token_text: &|id| format!("t{id}"),
//!         meta: vec![("model".into(), fixture.into())],
//!     },
//!     &BuildOptions { top_k: 4, context_radius: 3, ..Default::default() },
//!     &run.path().join(STORE_FILE),
//!     |_| {},
//! )?;
//!
//! // what `glassbox serve` opens: every feature, and the 176 MLP neurons of layer 1
//! let app = App::open(run.path())?;
//! let counts = app.store.as_ref().unwrap().counts()?;
//! assert_eq!((counts["feature"], counts["neuron"]), (16, 176));
//!
//! // what `glassbox serve --export` writes: a page per unit, openable from disk
//! let site = run.path().join("site");
//! let summary = export_static(run.path(), &site)?;
//! assert_eq!((summary.features, summary.neurons), (16, 176));
//! assert!(site.join("unit/feature/15.html").is_file());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod api;
mod error;
mod export;
mod graphs;
pub mod limits;
mod live;
mod store;
mod svg;

pub use api::router;
pub use error::ApiError;
pub use export::{export_static, ExportSummary};
pub use graphs::{check_graph_name, Graphs, SetIndex, GRAPHS_DIR, MAX_EDITS, MAX_TOP};
pub use limits::{Cancel, Limits};
pub use live::{Live, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, TOP_FEATURES_PER_TOKEN};
pub use store::{Kind, ListQuery, Sort, Store, STORE_FILE};
pub use svg::histogram_svg;

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The embedded web UI.
pub mod assets {
    /// The single page, with `{{ROOT}}` and `{{DATA}}` placeholders ([`page_html`] fills them).
    pub const INDEX_HTML: &str = include_str!("../assets/index.html");
    /// The script that renders every page, served as `/static/app.js`.
    pub const APP_JS: &str = include_str!("../assets/app.js");
    /// The stylesheet, served as `/static/style.css`.
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
    /// the served directory
    pub run_dir: PathBuf,
    /// the run's feature store; `None` for a transcoder set
    pub store: Option<Store>,
    /// the run's live views; `None` for a transcoder set
    pub live: Option<Live>,
    /// the attribution graphs in `graphs/` (and a transcoder set's layers)
    pub graphs: Graphs,
    /// what the server takes on at once and for how long ([`App::with_limits`])
    pub limits: Limits,
    /// the gate in front of the model-running views, sized by `limits`
    pub gate: limits::LiveGate,
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
    if let Some(m) = glassbox_features::run_dir::RunConfig::read(run_dir)?.and_then(|c| c.model) {
        return Ok(Some(m));
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
                gate: limits::LiveGate::new(&Limits::default()),
                limits: Limits::default(),
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
            gate: limits::LiveGate::new(&Limits::default()),
            limits: Limits::default(),
        })
    }

    /// The app with other limits (the gate resized to them).
    pub fn with_limits(mut self, limits: Limits) -> Result<App> {
        limits.check()?;
        self.gate = limits::LiveGate::new(&limits);
        self.limits = limits;
        Ok(self)
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

/// Serves `app` on an already bound listener until the process ends, with its limits:
/// a connection's request headers must arrive within `read_timeout` (else it is closed),
/// connections beyond `max_connections` get a 503 and are closed.
pub fn serve_listener(app: Arc<App>, listener: std::net::TcpListener) -> Result<()> {
    let limits = app.limits.clone();
    let refusal = refusal(limits.max_connections);
    serve_routes(
        router(app),
        listener,
        limits.max_connections,
        limits.read_timeout,
        refusal,
    )
}

/// Serves `routes` on a bound listener until the process ends, on a two-thread runtime,
/// with [`accept_loop`]'s limits (the dashboard's and the model server's).
pub fn serve_routes(
    routes: axum::Router,
    listener: std::net::TcpListener,
    max_connections: usize,
    read_timeout: std::time::Duration,
    refusal: Vec<u8>,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::from_std(listener)?;
        accept_loop(routes, l, max_connections, read_timeout, refusal).await
    })
}

/// What a connection beyond the limit gets before it is closed.
fn refusal(max_connections: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "error": format!(
            "the server has {max_connections} connections open, its limit (glassbox serve --max-connections); retry in {} s",
            limits::RETRY_AFTER_S
        ),
        "status": 503,
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        limits::RETRY_AFTER_S,
        body.len()
    )
    .into_bytes()
}

/// Answers a connection beyond the limit with `answer` (a whole HTTP response) and
/// closes it gracefully: no more writes, then what the client sends is read and dropped
/// for up to a second, so that the kernel ends the connection with FIN, not with a
/// reset that can lose the answer.
async fn refuse(stream: tokio::net::TcpStream, answer: Arc<Vec<u8>>) {
    // the answer is a few hundred bytes: a fresh socket's buffer takes it whole
    let _ = stream.try_write(&answer);
    let Ok(std) = stream.into_std() else {
        return;
    };
    let _ = std.shutdown(std::net::Shutdown::Write);
    let Ok(stream) = tokio::net::TcpStream::from_std(std) else {
        return;
    };
    let drain = async {
        let mut buf = [0u8; 4096];
        while stream.readable().await.is_ok() {
            match stream.try_read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// Serves `routes` on `listener` until the process ends (the dashboard's and the model
/// server's loop; `axum::serve` sets neither limit): a connection's request headers must
/// arrive within `read_timeout` (else it is closed), and a connection beyond
/// `max_connections` is sent `refusal` (a whole HTTP response) and closed.
pub async fn accept_loop(
    routes: axum::Router,
    listener: tokio::net::TcpListener,
    max_connections: usize,
    read_timeout: std::time::Duration,
    refusal: Vec<u8>,
) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let refusal = Arc::new(refusal);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // out of file descriptors and the like: wait for connections to close
                eprintln!("cannot accept a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream, refusal.clone()));
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(routes.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .max_buf_size(MAX_HEAD_BYTES);
            // errors here are the client's (closed early, timed out, malformed)
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Largest request head (request line and headers) a connection buffers; hyper answers
/// a longer one with 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// `glassbox serve DIR`: opens the run, binds `host:port`, prints the URL and serves
/// with `limits`.
pub fn serve(run_dir: &Path, host: &str, port: u16, limits: Limits) -> Result<()> {
    let app = Arc::new(App::open(run_dir)?.with_limits(limits)?);
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
    let l = &app.limits;
    println!(
        "limits: request bodies {} bytes, {} s to send a request's headers and again its body, {} connections; \
         the live views (prompt, steer, interventions) run {} at once with {} waiting, {} s each (see --help)",
        l.max_body_bytes,
        l.read_timeout.as_secs_f64(),
        l.max_connections,
        l.live_concurrency,
        l.live_queue,
        l.live_timeout.as_secs_f64(),
    );
    println!("press Ctrl-C to stop");
    serve_listener(app, listener)
}
