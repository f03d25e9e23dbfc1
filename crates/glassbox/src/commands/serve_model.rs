use crate::open::open_model;
use anyhow::{Context, Result};
use glassbox_model_server::policy::Policy;
use glassbox_model_server::{serve, ServeOptions};
use std::path::PathBuf;
use std::time::Duration;

/// `glassbox serve-model`: the model behind an OpenAI-compatible API, with a policy's
/// edits and monitors on every request.
#[derive(clap::Args)]
#[command(after_help = AFTER)]
pub struct Args {
    /// The model: `default`, a HF directory, a .gguf file or a HF repo id
    #[arg(long)]
    model: String,
    /// Edits and monitors applied to every request (TOML; see the README's example)
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Address to bind; the default keeps the server on this machine
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port)
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Name of an environment variable holding the API key every request must send as
    /// `Authorization: Bearer KEY`
    #[arg(long, value_name = "VAR")]
    api_key_env: Option<String>,
    /// The model's id in /v1/models and in requests (default: --model as given)
    #[arg(long)]
    served_model_name: Option<String>,
    /// Sequences decoded together (continuous batching)
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests that may wait for the engine (429 beyond)
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Seconds a request may take, queueing included
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    request_timeout: u64,
    /// Largest request body in bytes (413 beyond)
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Open connections (503 beyond)
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Append each request's verdicts to this JSONL file (rotated by size)
    #[arg(long)]
    audit: Option<PathBuf>,
    /// Rotate the audit file past this many bytes
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    audit_max_bytes: u64,
    /// Put prompts and completions in the audit trail (off: verdicts only)
    #[arg(long)]
    log_content: bool,
}

const AFTER: &str = "Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, \
GET /metrics (Prometheus), GET /health. Works with the official openai client \
(base_url=http://127.0.0.1:8000/v1). A request may switch edits and monitors the policy's \
[requests] allow list names: extra_body={\"glassbox\": {\"edits\": {\"NAME\": true}}}. \
Responses carry a `glassbox` field: per-token monitor scores, verdicts, active edits.";

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    anyhow::ensure!(a.queue >= 1, "--queue must be at least 1");
    let api_key = match &a.api_key_env {
        Some(var) => {
            let key = std::env::var(var).with_context(|| {
                format!("--api-key-env {var}: the environment variable {var} is not set")
            })?;
            anyhow::ensure!(!key.is_empty(), "--api-key-env {var}: {var} is empty");
            Some(key)
        }
        None => None,
    };
    let model = open_model(&a.model)?;
    let policy = match &a.policy {
        Some(p) => Policy::load(p, &model)?,
        None => Policy::empty(),
    };
    let opts = ServeOptions {
        model_name: a
            .served_model_name
            .clone()
            .unwrap_or_else(|| a.model.clone()),
        host: a.host,
        port: a.port,
        api_key,
        max_batch: a.max_batch,
        queue: a.queue,
        request_timeout: Duration::from_secs(a.request_timeout),
        max_body_bytes: a.max_body_bytes,
        max_connections: a.max_connections,
        read_timeout: Duration::from_secs(10),
        audit: a.audit,
        audit_max_bytes: a.audit_max_bytes,
        log_content: a.log_content,
    };
    serve(model, policy, opts)
}
