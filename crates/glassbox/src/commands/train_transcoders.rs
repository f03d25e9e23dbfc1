//! `glassbox train-transcoders`: flags into [`glassbox_train::TranscoderSetOptions`]; the
//! set is trained by [`glassbox_train::train_transcoder_set`].

use crate::open::{in_flag_words, open_model, Bars};
use anyhow::{Context, Result};
use glassbox_sae::train::TrainArch;
use glassbox_train::TranscoderSetOptions;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    /// Layers: `A..B` (B excluded: `0..30` is every layer of a 30-layer model), `A..=B`,
    /// a list `3,7,11`, or one layer (default: every layer)
    #[arg(long)]
    layers: Option<String>,
    /// topk | batchtopk | standard | jumprelu | gated (SAELens reads standard and
    /// jumprelu transcoders; topk ones are glassbox's own `topk_transcoder`)
    #[arg(long, default_value = "topk")]
    arch: String,
    #[arg(long, default_value_t = 2048)]
    d_sae: usize,
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Linear skip connection W_skip·x
    #[arg(long)]
    skip: bool,
    #[arg(long, default_value_t = 200_000)]
    tokens: usize,
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long)]
    sparsity_coefficient: Option<f32>,
    #[arg(long, default_value_t = 128)]
    context_size: usize,
    /// Shuffle buffer in tokens: every layer's input and output are buffered, so memory
    /// is tokens × 2 × layers × d_model × 4 bytes
    #[arg(long, default_value_t = 16_384)]
    buffer_tokens: usize,
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Held-out windows for the evaluation
    #[arg(long, default_value_t = 16)]
    eval_windows: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save every layer's trainer (weights, optimiser, data position) this often, in
    /// OUT/checkpoint (0: never)
    #[arg(long, default_value_t = 500_000)]
    checkpoint_every_tokens: usize,
    /// Continue the run in OUT from its last checkpoint (same options)
    #[arg(long)]
    resume: bool,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let arch = TrainArch::parse(&a.arch).with_context(|| {
        format!(
            "--arch `{}` is not one of: topk, batchtopk, standard, jumprelu, gated",
            a.arch
        )
    })?;
    anyhow::ensure!(
        a.batch > 0 && a.tokens >= a.batch,
        "--tokens must be at least one --batch"
    );
    let model = open_model(&a.model)?;
    let opts = TranscoderSetOptions {
        layers: crate::names::parse_layers(a.layers.as_deref(), model.config().n_layers)?,
        arch,
        d_sae: a.d_sae,
        k: a.k,
        skip: a.skip,
        tokens: a.tokens,
        batch: a.batch,
        lr: a.lr,
        sparsity_coefficient: a.sparsity_coefficient,
        context_size: a.context_size,
        buffer_tokens: a.buffer_tokens,
        cache_dir: a.cache_dir.clone(),
        corpus: a.corpus.clone(),
        text_field: a.text_field.clone(),
        eval_windows: a.eval_windows,
        seed: a.seed,
        checkpoint_every_tokens: a.checkpoint_every_tokens,
        resume: a.resume,
    };
    let run = glassbox_train::train_transcoder_set(&model, &opts, &a.out, &Bars::new(&a.arch))
        .map_err(in_flag_words)?;
    let spliced = &run.spliced;
    println!(
        "trained {} transcoders ({}, d_sae {}) on {} tokens in {:.0} s; all spliced at once: CE {:.3} vs clean {:.3}, zero-ablated {:.3} → CE recovered {:.1} %, KL recovered {:.1} %",
        opts.layers.len(),
        a.arch,
        a.d_sae,
        run.train_tokens,
        run.train_seconds,
        spliced.ce_spliced,
        spliced.ce_clean,
        spliced.ce_zero_ablated,
        spliced.ce_recovered * 100.0,
        spliced.kl_recovered * 100.0
    );
    println!("transcoder set: {}", a.out.join("index.json").display());
    Ok(())
}
