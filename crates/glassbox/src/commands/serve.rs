use anyhow::Result;
use glassbox_server::limits::{
    Limits, DEFAULT_LIVE_CONCURRENCY, DEFAULT_LIVE_QUEUE, DEFAULT_LIVE_TIMEOUT_S,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_READ_TIMEOUT_S,
};
use std::path::PathBuf;
use std::time::Duration;

/// `glassbox serve DIR`: the feature dashboards of a run directory, or the attribution
/// graphs of a transcoder set, in the browser.
#[derive(clap::Args)]
#[command(after_help = LIMITS)]
pub struct Args {
    /// Run directory: features.sqlite (from `glassbox features build --run DIR`), the
    /// dictionary (cfg.json + sae_weights.safetensors) and config.toml (names the model
    /// the live prompt and steering views load on first use). Or a transcoder set
    /// (index.json, from `glassbox train-transcoders`): its graphs/*.json (from
    /// `glassbox trace`) and the feature pages of layers with a layer_XX/features.sqlite
    dir: PathBuf,
    /// Port to listen on (0: any free port)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to bind; the default keeps the server on this machine
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Instead of serving, write the list, every unit page and the comparison as static
    /// HTML into this directory (opens from disk, no server) and exit
    #[arg(long, value_name = "OUT")]
    export: Option<PathBuf>,
    /// Largest request body in bytes (413 beyond)
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Seconds a client has to send a request's headers (then the connection is closed)
    /// and again its body (then 408)
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_READ_TIMEOUT_S)]
    read_timeout: u64,
    /// Model-running requests (prompt view, steering, interventions) that run at once
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIVE_CONCURRENCY)]
    live_concurrency: usize,
    /// Model-running requests that may wait for a free slot (429 beyond)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIVE_QUEUE)]
    live_queue: usize,
    /// Seconds one model-running request may take, waiting included (504 beyond)
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_LIVE_TIMEOUT_S)]
    live_timeout: u64,
    /// Open connections (503 beyond)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
}

const LIMITS: &str = "Limits (each answered with a JSON error, never a hang): request bodies over \
--max-body-bytes get 413; a request whose headers take longer than --read-timeout has its \
connection closed, one whose body does gets 408; connections beyond --max-connections get 503. \
The views that run the model (/api/prompt, /api/steer, graph interventions) run \
--live-concurrency at once with --live-queue waiting (more get 429 with Retry-After) and stop \
after --live-timeout, waiting included (504). The server never downloads a model: a HF repo id \
must already be in the HF cache.";

pub fn run(a: Args) -> Result<()> {
    if let Some(out) = &a.export {
        return super::features::export(&a.dir, out);
    }
    let limits = Limits {
        max_body_bytes: a.max_body_bytes,
        read_timeout: Duration::from_secs(a.read_timeout),
        live_concurrency: a.live_concurrency,
        live_queue: a.live_queue,
        live_timeout: Duration::from_secs(a.live_timeout),
        max_connections: a.max_connections,
    };
    glassbox_server::serve(&a.dir, &a.host, a.port, limits)
}
