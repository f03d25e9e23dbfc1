//! `glassbox train-transcoders`: one transcoder per layer (MLP input → `hook_mlp_out`),
//! all trained from one pass over the corpus, saved as a transcoder set: SAELens files
//! per layer plus `index.json`; per-layer held-out FVU and the CE loss recovered with
//! every transcoder spliced in at once.

use crate::open::{model_label, open_model, progress};
use anyhow::{Context, Result};
use glassbox_data::store::{ActivationStore, StoreOptions};
use glassbox_sae::train::{TrainArch, TrainConfig, Trainer};
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

/// The set's checkpoint: OUT/checkpoint/set.json names a folder holding one trainer
/// checkpoint per layer, all at the same step; the pointer is replaced atomically after
/// the folder is complete, so a kill at any moment leaves the previous set intact.
mod set_checkpoint {
    use anyhow::{Context, Result};
    use glassbox_sae::train::{checkpoint, Trainer};
    use std::path::Path;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Pointer {
        step: usize,
        rows_served: u64,
        folder: String,
    }

    pub fn exists(root: &Path) -> bool {
        root.join("set.json").is_file()
    }

    pub fn save(root: &Path, layers: &[usize], trainers: &[Trainer], rows: u64) -> Result<()> {
        let step = trainers.first().map_or(0, |t| t.step);
        let folder = format!("step-{step:09}");
        for (l, t) in layers.iter().zip(trainers) {
            checkpoint::save(
                t,
                &root.join(&folder).join(format!("layer_{l:02}")),
                serde_json::json!({}),
            )?;
        }
        let pointer = Pointer {
            step,
            rows_served: rows,
            folder: folder.clone(),
        };
        crate::open::atomic_write(&root.join("set.json"), |tmp| {
            Ok(std::fs::write(
                tmp,
                serde_json::to_string_pretty(&pointer)?,
            )?)
        })?;
        // older sets are now unreferenced
        for e in std::fs::read_dir(root)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("step-") && name != folder {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }

    /// Every layer's trainer and the rows served at the last checkpoint.
    pub fn load(root: &Path, layers: &[usize]) -> Result<(Vec<Trainer>, u64)> {
        let path = root.join("set.json");
        let p: Pointer = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("{} is not a transcoder-set checkpoint", path.display()))?;
        let mut trainers = Vec::with_capacity(layers.len());
        for l in layers {
            let dir = root.join(&p.folder).join(format!("layer_{l:02}"));
            let (t, _) = checkpoint::load(&dir).with_context(|| {
                format!("the checkpoint has no layer {l}: resume with the same --layers")
            })?;
            anyhow::ensure!(
                t.step == p.step,
                "{}: at step {}, the set at {}",
                dir.display(),
                t.step,
                p.step
            );
            trainers.push(t);
        }
        Ok((trainers, p.rows_served))
    }
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
    let layers = crate::names::parse_layers(a.layers.as_deref(), model.config().n_layers)?;
    let hooks: Vec<String> = layers
        .iter()
        .flat_map(|l| {
            [
                format!("blocks.{l}.ln2.hook_normalized"),
                format!("blocks.{l}.hook_mlp_out"),
            ]
        })
        .collect();
    let corpus = match &a.corpus {
        Some(c) => c.clone(),
        None => glassbox_hub::fetch_default_corpus()?.join("data"),
    };
    let texts = glassbox_data::read_corpus(&corpus, &a.text_field)?;
    eprintln!("corpus {}: {}", corpus.display(), texts.report);
    let bos = model.tokenizer()?.bos_token_id;
    let (train_w, eval_w) = glassbox_data::pack(
        &model,
        &texts.texts,
        a.context_size,
        bos,
        a.seed,
        glassbox_data::HELD_OUT_FRACTION,
    )?;
    let mut opts = StoreOptions::new(hooks.clone());
    opts.buffer_tokens = a.buffer_tokens.min(a.tokens.max(1));
    opts.seed = a.seed;
    opts.cache_dir = a.cache_dir.clone();
    // One row rule for every layer (they train on the same tokens from one pass): the
    // token rule and the massive-activation threshold of the residual stream entering
    // the deepest layer's block, where the sinks are fully formed (glassbox_model::rows)
    let token_rule = glassbox_model::RowRule::for_model(&model);
    let deepest = format!("blocks.{}.hook_resid_pre", layers[layers.len() - 1]);
    let massive = glassbox_data::calibrate_massive(&model, &train_w, &deepest, &token_rule)?;
    if let Some(m) = &massive {
        eprintln!(
            "massive activations: rows whose {} norm is over {:.1} are left out at every layer",
            m.hook, m.threshold
        );
    }
    let rule = token_rule.with_massive(massive.clone());
    opts.rows = rule.clone();
    let mut store = ActivationStore::new(&model, train_w, opts)?;
    store.set_on_harvest(Box::new(|_| {
        glassbox_sae::train::kill_point::kill_point("harvest")
    }));
    anyhow::ensure!(
        store.total_rows() >= a.tokens as u64,
        "the corpus gives {} training tokens; --tokens {} needs more",
        store.total_rows(),
        a.tokens
    );
    eprintln!(
        "{} layers, one pass: activation buffer {:.0} MiB",
        layers.len(),
        store.memory_bytes() as f64 / (1 << 20) as f64
    );
    let widths = store.widths().to_vec();
    let steps = a.tokens / a.batch;
    let mut trainers = Vec::with_capacity(layers.len());
    for (i, _) in layers.iter().enumerate() {
        let cfg = TrainConfig {
            arch,
            d_in: widths[2 * i],
            d_out: Some(widths[2 * i + 1]),
            d_sae: a.d_sae,
            k: a.k,
            skip: a.skip,
            batch: a.batch,
            seed: a.seed + i as u64,
            lr: a.lr.unwrap_or(if arch.uses_k() { 1e-3 } else { 3e-4 }),
            sparsity_coefficient: a.sparsity_coefficient.unwrap_or(match arch {
                TrainArch::JumpReLU => 0.001,
                _ => 5.0,
            }),
            dead_window_tokens: (a.tokens as u64 / 10).max(a.batch as u64),
            ..TrainConfig::default()
        };
        trainers.push(Trainer::new(cfg, steps)?);
    }
    let mut buf = vec![Vec::new(); hooks.len()];
    let ckpt = a.out.join("checkpoint");
    let mut start_rows = 0;
    if a.resume && set_checkpoint::exists(&ckpt) {
        let (loaded, rows) = set_checkpoint::load(&ckpt, &layers)?;
        for (t, fresh) in loaded.iter().zip(&trainers) {
            anyhow::ensure!(
                serde_json::to_value(&t.cfg)? == serde_json::to_value(&fresh.cfg)?,
                "the checkpoint in {} was trained with other options; resume with the same options or use a new --out",
                ckpt.display()
            );
        }
        eprintln!("resuming at step {} ({rows} tokens)", loaded[0].step);
        trainers = loaded;
        start_rows = rows;
    } else {
        anyhow::ensure!(
            !set_checkpoint::exists(&ckpt),
            "{} already holds a training run; pass --resume to continue it or choose another --out",
            a.out.display()
        );
        let sample = a.batch.max(8192).min(a.tokens);
        store.next_batch(sample, &mut buf)?;
        for (i, t) in trainers.iter_mut().enumerate() {
            t.prepare(&buf[2 * i], Some(&buf[2 * i + 1]));
        }
    }
    store.skip_to(start_rows)?;
    let first = trainers[0].step;
    let bar = progress(steps, "training transcoders (steps)");
    bar.set_position(first as u64);
    let started = std::time::Instant::now();
    let mut fvu = vec![0f32; layers.len()];
    let mut last_ckpt = start_rows;
    for s in first..steps {
        if store.next_batch(a.batch, &mut buf)? < a.batch {
            break;
        }
        for (i, t) in trainers.iter_mut().enumerate() {
            let r = t
                .step(&buf[2 * i], Some(&buf[2 * i + 1]))
                .map_err(|e| anyhow::anyhow!("layer {}: {e}", layers[i]))?;
            fvu[i] = r.fvu;
        }
        bar.inc(1);
        glassbox_sae::train::kill_point::kill_point("step");
        let rows = store.rows_served();
        let every = a.checkpoint_every_tokens as u64;
        if every > 0 && rows - last_ckpt >= every && s + 1 < steps {
            set_checkpoint::save(&ckpt, &layers, &trainers, rows)?;
            last_ckpt = rows;
        }
        if s % 10 == 0 {
            let mean = fvu.iter().sum::<f32>() / fvu.len() as f32;
            let tps = ((s + 1 - first) * a.batch) as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "transcoders: mean batch FVU {mean:.3}, {tps:.0} tok/s"
            ));
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    // held-out: per-layer FVU on the eval windows, then everything spliced at once
    let eval_w = &eval_w[..a.eval_windows.min(eval_w.len()).max(1)];
    let harvest = glassbox_data::harvest_hooks(
        &model,
        eval_w,
        &hooks,
        &glassbox_data::HarvestOptions {
            rows: rule.clone(),
            ..glassbox_data::HarvestOptions::for_model(&model)
        },
        |_| {},
    )?;
    let mut dicts = Vec::new();
    let mut index_layers = Vec::new();
    for (i, (&l, t)) in layers.iter().zip(&trainers).enumerate() {
        let mut d = t.to_dictionary(
            Some(hooks[2 * i].clone()),
            Some(hooks[2 * i + 1].clone()),
            Some(model_label(&model)),
        )?;
        if let (Some(m), Some(serde_json::Value::Object(meta))) =
            (&massive, d.extra_cfg.get_mut("metadata"))
        {
            meta.insert(glassbox_model::MassiveNorm::CFG_KEY.into(), m.to_json());
        }
        let dir = a.out.join(format!("layer_{l:02}"));
        glassbox_sae::format::save_saelens(&d, &dir)?;
        let (x, y) = (&harvest.rows[2 * i], &harvest.rows[2 * i + 1]);
        let n = harvest.n_rows;
        let xt = candle_core::Tensor::from_slice(x, (n, widths[2 * i]), &candle_core::Device::Cpu)?;
        let recon: Vec<f32> = d
            .decode(&d.encode(&xt)?, Some(&xt))?
            .flatten_all()?
            .to_vec1()?;
        let fvu = fvu_of(y, &recon, widths[2 * i + 1]);
        index_layers.push(glassbox_circuits::SetLayer {
            layer: l,
            path: format!("layer_{l:02}"),
            hook_in: Some(hooks[2 * i].clone()),
            hook_out: Some(hooks[2 * i + 1].clone()),
            d_sae: Some(a.d_sae),
            eval_fvu: Some(fvu),
        });
        eprintln!("layer {l:>2}: held-out FVU {fvu:.3}");
        dicts.push(d);
    }
    let bar = progress(eval_w.len(), "splicing every transcoder at once");
    let spliced = glassbox_analysis::transcoders::splice_all(
        &model.transformer,
        &dicts,
        eval_w,
        &rule,
        4,
        |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    glassbox_circuits::SetIndex {
        format: Some(glassbox_circuits::SET_FORMAT.into()),
        model: Some(model_label(&model)),
        arch: Some(a.arch.clone()),
        skip: Some(a.skip),
        layers: index_layers,
        train_tokens: Some((steps * a.batch) as u64),
        train_seconds: Some(secs),
        eval_tokens: Some(harvest.n_rows as u64),
        splice_all: Some(serde_json::to_value(&spliced)?),
        massive_norm: massive.as_ref().map(|m| m.to_json()),
        train_massive_rows_excluded: Some(store.massive_passed_over()),
    }
    .write(&a.out)?;
    println!(
        "trained {} transcoders ({}, d_sae {}) on {} tokens in {secs:.0} s; all spliced at once: CE {:.3} vs clean {:.3}, zero-ablated {:.3} → CE recovered {:.1} %, KL recovered {:.1} %",
        layers.len(),
        a.arch,
        a.d_sae,
        steps * a.batch,
        spliced.ce_spliced,
        spliced.ce_clean,
        spliced.ce_zero_ablated,
        spliced.ce_recovered * 100.0,
        spliced.kl_recovered * 100.0
    );
    println!("transcoder set: {}", a.out.join("index.json").display());
    Ok(())
}

/// E‖y − ŷ‖² / Σ_d Var(y_d) over rows of width `w`.
fn fvu_of(y: &[f32], recon: &[f32], w: usize) -> f64 {
    let n = (y.len() / w).max(1) as f64;
    let mut mean = vec![0f64; w];
    for r in y.chunks(w) {
        mean.iter_mut()
            .zip(r)
            .for_each(|(m, v)| *m += *v as f64 / n);
    }
    let (mut err, mut var) = (0f64, 0f64);
    for (r, h) in y.chunks(w).zip(recon.chunks(w)) {
        for i in 0..w {
            err += (r[i] as f64 - h[i] as f64).powi(2);
            var += (r[i] as f64 - mean[i]).powi(2);
        }
    }
    err / var.max(1e-30)
}
