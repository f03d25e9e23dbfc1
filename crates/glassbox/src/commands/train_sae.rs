//! `glassbox train-sae`: flags and `--config FILE` resolved into a
//! [`glassbox_train::SaeRunOptions`], the run itself is [`glassbox_train::train_sae`].

use crate::open::{in_flag_words, open_model, Bars};
use anyhow::{Context, Result};
use glassbox_dist::Collective;
use glassbox_sae::train::{BDecInit, L1Recipe, Normalize, TrainArch, TrainConfig};
use glassbox_train::SaeRunOptions;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Every option is optional here so a `--config FILE` (TOML, same names in snake_case)
/// can supply it; the command line wins over the file, the file over the defaults.
#[derive(clap::Args, Deserialize, Serialize, Default, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct Args {
    /// TOML file with any of these options (e.g. `arch = "topk"`, `d_sae = 16384`)
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    #[arg(long)]
    model: Option<String>,
    /// The hook the dictionary reads [default: blocks.15.hook_resid_pre]
    #[arg(long)]
    hook: Option<String>,
    /// Train a transcoder predicting this hook (e.g. blocks.5.hook_mlp_out from
    /// blocks.5.ln2.hook_normalized)
    #[arg(long)]
    hook_out: Option<String>,
    /// Transcoders: add a linear skip connection
    #[arg(long)]
    skip: Option<bool>,
    /// topk | batchtopk | standard | jumprelu | gated [default: topk]
    #[arg(long)]
    arch: Option<String>,
    /// Latents [default: 16384]
    #[arg(long)]
    d_sae: Option<usize>,
    /// Active latents per token (topk, batchtopk) [default: 32]
    #[arg(long)]
    k: Option<usize>,
    /// Training tokens [default: 2000000]
    #[arg(long)]
    tokens: Option<usize>,
    /// A .txt/.jsonl/.parquet file or folder [default: the fetched State of the Union]
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// JSONL field / Parquet column holding the text [default: text]
    #[arg(long)]
    text_field: Option<String>,
    /// Tokens per window, BOS first [default: 128]
    #[arg(long)]
    context_size: Option<usize>,
    /// Tokens per optimisation step [default: 4096]
    #[arg(long)]
    batch: Option<usize>,
    /// Adam learning rate [default: 1e-3 for topk/batchtopk, 3e-4 otherwise]
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long)]
    lr_warmup_steps: Option<usize>,
    /// Linear decay to 0 over this final fraction of steps [default: 0.2]
    #[arg(long)]
    lr_decay_fraction: Option<f32>,
    /// L1 (standard, gated) or L0 (jumprelu) coefficient [default: 5 / 5 / 0.001]
    #[arg(long, alias = "l1-coefficient")]
    sparsity_coefficient: Option<f32>,
    /// Sparsity coefficient warm-up [default: 5 % of steps for L1-style]
    #[arg(long)]
    sparsity_warmup_steps: Option<usize>,
    /// anthropic (L1 × decoder norm, SAELens' standard) | unit-norm [default: anthropic]
    #[arg(long)]
    l1_recipe: Option<String>,
    /// Clip the global gradient norm (0 = off) [default: 1 for L1-style, 0 otherwise]
    #[arg(long)]
    grad_clip: Option<f32>,
    /// AuxK coefficient (topk, batchtopk) [default: 1/32]
    #[arg(long)]
    aux_k_coefficient: Option<f32>,
    /// A latent is dead after this many tokens without firing [default: 10 % of --tokens]
    #[arg(long)]
    dead_window_tokens: Option<u64>,
    /// ReLU-family: resample dead latents every N steps (0 = never) [default: 0]
    #[arg(long)]
    resample_every_steps: Option<usize>,
    /// JumpReLU initial threshold [default: 0.01]
    #[arg(long)]
    jumprelu_init_threshold: Option<f32>,
    /// geometric_median | mean | zeros [default: geometric_median]
    #[arg(long)]
    b_dec_init: Option<String>,
    /// expected_average_only_in | none [default: expected_average_only_in]
    #[arg(long)]
    normalize: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    /// Shuffle buffer in tokens (memory: tokens × width × 4 bytes) [default: 262144]
    #[arg(long)]
    buffer_tokens: Option<usize>,
    /// Reuse harvested activations across runs (safetensors shards)
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Checkpoint every N training tokens (0 = only at the end) [default: 500000]
    #[arg(long)]
    checkpoint_every_tokens: Option<usize>,
    /// Held-out tokens for the final evaluation [default: 16384]
    #[arg(long)]
    eval_tokens: Option<usize>,
    /// Run directory: dictionary (SAELens), config.toml, metrics.jsonl, metrics.json,
    /// checkpoint/
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the run directory's checkpoint
    #[arg(long)]
    #[serde(skip)]
    resume: bool,
    /// Also write the training and held-out activations (`train`, `eval`) as
    /// safetensors, for a baseline on identical data (../shared/bench/saelens_train_on_acts.py)
    #[arg(long)]
    #[serde(skip)]
    export_acts: Option<PathBuf>,
    /// Train from an activation folder `glassbox harvest` wrote (model, hook, corpus,
    /// context, buffer and seed come from its manifest; --tokens may be fewer)
    #[arg(long)]
    acts: Option<PathBuf>,
    /// Data-parallel over the ranks of an MPI job (`mpirun -np R glassbox train-sae
    /// --distributed --acts DIR …`; a build with `--features mpi`): each rank steps on
    /// batch / R rows of every batch, the gradients summed after each step
    #[arg(long)]
    #[serde(skip)]
    distributed: bool,
    /// Split the latents over the ranks of an MPI job instead of the rows (TopK; the
    /// ranks must divide --d-sae): each rank holds d_sae / R latents, for dictionaries
    /// too wide for one machine (`mpirun -np R glassbox train-sae --shard-latents --acts
    /// DIR …`)
    #[arg(long)]
    #[serde(skip)]
    shard_latents: bool,
}

macro_rules! merge {
    ($cli:expr, $file:expr, $($f:ident),*) => { $( if $cli.$f.is_none() { $cli.$f = $file.$f.clone(); } )* };
}

fn parse_enum<T>(what: &str, v: &str, options: &[(&str, T)]) -> Result<T>
where
    T: Copy,
{
    options
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(v))
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            anyhow::anyhow!("--{what} `{v}` is not one of: {}", names.join(", "))
        })
}

pub fn run(mut a: Args) -> Result<()> {
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let file: Args = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid train-sae config", path.display()))?;
        merge!(
            a,
            file,
            model,
            hook,
            hook_out,
            skip,
            arch,
            d_sae,
            k,
            tokens,
            corpus,
            text_field,
            context_size,
            batch,
            lr,
            lr_warmup_steps,
            lr_decay_fraction,
            sparsity_coefficient,
            sparsity_warmup_steps,
            l1_recipe,
            grad_clip,
            aux_k_coefficient,
            dead_window_tokens,
            resample_every_steps,
            jumprelu_init_threshold,
            b_dec_init,
            normalize,
            seed,
            buffer_tokens,
            cache_dir,
            checkpoint_every_tokens,
            eval_tokens,
            out,
            acts
        );
    }
    let launched = glassbox_dist::launched_ranks().unwrap_or(1);
    anyhow::ensure!(
        a.distributed || a.shard_latents || launched <= 1,
        "this process is one of {launched} ranks an MPI launcher started: pass --distributed to train data-parallel across them (or --shard-latents to split the latents), or run train-sae without mpirun"
    );
    anyhow::ensure!(
        !(a.distributed && a.shard_latents),
        "--distributed and --shard-latents cannot be combined yet (a grid of data × latent ranks): pick one; --shard-latents for a dictionary too wide for one machine, --distributed for more rows a second"
    );
    let job = if a.distributed {
        glassbox_dist::join(Some("--distributed"))?
    } else if a.shard_latents {
        glassbox_dist::join(Some("--shard-latents"))?
    } else {
        glassbox_dist::Job::Alone
    };
    if let Some(dir) = a.acts.clone() {
        take_from_manifest(&mut a, &dir)?;
    }
    let out = a
        .out
        .clone()
        .context("--out DIR is required (the run directory)")?;
    let model_spec = a.model.clone().context("--model is required")?;
    let arch_name = a.arch.clone().unwrap_or_else(|| "topk".into());
    let arch = TrainArch::parse(&arch_name).with_context(|| {
        format!("--arch `{arch_name}` is not one of: topk, batchtopk, standard, jumprelu, gated")
    })?;
    let tokens = a.tokens.unwrap_or(2_000_000);
    let batch = a.batch.unwrap_or(4096);
    anyhow::ensure!(
        batch > 0 && tokens >= batch,
        "--tokens ({tokens}) must be at least one --batch ({batch})"
    );
    let d = TrainConfig::for_run(arch, tokens, batch);
    let train = TrainConfig {
        d_sae: a.d_sae.unwrap_or(d.d_sae),
        k: a.k.unwrap_or(d.k),
        l1_recipe: match &a.l1_recipe {
            Some(v) => parse_enum(
                "l1-recipe",
                v,
                &[
                    ("anthropic", L1Recipe::Anthropic),
                    ("unit-norm", L1Recipe::UnitNorm),
                ],
            )?,
            None => d.l1_recipe,
        },
        sparsity_coefficient: a.sparsity_coefficient.unwrap_or(d.sparsity_coefficient),
        sparsity_warmup_steps: a.sparsity_warmup_steps.unwrap_or(d.sparsity_warmup_steps),
        lr: a.lr.unwrap_or(d.lr),
        lr_warmup_steps: a.lr_warmup_steps.unwrap_or(d.lr_warmup_steps),
        lr_decay_fraction: a.lr_decay_fraction.unwrap_or(d.lr_decay_fraction),
        grad_clip: a.grad_clip.unwrap_or(d.grad_clip),
        aux_k_coefficient: a.aux_k_coefficient.unwrap_or(d.aux_k_coefficient),
        dead_window_tokens: a.dead_window_tokens.unwrap_or(d.dead_window_tokens),
        resample_every_steps: a.resample_every_steps.unwrap_or(d.resample_every_steps),
        jumprelu_init_threshold: a
            .jumprelu_init_threshold
            .unwrap_or(d.jumprelu_init_threshold),
        b_dec_init: match &a.b_dec_init {
            Some(v) => parse_enum(
                "b-dec-init",
                v,
                &[
                    ("geometric_median", BDecInit::GeometricMedian),
                    ("mean", BDecInit::Mean),
                    ("zeros", BDecInit::Zeros),
                ],
            )?,
            None => d.b_dec_init,
        },
        normalize: match &a.normalize {
            Some(v) => parse_enum(
                "normalize",
                v,
                &[
                    ("expected_average_only_in", Normalize::ExpectedAverageOnlyIn),
                    ("none", Normalize::None),
                ],
            )?,
            None => d.normalize,
        },
        skip: a.skip.unwrap_or(false),
        seed: a.seed.unwrap_or(0),
        ..d
    };
    let hook = a
        .hook
        .clone()
        .unwrap_or_else(|| "blocks.15.hook_resid_pre".into());
    let mut opts = SaeRunOptions::new(&hook, tokens, train);
    opts.hook_out = a.hook_out.clone();
    opts.corpus = a.corpus.clone();
    if let Some(f) = &a.text_field {
        opts.text_field = f.clone();
    }
    opts.context_size = a.context_size.unwrap_or(opts.context_size);
    opts.buffer_tokens = a.buffer_tokens.unwrap_or(opts.buffer_tokens);
    opts.cache_dir = a.cache_dir.clone();
    opts.checkpoint_every_tokens = a
        .checkpoint_every_tokens
        .unwrap_or(opts.checkpoint_every_tokens);
    opts.eval_tokens = a.eval_tokens.unwrap_or(opts.eval_tokens);
    opts.resume = a.resume;
    opts.export_acts = a.export_acts.clone();
    opts.acts = a.acts.clone();
    opts.shard_latents = a.shard_latents;
    let model = open_model(&model_spec)?;
    let meter = glassbox_audit::ledger::Meter::start("train");
    // rank 0 draws the bars and prints; the other ranks are quiet
    let bars = Bars::new(&arch_name);
    let progress: &dyn glassbox_train::Progress = if job.is_root() {
        &bars
    } else {
        &glassbox_train::Silent
    };
    let run = match glassbox_train::train_sae_with(&model, &opts, &out, progress, &job) {
        Ok(Some(run)) => run,
        Ok(None) => return Ok(()),
        // every rank reaches the same refusal; anything else may be one rank's alone
        Err(e) if e.downcast_ref::<glassbox_train::RunError>().is_some() => {
            return Err(in_flag_words(e))
        }
        Err(e) => return Err(job.fail(e)),
    };
    let m = &run.metrics;
    // harvest (the model to the hook) and training, per training token
    let per_token = crate::commands::audit::forward_flops_to(&model, &hook, opts.context_size)
        + glassbox_audit::cost::dictionary_train_flops(m.d_in, m.d_sae, m.d_out);
    crate::commands::audit::record_stage(
        &out,
        meter,
        m.train_tokens as u64,
        per_token * m.train_tokens as f64,
    );
    println!(
        "trained {arch_name} d_sae={} on {} tokens of {hook}{} in {:.1} s ({:.0} tokens/s)",
        m.d_sae,
        m.train_tokens,
        a.hook_out
            .as_ref()
            .map(|h| format!(" → {h}"))
            .unwrap_or_default(),
        m.train_seconds_this_session,
        m.train_tokens_per_s
    );
    let eval = &m.eval;
    println!(
        "held-out ({} tokens): FVU {:.4}, L0 {:.1}, dead {:.1} %, CE loss recovered {:.1} %",
        eval.tokens,
        eval.fvu,
        eval.l0,
        eval.dead_fraction * 100.0,
        eval.ce_recovered * 100.0
    );
    if job.size() > 1 && a.shard_latents {
        println!(
            "latents sharded over {} ranks: {} latents per rank, {:.1} MiB communicated by rank 0 in all",
            job.size(),
            m.d_sae / job.size(),
            job.bytes_communicated() as f64 / (1 << 20) as f64
        );
    } else if job.size() > 1 {
        println!(
            "data-parallel over {} ranks: {} per rank per step, {:.1} MiB communicated by rank 0 in all",
            job.size(),
            opts.train.batch / job.size(),
            job.bytes_communicated() as f64 / (1 << 20) as f64
        );
    }
    println!("run directory: {}", out.display());
    Ok(())
}

/// Fills the options a harvest fixed from the activation folder's manifest, and refuses
/// any given on the command line that contradict it.
fn take_from_manifest(a: &mut Args, dir: &std::path::Path) -> Result<()> {
    let m = glassbox_train::acts::ActsManifest::read(dir)?;
    fn fill<T: PartialEq + std::fmt::Display + Clone>(
        flag: &str,
        mine: &mut Option<T>,
        theirs: T,
        dir: &std::path::Path,
    ) -> Result<()> {
        match mine {
            Some(v) if *v != theirs => anyhow::bail!(
                "--{flag} {v} differs from the activation folder's {theirs} ({}): leave --{flag} out, or harvest again with it",
                dir.display()
            ),
            _ => *mine = Some(theirs),
        }
        Ok(())
    }
    fill("model", &mut a.model, m.model.clone(), dir)?;
    fill("hook", &mut a.hook, m.hooks[0].clone(), dir)?;
    if let Some(out) = m.hooks.get(1) {
        fill("hook-out", &mut a.hook_out, out.clone(), dir)?;
    }
    if a.corpus.is_none() {
        a.corpus = Some(PathBuf::from(&m.corpus));
    }
    fill("text-field", &mut a.text_field, m.text_field.clone(), dir)?;
    fill("context-size", &mut a.context_size, m.context_size, dir)?;
    fill("buffer-tokens", &mut a.buffer_tokens, m.buffer_tokens, dir)?;
    fill("seed", &mut a.seed, m.seed, dir)?;
    a.tokens.get_or_insert(m.tokens);
    Ok(())
}
