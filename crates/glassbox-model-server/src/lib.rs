//! `glassbox serve-model`: the model behind an OpenAI-compatible HTTP API, with the
//! policy's edits applied to every request and its monitors reading every generated
//! token ([`policy`]). Requests share the model by continuous batching ([`engine`]);
//! the HTTP layer ([`api`]) checks every field and answers mistakes with OpenAI's error
//! object; `/metrics` speaks Prometheus ([`metrics`]); each request's verdicts go to a
//! JSONL audit trail ([`audit`]).
//!
//! ```no_run
//! use glassbox_model_server::{policy::Policy, serve, ServeOptions};
//! let model = glassbox_hub::open_model("default", &Default::default())?;
//! let policy = Policy::load("policy.toml".as_ref(), &model)?;
//! serve(model, policy, ServeOptions::new("default"))?; // until the process ends
//! # Ok::<(), anyhow::Error>(())
//! ```

#![deny(missing_docs)]

pub mod api;
pub mod audit;
pub mod engine;
pub mod metrics;
pub mod policy;

use anyhow::{Context, Result};
use glassbox_model::Model;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// the model's id in `/v1/models` and in requests' `model` field
    pub model_name: String,
    /// the address to bind (loopback unless told otherwise)
    pub host: String,
    /// the port (0: any free one; the bound address is printed)
    pub port: u16,
    /// a bearer key every request must send
    pub api_key: Option<String>,
    /// sequences decoded together at most
    pub max_batch: usize,
    /// requests waiting at most; beyond, 429
    pub queue: usize,
    /// a request's time limit, queueing included
    pub request_timeout: Duration,
    /// the largest request body
    pub max_body_bytes: usize,
    /// open connections at most; beyond, 503
    pub max_connections: usize,
    /// the time a connection has to send its request headers
    pub read_timeout: Duration,
    /// the audit trail (JSONL), if any
    pub audit: Option<PathBuf>,
    /// rotate the audit file past this size
    pub audit_max_bytes: u64,
    /// put prompts and completions in the audit trail
    pub log_content: bool,
}

impl ServeOptions {
    /// The defaults: loopback, port 8000, batches of 16, a queue of 64, 300 s per
    /// request, 1 MiB bodies.
    pub fn new(model_name: &str) -> Self {
        ServeOptions {
            model_name: model_name.to_string(),
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            max_batch: 16,
            queue: 64,
            request_timeout: Duration::from_secs(300),
            max_body_bytes: 1 << 20,
            max_connections: 256,
            read_timeout: Duration::from_secs(10),
            audit: None,
            audit_max_bytes: 64 << 20,
            log_content: false,
        }
    }
}

/// What the handlers share.
pub struct State {
    engine: engine::Engine,
    model: Arc<Model>,
    policy: Arc<policy::Policy>,
    metrics: Arc<metrics::Metrics>,
    audit: Option<audit::AuditLog>,
    opts: ServeOptions,
    started: u64,
    next_id: AtomicU64,
}

impl State {
    /// Starts the engine for `model` under `policy`.
    pub fn new(model: Model, policy: policy::Policy, opts: ServeOptions) -> Result<Arc<State>> {
        let model = Arc::new(model);
        let policy = Arc::new(policy);
        let metrics = Arc::new(metrics::Metrics::default());
        let engine = engine::Engine::start(
            model.clone(),
            policy.clone(),
            opts.max_batch,
            opts.queue,
            metrics.clone(),
        )?;
        let audit = match &opts.audit {
            Some(p) => Some(
                audit::AuditLog::open(p.clone(), opts.audit_max_bytes, 5)
                    .with_context(|| format!("cannot open the audit trail {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Arc::new(State {
            engine,
            model,
            policy,
            metrics,
            audit,
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            next_id: AtomicU64::new(0),
            opts,
        }))
    }
}

/// Whether `host` is a loopback address (or `localhost`).
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Binds, prints the address, and serves until the process ends.
pub fn serve(model: Model, policy: policy::Policy, opts: ServeOptions) -> Result<()> {
    let listener = std::net::TcpListener::bind((opts.host.as_str(), opts.port))
        .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
    if !is_loopback(&opts.host) {
        eprintln!(
            "warning: serving on {}, reachable from other machines{}",
            opts.host,
            if opts.api_key.is_some() {
                ""
            } else {
                " by anyone, with no API key (--api-key-env)"
            }
        );
    }
    let addr = listener.local_addr()?;
    let summary = format!(
        "{} edit(s), {} monitor(s), policy {}",
        policy.edits.len(),
        policy.monitors.len(),
        policy.hash
    );
    let state = State::new(model, policy, opts)?;
    println!(
        "serving {} at http://{addr}/v1 ({summary}); batches of up to {}",
        state.opts.model_name, state.opts.max_batch
    );
    serve_listener(state, listener)
}

/// Serves on a bound listener until the process ends.
pub fn serve_listener(state: Arc<State>, listener: std::net::TcpListener) -> Result<()> {
    let body = serde_json::json!({"error": {
        "message": format!("the server has {} connections open, its limit; retry in a moment", state.opts.max_connections),
        "type": "server_error", "param": null, "code": null,
    }})
    .to_string();
    let refusal = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let (max_conn, read_timeout) = (state.opts.max_connections, state.opts.read_timeout);
    glassbox_server::serve_routes(
        api::router(state),
        listener,
        max_conn,
        read_timeout,
        refusal,
    )
}
