//! `glassbox harvest`: a hook's activations over the windows a training run of
//! `--tokens` needs, into an activation folder ([`glassbox_train::acts`]); under an MPI
//! launcher (a build with `--features mpi`), each rank harvests its share of the shards.

use crate::open::{open_model, Bars};
use anyhow::Result;
use glassbox_sae::train::{TrainArch, TrainConfig};
use glassbox_train::SaeRunOptions;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model (a name such as `default`, a GGUF file or an HF folder)
    #[arg(long, default_value = "default")]
    model: String,
    /// The hook to harvest
    #[arg(long, default_value = "blocks.15.hook_resid_pre")]
    hook: String,
    /// Also harvest this hook, row-aligned (a transcoder's target)
    #[arg(long)]
    hook_out: Option<String>,
    /// Training tokens the folder is for (train-sae --acts may use fewer)
    #[arg(long, default_value_t = 2_000_000)]
    tokens: usize,
    /// A .txt/.jsonl/.parquet file or folder [default: the default corpus, fetched]
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// JSONL field or Parquet column holding the text
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Tokens per window, BOS first
    #[arg(long, default_value_t = 128)]
    context_size: usize,
    /// Tokens per shard (the training shuffle buffer: train-sae shuffles within one)
    #[arg(long, default_value_t = 262_144)]
    buffer_tokens: usize,
    /// Seeds the corpus packing and the shuffle (train-sae --acts uses the same)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The activation folder (shards, then manifest.json)
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let job = glassbox_dist::join(None)?;
    let mut train = TrainConfig::for_run(TrainArch::TopK, a.tokens, 1);
    train.seed = a.seed;
    let mut opts = SaeRunOptions::new(&a.hook, a.tokens, train);
    opts.hook_out = a.hook_out.clone();
    opts.corpus = a.corpus.clone();
    opts.text_field = a.text_field.clone();
    opts.context_size = a.context_size;
    opts.buffer_tokens = a.buffer_tokens;
    let model = open_model(&a.model)?;
    let bars = Bars::new("harvest");
    let progress: &dyn glassbox_train::Progress = if job.is_root() {
        &bars
    } else {
        &glassbox_train::Silent
    };
    let started = std::time::Instant::now();
    let done = glassbox_train::acts::harvest_acts(&model, &a.model, &opts, &a.out, progress, &job)
        .map_err(|e| match e.downcast_ref::<glassbox_train::RunError>() {
            // every rank refuses the same options; anything else may be one rank's alone
            Some(_) => e,
            None => job.fail(e),
        })?;
    if job.is_root() {
        let m = &done.manifest;
        let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
        println!(
            "harvested {} of {} into {} shards ({} rows, {:.1} MiB) on {} rank(s) in {:.1} s; rank 0 wrote {} and kept {} from an earlier run",
            m.hooks.join(" → "),
            a.model,
            m.shards.len(),
            m.total_rows,
            bytes as f64 / (1 << 20) as f64,
            m.ranks,
            started.elapsed().as_secs_f64(),
            done.harvested_here,
            done.kept
        );
        println!(
            "manifest: {}",
            a.out.join(glassbox_train::acts::MANIFEST_FILE).display()
        );
    }
    Ok(())
}
