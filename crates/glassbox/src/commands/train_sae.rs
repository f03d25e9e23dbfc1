//! `glassbox train-sae`: a dictionary (SAE or transcoder) trained on a hook's
//! activations, streamed through the shuffle-buffer store, with checkpoints, a JSONL
//! metrics log, the resolved config and a held-out evaluation in the run directory.

use crate::open::{atomic_write, model_label, open_model, progress};
use anyhow::{bail, Context, Result};
use glassbox_data::store::{ActivationStore, StoreOptions};
use glassbox_sae::train::{
    checkpoint, BDecInit, L1Recipe, Normalize, TrainArch, TrainConfig, Trainer,
};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

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
}

macro_rules! merge {
    ($cli:expr, $file:expr, $($f:ident),*) => { $( if $cli.$f.is_none() { $cli.$f = $file.$f.clone(); } )* };
}

/// The resolved run: what `config.toml` records.
#[derive(Serialize)]
struct Run {
    /// the model's resolved path (what `glassbox features build` and `serve` reopen)
    model: String,
    model_name: String,
    hook: String,
    hook_out: Option<String>,
    corpus: String,
    text_field: String,
    tokens: usize,
    context_size: usize,
    buffer_tokens: usize,
    cache_dir: Option<PathBuf>,
    checkpoint_every_tokens: usize,
    eval_tokens: usize,
    first_position_excluded: bool,
    special_tokens_excluded: bool,
    train: TrainConfig,
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
            out
        );
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
    let steps = tokens / batch;
    let l1_style = matches!(arch, TrainArch::Standard | TrainArch::Gated);
    let cfg_base = TrainConfig {
        arch,
        d_sae: a.d_sae.unwrap_or(16384),
        k: a.k.unwrap_or(32),
        l1_recipe: parse_enum(
            "l1-recipe",
            a.l1_recipe.as_deref().unwrap_or("anthropic"),
            &[
                ("anthropic", L1Recipe::Anthropic),
                ("unit-norm", L1Recipe::UnitNorm),
            ],
        )?,
        sparsity_coefficient: a.sparsity_coefficient.unwrap_or(match arch {
            TrainArch::JumpReLU => 0.001,
            _ => 5.0,
        }),
        sparsity_warmup_steps: a.sparsity_warmup_steps.unwrap_or(if l1_style {
            steps / 20
        } else {
            0
        }),
        lr: a.lr.unwrap_or(if arch.uses_k() { 1e-3 } else { 3e-4 }),
        lr_warmup_steps: a.lr_warmup_steps.unwrap_or(0),
        lr_decay_fraction: a.lr_decay_fraction.unwrap_or(0.2),
        grad_clip: a.grad_clip.unwrap_or(if l1_style { 1.0 } else { 0.0 }),
        aux_k_coefficient: a.aux_k_coefficient.unwrap_or(1.0 / 32.0),
        dead_window_tokens: a
            .dead_window_tokens
            .unwrap_or((tokens as u64 / 10).max(batch as u64)),
        resample_every_steps: a.resample_every_steps.unwrap_or(0),
        jumprelu_init_threshold: a.jumprelu_init_threshold.unwrap_or(0.01),
        b_dec_init: parse_enum(
            "b-dec-init",
            a.b_dec_init.as_deref().unwrap_or("geometric_median"),
            &[
                ("geometric_median", BDecInit::GeometricMedian),
                ("mean", BDecInit::Mean),
                ("zeros", BDecInit::Zeros),
            ],
        )?,
        normalize: parse_enum(
            "normalize",
            a.normalize.as_deref().unwrap_or("expected_average_only_in"),
            &[
                ("expected_average_only_in", Normalize::ExpectedAverageOnlyIn),
                ("none", Normalize::None),
            ],
        )?,
        skip: a.skip.unwrap_or(false),
        batch,
        seed: a.seed.unwrap_or(0),
        ..TrainConfig::default()
    };
    let model = open_model(&model_spec)?;
    let hook = a
        .hook
        .clone()
        .unwrap_or_else(|| "blocks.15.hook_resid_pre".into());
    let mut hooks = vec![hook.clone()];
    hooks.extend(a.hook_out.clone());
    let corpus = match &a.corpus {
        Some(c) => c.clone(),
        None => glassbox_hub::fetch_default_corpus()?.join("data"),
    };
    let text_field = a.text_field.clone().unwrap_or_else(|| "text".into());
    let corpus_read = glassbox_data::read_corpus(&corpus, &text_field)?;
    eprintln!("corpus {}: {}", corpus.display(), corpus_read.report);
    let context_size = a.context_size.unwrap_or(128);
    let bos = model.tokenizer()?.bos_token_id;
    let (train_w, eval_w) = glassbox_data::pack(
        &model,
        &corpus_read.texts,
        context_size,
        bos,
        cfg_base.seed,
        glassbox_data::HELD_OUT_FRACTION,
    )?;
    // the token rule, then the massive-activation threshold measured on the first
    // training windows (glassbox_model::rows says why this one); stored with the dictionary
    let token_rule = glassbox_model::RowRule::for_model(&model);
    let massive = glassbox_data::calibrate_massive(&model, &train_w, &hook, &token_rule)?;
    if let Some(m) = &massive {
        eprintln!(
            "massive activations: rows whose {} norm is over {:.1} ({}× the {} quantile of {} calibration windows) are left out",
            m.hook,
            m.threshold,
            glassbox_model::MASSIVE_FACTOR,
            glassbox_model::MASSIVE_QUANTILE,
            train_w.len().min(glassbox_data::CALIBRATION_WINDOWS)
        );
    }
    let rule = token_rule.with_massive(massive.clone());
    // harvest only the windows the token budget needs (whole chunks would harvest up to
    // a chunk more: 524,288 rows for a 300,000-token run)
    // 1 % over the budget: massive rows are passed over, not served
    let train_w = windows_for_budget(train_w, &rule, tokens + tokens / 100);
    // the store harvests a whole buffer before serving from it: never more than the run needs
    let buffer_tokens = a.buffer_tokens.unwrap_or(262_144).min(tokens.max(1));
    let mut opts = StoreOptions::new(hooks.clone());
    opts.buffer_tokens = buffer_tokens;
    opts.seed = cfg_base.seed;
    opts.cache_dir = a.cache_dir.clone();
    opts.rows = rule.clone();
    let harvest_windows = train_w.len();
    let mut store = ActivationStore::new(&model, train_w, opts)?;
    // Bars: the harvest's own (the store harvests a chunk at a time, also mid-training)
    // and the trainer's, stacked.
    let bars = indicatif::MultiProgress::new();
    let harvest_bar = bars.add(progress(
        harvest_windows,
        &format!("harvesting {} (windows)", hooks.join(" → ")),
    ));
    {
        let hb = harvest_bar.clone();
        store.set_on_harvest(Box::new(move |n| {
            glassbox_sae::train::kill_point::kill_point("harvest");
            hb.inc(n as u64);
            if hb.position() >= hb.length().unwrap_or(0) {
                hb.finish_and_clear();
            }
        }));
    }
    anyhow::ensure!(
        store.total_rows() >= tokens as u64,
        "the corpus gives {} training tokens (positions ≥ 1, special tokens left out); --tokens {tokens} needs more text or a smaller --tokens",
        store.total_rows()
    );
    let widths = store.widths().to_vec();
    let cfg = TrainConfig {
        d_in: widths[0],
        d_out: widths.get(1).copied(),
        ..cfg_base
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    let eval_tokens = a.eval_tokens.unwrap_or(16_384);
    let checkpoint_every = a.checkpoint_every_tokens.unwrap_or(500_000);
    let model_path = glassbox_hub::resolve_model(&model_spec)?;
    let run_cfg = Run {
        model: std::fs::canonicalize(&model_path)
            .unwrap_or(model_path)
            .display()
            .to_string(),
        model_name: model_label(&model),
        hook: hook.clone(),
        hook_out: a.hook_out.clone(),
        corpus: corpus.display().to_string(),
        text_field,
        tokens,
        context_size,
        buffer_tokens,
        cache_dir: a.cache_dir.clone(),
        checkpoint_every_tokens: checkpoint_every,
        eval_tokens,
        first_position_excluded: true,
        special_tokens_excluded: true,
        train: cfg.clone(),
    };
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the run directory {}", out.display()))?;
    let ckpt_dir = out.join("checkpoint");
    let log_path = out.join("metrics.jsonl");
    eprintln!(
        "activation store: {} tokens of {} in chunks of {buffer_tokens} ({:.0} MiB buffer){}",
        store.total_rows(),
        hooks.join(" → "),
        store.memory_bytes() as f64 / (1 << 20) as f64,
        store
            .cache_folder()
            .map(|p| format!(", cache {}", p.display()))
            .unwrap_or_default()
    );
    if let Some(path) = &a.export_acts {
        export_activations(
            &model,
            &mut store,
            &eval_w,
            &hooks,
            tokens,
            eval_tokens,
            path,
        )?;
    }
    let (mut trainer, start_rows) = if a.resume && checkpoint::exists(&ckpt_dir) {
        let (t, extra) = checkpoint::load(&ckpt_dir)?;
        if serde_json::to_value(&t.cfg)? != serde_json::to_value(&cfg)? {
            bail!(
                "the checkpoint in {} was trained with a different configuration; resume with the same options (see {}) or use a new --out",
                ckpt_dir.display(),
                out.join("config.toml").display()
            );
        }
        let rows = extra["rows_served"]
            .as_u64()
            .context("checkpoint lacks rows_served")?;
        eprintln!("resuming at step {} ({rows} tokens)", t.step);
        truncate_log(&log_path, t.step)?;
        (t, rows)
    } else {
        if a.resume {
            eprintln!(
                "no checkpoint in {}: starting from scratch",
                ckpt_dir.display()
            );
        } else if checkpoint::exists(&ckpt_dir) {
            bail!(
                "{} already holds a training run; pass --resume to continue it or choose another --out",
                out.display()
            );
        }
        let mut t = Trainer::new(cfg.clone(), steps)?;
        // normalisation and b_dec from the first rows, then rewind: deterministic
        let sample_rows = batch.max(16_384).min(tokens);
        let mut sample = vec![Vec::new(); hooks.len()];
        store.next_batch(sample_rows, &mut sample)?;
        t.prepare(&sample[0], sample.get(1).map(|v| &v[..]));
        std::fs::write(&log_path, "").context("cannot create metrics.jsonl")?;
        (t, 0)
    };
    atomic_write(&out.join("config.toml"), |tmp| {
        Ok(std::fs::write(tmp, toml::to_string_pretty(&run_cfg)?)?)
    })?;
    store.skip_to(start_rows)?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .context("cannot open metrics.jsonl")?;
    let bar = bars.add(progress(steps, &format!("training {arch_name} (steps)")));
    bar.set_position(trainer.step as u64);
    let started = std::time::Instant::now();
    let first_step = trainer.step;
    let mut buf = vec![Vec::new(); hooks.len()];
    let mut last_ckpt = start_rows;
    while trainer.step < steps {
        let got = store.next_batch(batch, &mut buf)?;
        if got < batch {
            break;
        }
        let report = trainer
            .step(&buf[0], buf.get(1).map(|v| &v[..]))
            .map_err(|e| anyhow::anyhow!("{e} (run directory {})", out.display()))?;
        bar.inc(1);
        let done = trainer.step;
        if done % 10 == 0 || done == steps {
            let tps = ((done - first_step) * batch) as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "{arch_name}: {tps:.0} tok/s, L0 {:.1}, FVU {:.3}, dead {:.1} %",
                report.losses.l0,
                report.fvu,
                report.dead_fraction * 100.0
            ));
            let line = serde_json::json!({
                "step": report.step, "tokens": done * batch, "mse": report.losses.mse,
                "fvu": report.fvu, "l0": report.losses.l0, "sparsity_loss": report.losses.sparsity,
                "aux_loss": report.losses.aux, "dead_fraction": report.dead_fraction, "lr": report.lr,
                "sparsity_coefficient": report.sparsity_coefficient, "grad_norm": report.grad_norm,
                "dense_kernels": report.dense_kernels, "resampled": report.resampled,
                "tokens_per_s": tps,
            });
            writeln!(log, "{line}").context("cannot append to metrics.jsonl")?;
        }
        glassbox_sae::train::kill_point::kill_point("step");
        let rows = store.rows_served();
        if checkpoint_every > 0 && rows - last_ckpt >= checkpoint_every as u64 && done < steps {
            checkpoint::save(
                &trainer,
                &ckpt_dir,
                serde_json::json!({ "rows_served": rows }),
            )?;
            last_ckpt = rows;
        }
    }
    bar.finish_and_clear();
    harvest_bar.finish_and_clear();
    let train_secs = started.elapsed().as_secs_f64();
    let trained_tokens = (trainer.step - first_step) * batch;
    checkpoint::save(
        &trainer,
        &ckpt_dir,
        serde_json::json!({ "rows_served": store.rows_served() }),
    )?;
    let dict = trainer.to_dictionary(
        Some(hook.clone()),
        a.hook_out.clone(),
        Some(model_label(&model)),
    )?;
    let mut dict = dict;
    if let Some(serde_json::Value::Object(meta)) = dict.extra_cfg.get_mut("metadata") {
        meta.insert("context_size".into(), context_size.into());
        meta.insert("seqpos_slice".into(), serde_json::json!([1, null]));
        meta.insert("training_tokens".into(), (trainer.step * batch).into());
        if let Some(m) = &massive {
            meta.insert(glassbox_model::MassiveNorm::CFG_KEY.into(), m.to_json());
        }
    }
    glassbox_sae::format::save_saelens(&dict, &out)?;
    // held-out evaluation: reconstruction and the model's loss with the dictionary spliced in
    let eval_windows = eval_tokens
        .div_ceil(context_size - 1)
        .min(eval_w.len())
        .max(1);
    let bar = progress(eval_windows, "evaluating on held-out windows");
    let eval = glassbox_analysis::sae_eval::evaluate(
        &model.transformer,
        &dict,
        &eval_w[..eval_windows],
        &glassbox_analysis::sae_eval::EvalOptions {
            rows: rule.clone(),
            ..Default::default()
        },
        |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    let metrics = serde_json::json!({
        "arch": arch_name, "hook": hook, "hook_out": a.hook_out, "d_in": cfg.d_in, "d_out": cfg.d_out(),
        "d_sae": cfg.d_sae, "k": arch.uses_k().then_some(cfg.k), "train_tokens": trainer.step * batch,
        "steps": trainer.step, "train_seconds_this_session": train_secs,
        "train_tokens_per_s": trained_tokens as f64 / train_secs.max(1e-9),
        "train_massive_rows_excluded": store.massive_passed_over(),
        "massive_norm": massive.as_ref().map(|m| m.to_json()),
        "eval": eval,
    });
    atomic_write(&out.join("metrics.json"), |tmp| {
        Ok(std::fs::write(
            tmp,
            serde_json::to_string_pretty(&metrics)?,
        )?)
    })?;
    println!(
        "trained {arch_name} d_sae={} on {} tokens of {hook}{} in {train_secs:.1} s ({:.0} tokens/s)",
        cfg.d_sae,
        trainer.step * batch,
        a.hook_out.as_ref().map(|h| format!(" → {h}")).unwrap_or_default(),
        trained_tokens as f64 / train_secs.max(1e-9)
    );
    println!(
        "held-out ({} tokens): FVU {:.4}, L0 {:.1}, dead {:.1} %, CE loss recovered {:.1} %",
        eval.tokens,
        eval.fvu,
        eval.l0,
        eval.dead_fraction * 100.0,
        eval.ce_recovered * 100.0
    );
    println!("run directory: {}", out.display());
    Ok(())
}

/// Keeps the log lines of steps before `step` (a resumed run rewrites the rest).
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| (s as usize) < step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    atomic_write(path, |tmp| Ok(std::fs::write(tmp, kept)?))
}

fn export_activations(
    model: &glassbox_model::Model,
    store: &mut ActivationStore,
    eval_w: &[Vec<u32>],
    hooks: &[String],
    tokens: usize,
    eval_tokens: usize,
    path: &Path,
) -> Result<()> {
    let mut rows = vec![Vec::new(); hooks.len()];
    let bar = progress(tokens, "collecting training activations (tokens)");
    let mut train = Vec::with_capacity(tokens * store.widths()[0]);
    while train.len() < tokens * store.widths()[0] {
        let n = store.next_batch(
            4096.min(tokens - train.len() / store.widths()[0]),
            &mut rows,
        )?;
        if n == 0 {
            break;
        }
        train.extend_from_slice(&rows[0]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    store.skip_to(0)?;
    let d = store.widths()[0];
    let windows = eval_tokens
        .div_ceil(store.context_size() - 1)
        .min(eval_w.len());
    let (eval, _) = glassbox_data::harvest(model, &eval_w[..windows], &hooks[0], 8, |_| {})?;
    let dev = &candle_core::Device::Cpu;
    let t = std::collections::HashMap::from([
        (
            "train".to_string(),
            candle_core::Tensor::from_slice(&train, (train.len() / d, d), dev)?,
        ),
        (
            "eval".to_string(),
            candle_core::Tensor::from_slice(&eval, (eval.len() / d, d), dev)?,
        ),
    ]);
    atomic_write(path, |tmp| {
        candle_core::safetensors::save(&t, tmp).context("cannot write activations")
    })?;
    eprintln!(
        "wrote {} training and {} held-out rows to {}",
        train.len() / d,
        eval.len() / d,
        path.display()
    );
    Ok(())
}

/// The shortest prefix of `windows` whose rows (by `rule`) cover `tokens`, or all of them.
fn windows_for_budget(
    mut windows: Vec<Vec<u32>>,
    rule: &glassbox_model::RowRule,
    tokens: usize,
) -> Vec<Vec<u32>> {
    let mut rows = 0;
    let needed = windows
        .iter()
        .position(|w| {
            rows += rule.positions(w).count();
            rows >= tokens
        })
        .map_or(windows.len(), |i| i + 1);
    windows.truncate(needed);
    windows
}
