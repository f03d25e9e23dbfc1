//! A transcoder set: one transcoder per layer (the MLP's normalised input →
//! `hook_mlp_out`), all trained from one pass over the corpus, saved as SAELens files per
//! layer plus the set's `index.json` ([`glassbox_circuits::SetIndex`]); per-layer
//! held-out FVU and the CE loss recovered with every transcoder spliced in at once.

use crate::{arch_name, invalid, run_dir, Progress, RunError, Stage, LOG_EVERY_STEPS};
use anyhow::Result;
use glassbox_data::store::{ActivationStore, StoreOptions};
use glassbox_model::Model;
use glassbox_sae::train::{kill_point, TrainArch, TrainConfig, Trainer};
use std::path::{Path, PathBuf};

/// A transcoder set's options (`glassbox train-transcoders` flags).
#[derive(Debug, Clone)]
pub struct TranscoderSetOptions {
    /// the layers, in order
    pub layers: Vec<usize>,
    /// the architecture of every layer's transcoder
    pub arch: TrainArch,
    /// latents per layer
    pub d_sae: usize,
    /// active latents per token (TopK-family)
    pub k: usize,
    /// a linear skip connection W_skip·x
    pub skip: bool,
    /// training tokens
    pub tokens: usize,
    /// tokens per optimisation step
    pub batch: usize,
    /// default: 1e-3 for TopK-style, 3e-4 otherwise
    pub lr: Option<f32>,
    /// default: 0.001 for JumpReLU, 5 otherwise
    pub sparsity_coefficient: Option<f32>,
    /// tokens per window, BOS first
    pub context_size: usize,
    /// shuffle buffer in tokens: every layer's input and output are buffered, so memory
    /// is tokens × 2 × layers × d_model × 4 bytes
    pub buffer_tokens: usize,
    /// reuse harvested activations across runs
    pub cache_dir: Option<PathBuf>,
    /// `None`: the default corpus, fetched
    pub corpus: Option<PathBuf>,
    /// the JSONL field or Parquet column holding the text
    pub text_field: String,
    /// held-out windows for the evaluation
    pub eval_windows: usize,
    /// the seed of the window shuffle and the held-out split (layer `i` trains with `seed + i`)
    pub seed: u64,
    /// save every layer's trainer this often (0: never)
    pub checkpoint_every_tokens: usize,
    /// continue from the folder's checkpoint
    pub resume: bool,
}

/// What a finished set gives back (and wrote to its folder).
pub struct TranscoderSetRun {
    /// the set's `index.json`
    pub index: glassbox_circuits::SetIndex,
    /// the held-out loss with every transcoder spliced in at once
    pub spliced: glassbox_analysis::transcoders::SpliceEval,
    /// training tokens
    pub train_tokens: usize,
    /// training wall time of this session
    pub train_seconds: f64,
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
        glassbox_atomic::write(
            &root.join("set.json"),
            serde_json::to_string_pretty(&pointer)?.as_bytes(),
        )?;
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

/// Trains one transcoder per layer of `a.layers` from one pass over the corpus into the
/// folder `out` (see the module docs); resumes from its checkpoint with `a.resume`.
pub fn train_transcoder_set(
    model: &Model,
    a: &TranscoderSetOptions,
    out: &Path,
    progress: &dyn Progress,
) -> Result<TranscoderSetRun> {
    if a.batch == 0 || a.tokens < a.batch {
        return Err(invalid(format!(
            "tokens ({}) must be at least one batch ({})",
            a.tokens, a.batch
        )));
    }
    let layers = &a.layers;
    if layers.is_empty() {
        return Err(invalid("no layers to train transcoders for"));
    }
    if let Some(&l) = layers.iter().find(|&&l| l >= model.config().n_layers) {
        return Err(invalid(format!(
            "layer {l} is beyond the model's {} layers",
            model.config().n_layers
        )));
    }
    let arch = a.arch;
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
    progress.note(&format!("corpus {}: {}", corpus.display(), texts.report));
    let bos = model.tokenizer()?.bos_token_id;
    let (train_w, eval_w) = glassbox_data::pack(
        model,
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
    let token_rule = glassbox_model::RowRule::for_model(model);
    let deepest = format!("blocks.{}.hook_resid_pre", layers[layers.len() - 1]);
    let massive = glassbox_data::calibrate_massive(model, &train_w, &deepest, &token_rule)?;
    if let Some(m) = &massive {
        progress.note(&format!(
            "massive activations: rows whose {} norm is over {:.1} are left out at every layer",
            m.hook, m.threshold
        ));
    }
    let rule = token_rule.with_massive(massive.clone());
    opts.rows = rule.clone();
    let mut store = ActivationStore::new(model, train_w, opts)?;
    store.set_on_harvest(Box::new(|_| kill_point::kill_point("harvest")));
    if store.total_rows() < a.tokens as u64 {
        return Err(invalid(format!(
            "the corpus gives {} training tokens; {} tokens need more text",
            store.total_rows(),
            a.tokens
        )));
    }
    progress.note(&format!(
        "{} layers, one pass: activation buffer {:.0} MiB",
        layers.len(),
        store.memory_bytes() as f64 / (1 << 20) as f64
    ));
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
        trainers.push(Trainer::new(cfg, steps).map_err(|e| invalid(e.to_string()))?);
    }
    let mut buf = vec![Vec::new(); hooks.len()];
    let ckpt = out.join(run_dir::CHECKPOINT_DIR);
    let mut start_rows = 0;
    if a.resume && set_checkpoint::exists(&ckpt) {
        let (loaded, rows) = set_checkpoint::load(&ckpt, layers)?;
        for (t, fresh) in loaded.iter().zip(&trainers) {
            if serde_json::to_value(&t.cfg)? != serde_json::to_value(&fresh.cfg)? {
                return Err(invalid(format!(
                    "the checkpoint in {} was trained with other options; resume with the same options or use a new output folder",
                    ckpt.display()
                )));
            }
        }
        progress.note(&format!(
            "resuming at step {} ({rows} tokens)",
            loaded[0].step
        ));
        trainers = loaded;
        start_rows = rows;
    } else {
        if set_checkpoint::exists(&ckpt) {
            return Err(RunError::AlreadyTrained(out.to_path_buf()).into());
        }
        let sample = a.batch.max(8192).min(a.tokens);
        store.next_batch(sample, &mut buf)?;
        for (i, t) in trainers.iter_mut().enumerate() {
            t.prepare(&buf[2 * i], Some(&buf[2 * i + 1]));
        }
    }
    store.skip_to(start_rows)?;
    let first = trainers[0].step;
    progress.begin(
        Stage::Train,
        "training transcoders (steps)",
        steps as u64,
        first as u64,
    );
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
        progress.advance(Stage::Train, 1);
        kill_point::kill_point("step");
        let rows = store.rows_served();
        let every = a.checkpoint_every_tokens as u64;
        if every > 0 && rows - last_ckpt >= every && s + 1 < steps {
            set_checkpoint::save(&ckpt, layers, &trainers, rows)?;
            last_ckpt = rows;
        }
        if s % LOG_EVERY_STEPS == 0 {
            let mean = fvu.iter().sum::<f32>() / fvu.len() as f32;
            let tps = ((s + 1 - first) * a.batch) as f64 / started.elapsed().as_secs_f64();
            progress.status(
                Stage::Train,
                &format!("transcoders: mean batch FVU {mean:.3}, {tps:.0} tok/s"),
            );
        }
        if progress.cancelled() {
            set_checkpoint::save(&ckpt, layers, &trainers, rows)?;
            progress.end(Stage::Train);
            return Err(RunError::Cancelled {
                step: s + 1,
                dir: out.to_path_buf(),
            }
            .into());
        }
    }
    progress.end(Stage::Train);
    let secs = started.elapsed().as_secs_f64();
    // held-out: per-layer FVU on the eval windows, then everything spliced at once
    let eval_w = &eval_w[..a.eval_windows.min(eval_w.len()).max(1)];
    let harvest = glassbox_data::harvest_hooks(
        model,
        eval_w,
        &hooks,
        &glassbox_data::HarvestOptions {
            rows: rule.clone(),
            ..glassbox_data::HarvestOptions::for_model(model)
        },
        |_| {},
    )?;
    let mut dicts = Vec::new();
    let mut index_layers = Vec::new();
    for (i, (&l, t)) in layers.iter().zip(&trainers).enumerate() {
        let mut d = t.to_dictionary(
            Some(hooks[2 * i].clone()),
            Some(hooks[2 * i + 1].clone()),
            Some(model.label()),
        )?;
        if let (Some(m), Some(serde_json::Value::Object(meta))) =
            (&massive, d.extra_cfg.get_mut("metadata"))
        {
            meta.insert(glassbox_model::MassiveNorm::CFG_KEY.into(), m.to_json());
        }
        let dir = out.join(format!("layer_{l:02}"));
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
        progress.note(&format!("layer {l:>2}: held-out FVU {fvu:.3}"));
        dicts.push(d);
    }
    progress.begin(
        Stage::Evaluate,
        "splicing every transcoder at once",
        eval_w.len() as u64,
        0,
    );
    let spliced = glassbox_analysis::transcoders::splice_all(
        &model.transformer,
        &dicts,
        eval_w,
        &rule,
        4,
        |n| progress.advance(Stage::Evaluate, n as u64),
    );
    progress.end(Stage::Evaluate);
    let spliced = spliced?;
    let index = glassbox_circuits::SetIndex {
        format: Some(glassbox_circuits::SET_FORMAT.into()),
        model: Some(model.label()),
        arch: Some(arch_name(&trainers[0].cfg)),
        skip: Some(a.skip),
        layers: index_layers,
        train_tokens: Some((steps * a.batch) as u64),
        train_seconds: Some(secs),
        eval_tokens: Some(harvest.n_rows as u64),
        splice_all: Some(serde_json::to_value(&spliced)?),
        massive_norm: massive.as_ref().map(|m| m.to_json()),
        train_massive_rows_excluded: Some(store.massive_passed_over()),
    };
    index.write(out)?;
    Ok(TranscoderSetRun {
        index,
        spliced,
        train_tokens: steps * a.batch,
        train_seconds: secs,
    })
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
