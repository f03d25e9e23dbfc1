//! A dictionary-training run, end to end: the corpus read and packed into windows, the
//! held-out split, the activation store harvesting the hook (with the token rule and the
//! massive-activation threshold), the [`Trainer`] stepping through the rows with
//! checkpoints that resume bit for bit, and the run directory ([`run_dir`]): the
//! dictionary in SAELens' format, `config.toml`, `metrics.jsonl`, `metrics.json` with a
//! held-out evaluation. `glassbox train-sae`, `glassbox quickstart` and the Python
//! package's `train_sae` are all [`train_sae`]; progress goes to a [`Progress`].
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use glassbox_sae::train::{TrainArch, TrainConfig};
//! use glassbox_train::{train_sae, SaeRunOptions, Silent};
//!
//! let model = glassbox_hub::open_model("default", &Default::default())?;
//! let mut train = TrainConfig::for_run(TrainArch::TopK, 300_000, 2048);
//! train.d_sae = 4096;
//! let opts = SaeRunOptions::new("blocks.15.hook_resid_pre", 300_000, train);
//! let run = train_sae(&model, &opts, "runs/topk".as_ref(), &Silent)?;
//! println!("held-out FVU {:.3}", run.metrics.eval.fvu);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod acts;
pub mod progress;
pub mod run_dir;
pub mod transcoders;

pub use progress::{Progress, Silent, Stage};
pub use run_dir::{MetricsLine, MetricsLog, RunConfig, RunMetrics};
pub use transcoders::{train_transcoder_set, TranscoderSetOptions, TranscoderSetRun};

use anyhow::{bail, Context, Result};
use glassbox_data::store::{ActivationStore, StoreOptions};
use glassbox_model::Model;
use glassbox_sae::train::collective::first_disagreement;
use glassbox_sae::train::{
    checkpoint, kill_point, Alone, Collective, StepReport, TrainConfig, Trainer,
};
use glassbox_sae::Dictionary;
use std::path::{Path, PathBuf};

/// Steps between two lines of `metrics.jsonl` (and two [`Progress::step`] calls).
pub const LOG_EVERY_STEPS: usize = 10;

/// Why a run stopped without an answer, for callers that react differently (the Python
/// package raises `ValueError` for [`RunError::Invalid`], `KeyboardInterrupt` for
/// [`RunError::Cancelled`]). Other failures (I/O, the model) are plain errors.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// the options do not describe a run that can happen; the message says what to change
    #[error("{0}")]
    Invalid(String),
    /// the run directory already holds a run and resuming was not asked for
    #[error("{0} already holds a training run; resume it or choose another run directory")]
    AlreadyTrained(PathBuf),
    /// [`Progress::cancelled`] said stop; the checkpoint holds every step done
    #[error("training cancelled at step {step}; the checkpoint in {dir} resumes it")]
    Cancelled {
        /// steps done (all in the checkpoint)
        step: usize,
        /// the run directory
        dir: PathBuf,
    },
}

fn invalid(msg: impl Into<String>) -> anyhow::Error {
    RunError::Invalid(msg.into()).into()
}

/// Everything about a run except the model and the output folder. `train` holds the
/// dictionary's architecture, sizes and schedules (`d_in` and `d_out` are filled in from
/// the hooks' widths).
#[derive(Debug, Clone)]
pub struct SaeRunOptions {
    /// the hook the dictionary reads
    pub hook: String,
    /// a transcoder's target hook (`None`: an SAE reconstructing `hook`)
    pub hook_out: Option<String>,
    /// a .txt/.jsonl/.parquet file or folder (`None`: the default corpus, fetched)
    pub corpus: Option<PathBuf>,
    /// JSONL field or Parquet column holding the text
    pub text_field: String,
    /// training tokens
    pub tokens: usize,
    /// tokens per window, BOS first
    pub context_size: usize,
    /// shuffle buffer in tokens (memory: tokens × width × 4 bytes)
    pub buffer_tokens: usize,
    /// reuse harvested activations across runs (safetensors shards)
    pub cache_dir: Option<PathBuf>,
    /// checkpoint every this many training tokens (0: only at the end)
    pub checkpoint_every_tokens: usize,
    /// held-out tokens for the final evaluation
    pub eval_tokens: usize,
    /// continue from the run directory's checkpoint when there is one
    pub resume: bool,
    /// also write the training and held-out activations here (safetensors `train`,
    /// `eval`), for a baseline trained on identical data
    pub export_acts: Option<PathBuf>,
    /// split the latents over the ranks instead of the rows (TopK; the ranks must
    /// divide `d_sae`): each rank holds `d_sae / ranks` latents and steps on every row
    pub shard_latents: bool,
    /// train from this activation folder (written by [`acts::harvest_acts`], possibly by many
    /// ranks) instead of harvesting: the folder's manifest must match the options
    pub acts: Option<PathBuf>,
    /// the dictionary: architecture, sizes, losses and schedules
    pub train: TrainConfig,
}

impl SaeRunOptions {
    /// The defaults `glassbox train-sae` uses, for `tokens` training tokens of `hook`.
    pub fn new(hook: &str, tokens: usize, train: TrainConfig) -> Self {
        SaeRunOptions {
            hook: hook.to_string(),
            hook_out: None,
            corpus: None,
            text_field: "text".into(),
            tokens,
            context_size: 128,
            buffer_tokens: 262_144,
            cache_dir: None,
            checkpoint_every_tokens: 500_000,
            eval_tokens: 16_384,
            resume: false,
            export_acts: None,
            acts: None,
            shard_latents: false,
            train,
        }
    }
}

/// What a finished run gives back (and wrote to its run directory).
pub struct SaeRun {
    /// the trained dictionary, as saved in the run directory
    pub dictionary: Dictionary,
    /// what `metrics.json` holds: the run and its held-out evaluation
    pub metrics: RunMetrics,
    /// the run directory
    pub out: PathBuf,
}

/// Trains a dictionary on `model`'s activations at `opts.hook` and writes the run
/// directory `out` (see the crate docs). With `opts.resume` and a checkpoint in `out`,
/// continues it (the options must be the same); without, refuses a directory that
/// already holds a run.
pub fn train_sae(
    model: &Model,
    opts: &SaeRunOptions,
    out: &Path,
    progress: &dyn Progress,
) -> Result<SaeRun> {
    train_sae_with(model, opts, out, progress, &Alone)?
        .context("a job of one rank is its own rank 0 and always gives the run")
}

/// [`train_sae`] as one rank of a data-parallel job (`comm`, see
/// [`Trainer::step_with`]): every rank builds the same store from `opts.acts` (required
/// with more than one rank), serves the same global batches of `opts.train.batch` rows
/// and steps on its share of each; the ranks first agree on a hash of their
/// configuration, then check every [`PARAMS_HASH_EVERY_STEPS`] steps that their
/// parameters are still identical. Rank 0 writes the run directory and its checkpoints
/// and gives the run back; the other ranks give `None`.
pub fn train_sae_with(
    model: &Model,
    opts: &SaeRunOptions,
    out: &Path,
    progress: &dyn Progress,
    comm: &dyn Collective,
) -> Result<Option<SaeRun>> {
    let batch = opts.train.batch;
    let tokens = opts.tokens;
    if batch == 0 || tokens < batch {
        return Err(invalid(format!(
            "tokens ({tokens}) must be at least one batch ({batch})"
        )));
    }
    let ranks = comm.size();
    if ranks > 1 {
        if !opts.shard_latents && !batch.is_multiple_of(ranks) {
            return Err(invalid(format!(
                "the batch ({batch} rows) does not split over {ranks} ranks: each rank steps on batch / ranks rows, so pick a batch that {ranks} divides"
            )));
        }
        if opts.acts.is_none() {
            return Err(invalid(
                "training across ranks reads a harvested activation folder, so that no rank harvests what another already has: harvest it once with `mpirun -np R glassbox harvest … --out DIR` and train with --acts DIR",
            ));
        }
        if opts.export_acts.is_some() {
            return Err(invalid(
                "--export-acts writes one process's activations: export them from a run of one rank",
            ));
        }
        if !opts.shard_latents && !opts.train.arch.uses_k() && opts.train.resample_every_steps > 0 {
            return Err(invalid(
                "resampling dead latents picks rows of one rank's batch, which the other ranks do not have: pass --resample-every-steps 0 to train a standard SAE across ranks",
            ));
        }
    }
    let Prepared {
        mut store,
        corpus,
        hooks,
        eval_w,
        rule,
        massive,
    } = prepare_store(model, opts, progress)?;
    let steps = tokens / batch;
    let result = run_steps(
        model, opts, out, progress, &mut store, &corpus, &hooks, &eval_w, rule, massive, steps,
        comm,
    );
    progress.end(Stage::Harvest);
    result
}

/// What training and harvesting share: the corpus read and packed, the row rule
/// measured, and the store over the windows the token budget needs.
struct Prepared<'m> {
    store: ActivationStore<'m>,
    corpus: PathBuf,
    hooks: Vec<String>,
    eval_w: Vec<Vec<u32>>,
    rule: glassbox_model::RowRule,
    massive: Option<glassbox_model::MassiveNorm>,
}

fn prepare_store<'m>(
    model: &'m Model,
    opts: &SaeRunOptions,
    progress: &'m dyn Progress,
) -> Result<Prepared<'m>> {
    if opts.context_size < 3 {
        return Err(invalid(format!(
            "a context size of {} is too short: position 0 is left out and the evaluation's next-token loss needs two more",
            opts.context_size
        )));
    }
    let manifest = match &opts.acts {
        Some(dir) => Some(acts::ActsManifest::read_verified(dir)?),
        None => None,
    };
    // the harvest sized its windows for its own token budget: the same windows give
    // the same store (and the same cache key)
    let budget = match &manifest {
        Some(m) if opts.tokens > m.tokens => {
            return Err(invalid(format!(
            "the activation folder holds {} training tokens; train on at most that many (--tokens)",
            m.tokens
        )))
        }
        Some(m) => m.tokens,
        None => opts.tokens,
    };
    let mut hooks = vec![opts.hook.clone()];
    hooks.extend(opts.hook_out.clone());
    let corpus = match &opts.corpus {
        Some(c) => c.clone(),
        None => glassbox_hub::fetch_default_corpus()?.join("data"),
    };
    let corpus_read = glassbox_data::read_corpus(&corpus, &opts.text_field)?;
    progress.note(&format!(
        "corpus {}: {}",
        corpus.display(),
        corpus_read.report
    ));
    let bos = model.tokenizer()?.bos_token_id;
    let (train_w, eval_w) = glassbox_data::pack(
        model,
        &corpus_read.texts,
        opts.context_size,
        bos,
        opts.train.seed,
        glassbox_data::HELD_OUT_FRACTION,
    )?;
    // the token rule, then the massive-activation threshold measured on the first
    // training windows (glassbox_model::rows says why this one); stored with the dictionary
    let token_rule = glassbox_model::RowRule::for_model(model);
    let massive = glassbox_data::calibrate_massive(model, &train_w, &opts.hook, &token_rule)?;
    if let Some(m) = &massive {
        progress.note(&format!(
            "massive activations: rows whose {} norm is over {:.1} ({}× the {} quantile of {} calibration windows) are left out",
            m.hook,
            m.threshold,
            glassbox_model::MASSIVE_FACTOR,
            glassbox_model::MASSIVE_QUANTILE,
            train_w.len().min(glassbox_data::CALIBRATION_WINDOWS)
        ));
    }
    let rule = token_rule.with_massive(massive.clone());
    // harvest only the windows the token budget needs (whole chunks would harvest up to
    // a chunk more), 1 % over it: massive rows are passed over, not served
    let train_w = windows_for_budget(train_w, &rule, budget + budget / 100);
    // the store harvests a whole buffer before serving from it: never more than the run needs
    let buffer_tokens = opts.buffer_tokens.min(budget.max(1));
    let mut store_opts = StoreOptions::new(hooks.clone());
    store_opts.buffer_tokens = buffer_tokens;
    store_opts.seed = opts.train.seed;
    store_opts.cache_dir = opts.cache_dir.clone();
    store_opts.rows = rule.clone();
    if let (Some(dir), Some(_)) = (&opts.acts, &manifest) {
        store_opts.cache_dir = Some(dir.clone());
        store_opts.require_cached = true;
    }
    let harvest_windows = train_w.len() as u64;
    let harvested = std::cell::Cell::new(0u64);
    let mut store = ActivationStore::new(model, train_w, store_opts)?;
    if let (Some(dir), Some(m)) = (&opts.acts, &manifest) {
        m.check_matches(dir, &store)?;
    }
    progress.begin(
        Stage::Harvest,
        &format!("harvesting {} (windows)", hooks.join(" → ")),
        harvest_windows,
        0,
    );
    // the store harvests a chunk at a time, also mid-training
    store.set_on_harvest(Box::new(move |n| {
        kill_point::kill_point("harvest");
        progress.advance(Stage::Harvest, n as u64);
        harvested.set(harvested.get() + n as u64);
        if harvested.get() >= harvest_windows {
            progress.end(Stage::Harvest);
        }
    }));
    Ok(Prepared {
        store,
        corpus,
        hooks,
        eval_w,
        rule,
        massive,
    })
}

#[allow(clippy::too_many_arguments)]
fn run_steps(
    model: &Model,
    opts: &SaeRunOptions,
    out: &Path,
    progress: &dyn Progress,
    store: &mut ActivationStore,
    corpus: &Path,
    hooks: &[String],
    eval_w: &[Vec<u32>],
    rule: glassbox_model::RowRule,
    massive: Option<glassbox_model::MassiveNorm>,
    steps: usize,
    comm: &dyn Collective,
) -> Result<Option<SaeRun>> {
    let (tokens, batch) = (opts.tokens, opts.train.batch);
    let (rank, ranks) = (comm.rank(), comm.size());
    let root = rank == 0;
    // data-parallel: each rank steps on its share of every global batch; latent-sharded:
    // on all of it, with its share of the latents
    let sharded = opts.shard_latents && ranks > 1;
    let rank_batch = if sharded { batch } else { batch / ranks };
    if store.total_rows() < tokens as u64 {
        return Err(invalid(format!(
            "the corpus gives {} training tokens (positions ≥ 1, special tokens left out); a run of {tokens} tokens needs more text or fewer tokens (--tokens)",
            store.total_rows()
        )));
    }
    let widths = store.widths().to_vec();
    let cfg = TrainConfig {
        d_in: widths[0],
        d_out: widths.get(1).copied(),
        ..opts.train.clone()
    };
    cfg.validate().map_err(invalid)?;
    let run_cfg = RunConfig {
        model: Some(
            std::fs::canonicalize(&model.source)
                .unwrap_or(model.source.clone())
                .display()
                .to_string(),
        ),
        model_name: Some(model.label()),
        hook: Some(opts.hook.clone()),
        hook_out: opts.hook_out.clone(),
        corpus: Some(corpus.display().to_string()),
        text_field: Some(opts.text_field.clone()),
        tokens: Some(tokens),
        context_size: Some(opts.context_size),
        buffer_tokens: Some(opts.buffer_tokens.min(tokens.max(1))),
        cache_dir: opts.cache_dir.clone(),
        checkpoint_every_tokens: Some(opts.checkpoint_every_tokens),
        eval_tokens: Some(opts.eval_tokens),
        first_position_excluded: Some(true),
        special_tokens_excluded: Some(true),
        acts: opts.acts.clone(),
        ranks: (ranks > 1).then_some(ranks),
        split: (ranks > 1).then(|| if sharded { "latents" } else { "rows" }.to_string()),
        train: Some(cfg.clone()),
        ..RunConfig::default()
    };
    if root {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create the run directory {}", out.display()))?;
    }
    let rank_cfg = TrainConfig {
        batch: rank_batch,
        ..cfg.clone()
    };
    let slots = CheckpointSlots::new(out, sharded, rank, ranks);
    let ckpt_dir = slots.folder.clone();
    let new_trainer = || -> Result<Trainer> {
        if sharded {
            Trainer::new_latent_shard(cfg.clone(), steps, rank, ranks)
        } else {
            Trainer::new(rank_cfg.clone(), steps)
        }
        .map_err(|e| invalid(e.to_string()))
    };
    progress.note(&format!(
        "activation store: {} tokens of {} in chunks of {} ({:.0} MiB buffer){}",
        store.total_rows(),
        hooks.join(" → "),
        opts.buffer_tokens.min(tokens.max(1)),
        store.memory_bytes() as f64 / (1 << 20) as f64,
        store
            .cache_folder()
            .map(|p| format!(", cache {}", p.display()))
            .unwrap_or_default()
    ));
    if let Some(path) = &opts.export_acts {
        export_activations(
            model,
            store,
            eval_w,
            hooks,
            tokens,
            opts.eval_tokens,
            path,
            progress,
        )?;
    }
    // which checkpoint to continue from, decided by every rank together
    let resume_from = slots.to_resume(opts.resume, out, comm)?;
    let loaded = resume_from.as_ref().map(|dir| -> Result<(Trainer, u64)> {
        let (mut t, extra) = checkpoint::load(dir)?;
        // a shard's place is the job's, not the file's
        t.shard = new_trainer()?.shard;
        let saved_ranks = extra["ranks"].as_u64().unwrap_or(1) as usize;
        if saved_ranks != ranks {
            bail!(RunError::Invalid(format!(
                "the checkpoint in {} was written by a job of {saved_ranks} rank(s); resume it with {saved_ranks} (each rank's batch and Adam state belong to that split)",
                dir.display()
            )));
        }
        if serde_json::to_value(&t.cfg)? != serde_json::to_value(&new_trainer()?.cfg)? {
            bail!(RunError::Invalid(format!(
                "the checkpoint in {} was trained with a different configuration; resume with the same options (see {}) or use a new run directory",
                dir.display(),
                out.join(run_dir::CONFIG_FILE).display()
            )));
        }
        let rows = extra["rows_served"]
            .as_u64()
            .context("the checkpoint lacks rows_served")?;
        Ok((t, rows))
    });
    // a latent shard reads its own file: all go on, or all stop
    let loaded = match loaded {
        Some(l) => Some(all_ok(comm, l)?),
        None => None,
    };
    let (mut trainer, start_rows, mut log) = if let Some((t, rows)) = loaded {
        progress.note(&format!("resuming at step {} ({rows} tokens)", t.step));
        let log = if root {
            Some(MetricsLog::resume(out, t.step)?)
        } else {
            None
        };
        (t, rows, log)
    } else {
        if opts.resume {
            progress.note(&format!(
                "no checkpoint in {}: starting from scratch",
                ckpt_dir.display()
            ));
        }
        let mut t = new_trainer()?;
        // normalisation and b_dec from the first rows, then rewind: deterministic
        let sample_rows = batch.max(16_384).min(tokens);
        let mut sample = vec![Vec::new(); hooks.len()];
        store.next_batch(sample_rows, &mut sample)?;
        t.prepare(&sample[0], sample.get(1).map(|v| &v[..]));
        // rank 0's, so that thread counts cannot make the replicas start apart
        let mut start = [t.scale_in, t.scale_out];
        comm.broadcast_f32(&mut start);
        [t.scale_in, t.scale_out] = start;
        comm.broadcast_f32(&mut t.params.b_dec);
        let log = if root {
            Some(MetricsLog::create(out)?)
        } else {
            None
        };
        (t, 0, log)
    };
    if ranks > 1 {
        // also a barrier: no rank looks for a checkpoint after rank 0 has written one
        let what = serde_json::json!([run_cfg, rank_cfg, start_rows, trainer.step]);
        agree(comm, "configuration", hash_of(what.to_string().as_bytes()))?;
    }
    if root {
        run_cfg.write(out)?;
    }
    store.skip_to(start_rows)?;
    let arch_name = arch_name(&cfg);
    progress.begin(
        Stage::Train,
        &format!("training {arch_name} (steps)"),
        steps as u64,
        trainer.step as u64,
    );
    let started = std::time::Instant::now();
    let first_step = trainer.step;
    let mut buf = vec![Vec::new(); hooks.len()];
    let widths = store.widths().to_vec();
    let mut last_ckpt = start_rows;
    let save = |trainer: &Trainer, rows: u64| -> Result<()> {
        if root || sharded {
            checkpoint::save(
                trainer,
                &slots.to_write(),
                serde_json::json!({ "rows_served": rows, "ranks": ranks, "latent_sharded": sharded }),
            )?;
        }
        Ok(())
    };
    let trained = (|| -> Result<()> {
        while trainer.step < steps {
            let got = store.next_batch(batch, &mut buf)?;
            if got < batch {
                break;
            }
            // this rank's rows of the global batch
            let first = if sharded { 0 } else { rank * rank_batch };
            let mine = |h: usize| &buf[h][first * widths[h]..][..rank_batch * widths[h]];
            let report = trainer
                .step_with(mine(0), (hooks.len() > 1).then(|| mine(1)), comm)
                .map_err(|e| anyhow::anyhow!("{e} (run directory {})", out.display()))?;
            progress.advance(Stage::Train, 1);
            let done = trainer.step;
            if done % LOG_EVERY_STEPS == 0 || done == steps {
                let tps = ((done - first_step) * batch) as f64 / started.elapsed().as_secs_f64();
                let line = metrics_line(&report, done * batch, tps);
                progress.step(&line);
                if let Some(log) = log.as_mut() {
                    log.append(&line)?;
                }
            }
            kill_point::kill_point("step");
            if ranks > 1 && (done % PARAMS_HASH_EVERY_STEPS == 0 || done == steps) {
                agree(
                    comm,
                    &format!("parameters after step {done}"),
                    params_hash(&trainer),
                )?;
            }
            let rows = store.rows_served();
            let due = opts.checkpoint_every_tokens > 0
                && rows - last_ckpt >= opts.checkpoint_every_tokens as u64;
            // one rank's Ctrl-C stops them all at the same step
            let mut stop = [progress.cancelled() as u64];
            comm.sum_u64(&mut stop);
            if stop[0] > 0 {
                save(&trainer, rows)?;
                bail!(RunError::Cancelled {
                    step: done,
                    dir: out.to_path_buf()
                });
            }
            if due && done < steps {
                save(&trainer, rows)?;
                last_ckpt = rows;
            }
        }
        Ok(())
    })();
    progress.end(Stage::Train);
    trained?;
    if sharded {
        save(&trainer, store.rows_served())?;
        // the whole dictionary, from every rank's latents
        trainer = trainer
            .gather_latent_shards(comm)
            .map_err(|e| invalid(e.to_string()))?;
    }
    if !root {
        return Ok(None);
    }
    let train_secs = started.elapsed().as_secs_f64();
    let trained_tokens = (trainer.step - first_step) * batch;
    if !sharded {
        save(&trainer, store.rows_served())?;
    }
    let mut dict = trainer.to_dictionary(
        Some(opts.hook.clone()),
        opts.hook_out.clone(),
        Some(model.label()),
    )?;
    if let Some(serde_json::Value::Object(meta)) = dict.extra_cfg.get_mut("metadata") {
        meta.insert("context_size".into(), opts.context_size.into());
        meta.insert("seqpos_slice".into(), serde_json::json!([1, null]));
        meta.insert("training_tokens".into(), (trainer.step * batch).into());
        if let Some(m) = &massive {
            meta.insert(glassbox_model::MassiveNorm::CFG_KEY.into(), m.to_json());
        }
    }
    glassbox_sae::format::save_saelens(&dict, out)?;
    // held-out evaluation: reconstruction and the model's loss with the dictionary spliced in
    let eval_windows = opts
        .eval_tokens
        .div_ceil(opts.context_size - 1)
        .min(eval_w.len())
        .max(1);
    progress.begin(
        Stage::Evaluate,
        "evaluating on held-out windows",
        eval_windows as u64,
        0,
    );
    let eval = glassbox_analysis::sae_eval::evaluate(
        &model.transformer,
        &dict,
        &eval_w[..eval_windows.min(eval_w.len())],
        &glassbox_analysis::sae_eval::EvalOptions {
            rows: rule,
            ..Default::default()
        },
        |n| progress.advance(Stage::Evaluate, n as u64),
    );
    progress.end(Stage::Evaluate);
    let metrics = RunMetrics {
        arch: arch_name,
        hook: opts.hook.clone(),
        hook_out: opts.hook_out.clone(),
        d_in: cfg.d_in,
        d_out: cfg.d_out(),
        d_sae: cfg.d_sae,
        k: cfg.arch.uses_k().then_some(cfg.k),
        train_tokens: trainer.step * batch,
        steps: trainer.step,
        train_seconds_this_session: train_secs,
        train_tokens_per_s: trained_tokens as f64 / train_secs.max(1e-9),
        train_massive_rows_excluded: store.massive_passed_over(),
        massive_norm: massive.as_ref().map(|m| m.to_json()),
        eval: eval?,
    };
    metrics.write(out)?;
    Ok(Some(SaeRun {
        dictionary: dict,
        metrics,
        out: out.to_path_buf(),
    }))
}

/// Where a run's checkpoints go. One process, or rank 0 of a data-parallel job:
/// `checkpoint/`. A latent shard: two slots of its own,
/// `checkpoint/latents-R-of-N/{a,b}`, written in turn, so that a job killed while its
/// ranks were writing still has a step every rank holds.
struct CheckpointSlots {
    folder: PathBuf,
    slots: Vec<PathBuf>,
}

impl CheckpointSlots {
    fn new(out: &Path, sharded: bool, rank: usize, ranks: usize) -> Self {
        let base = out.join(run_dir::CHECKPOINT_DIR);
        if sharded {
            let folder = base.join(format!("latents-{rank}-of-{ranks}"));
            let slots = vec![folder.join("a"), folder.join("b")];
            CheckpointSlots { folder, slots }
        } else {
            CheckpointSlots {
                folder: base.clone(),
                slots: vec![base],
            }
        }
    }

    /// The slot to write next: an empty one, else the one with the older step.
    fn to_write(&self) -> PathBuf {
        self.slots
            .iter()
            .min_by_key(|d| checkpoint::saved_step(d).map_or(-1, |s| s as i64))
            .cloned()
            .unwrap_or_else(|| self.folder.clone())
    }

    /// The checkpoint to resume from (with `resume`), the same step on every rank;
    /// without `resume`, refuses a run directory that holds one. Every rank gets the
    /// same answer (latent shards compare their slots' steps in a collective).
    fn to_resume(
        &self,
        resume: bool,
        out: &Path,
        comm: &dyn Collective,
    ) -> Result<Option<PathBuf>> {
        let steps: Vec<Option<usize>> = self
            .slots
            .iter()
            .map(|d| checkpoint::saved_step(d))
            .collect();
        if self.slots.len() == 1 {
            return match (steps[0], resume) {
                (None, _) => Ok(None),
                (Some(_), true) => Ok(Some(self.slots[0].clone())),
                (Some(_), false) => Err(RunError::AlreadyTrained(out.to_path_buf()).into()),
            };
        }
        const NONE: u64 = u64::MAX;
        let everyone: Vec<Vec<u64>> = steps
            .iter()
            .map(|s| comm.all_gather_u64(s.map_or(NONE, |s| s as u64)))
            .collect();
        let held = |rank: usize, step: u64| everyone.iter().any(|slot| slot[rank] == step);
        let any = everyone.iter().flatten().any(|&s| s != NONE);
        if !resume {
            return if any {
                Err(RunError::AlreadyTrained(out.to_path_buf()).into())
            } else {
                Ok(None)
            };
        }
        let common = everyone
            .iter()
            .flatten()
            .copied()
            .filter(|&s| s != NONE && (0..comm.size()).all(|r| held(r, s)))
            .max();
        match common {
            Some(step) => Ok(self
                .slots
                .iter()
                .zip(&steps)
                .find(|(_, s)| **s == Some(step as usize))
                .map(|(d, _)| d.clone())),
            None if any => Err(RunError::Invalid(format!(
                "the ranks' checkpoints in {} share no step (the job was stopped while its first checkpoints were written): remove that folder to start again",
                out.join(run_dir::CHECKPOINT_DIR).display()
            ))
            .into()),
            None => Ok(None),
        }
    }
}

/// `local` on every rank if it is `Ok` on every rank; otherwise an error on every rank
/// (a failed rank's own message; the others name it), so that all stop together rather
/// than some waiting in the next collective.
fn all_ok<T>(comm: &dyn Collective, local: Result<T>) -> Result<T> {
    if comm.size() == 1 {
        return local;
    }
    let failed = comm.all_gather_u64(local.is_err() as u64);
    match local {
        Err(e) => Err(RunError::Invalid(format!("{e:#}")).into()),
        Ok(v) => match failed.iter().position(|&f| f == 1) {
            Some(rank) => Err(invalid(format!(
                "rank {rank} cannot go on (its message says why); every rank stops"
            ))),
            None => Ok(v),
        },
    }
}

/// Steps between two checks that every rank's parameters are still identical (and at
/// the end). A check hashes every parameter (about a second per GiB).
pub const PARAMS_HASH_EVERY_STEPS: usize = 100;

/// Fails on every rank, naming the first that differs, unless all give the same `hash`.
fn agree(comm: &dyn Collective, what: &str, hash: u64) -> Result<()> {
    if let Some((rank, root, theirs)) = first_disagreement(comm, hash) {
        bail!(RunError::Invalid(format!(
            "rank {rank}'s {what} differs from rank 0's (hash {theirs:016x} against {root:016x}): start every rank with the same command line, glassbox build and files"
        )));
    }
    Ok(())
}

fn hash_of(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = twox_hash::XxHash64::with_seed(0);
    h.write(bytes);
    h.finish()
}

/// A hash of what every rank holds the same: the step count, every parameter and the
/// dead-latent counters of a replica; of a latent shard, the step and the replicated
/// `b_dec` and `W_skip`.
fn params_hash(t: &Trainer) -> u64 {
    use std::hash::Hasher;
    let mut h = twox_hash::XxHash64::with_seed(0);
    h.write_u64(t.step as u64);
    let p = &t.params;
    let replicated: Vec<&Vec<f32>> = if t.shard.is_some() {
        vec![&p.b_dec, &p.w_skip]
    } else {
        p.tensors().to_vec()
    };
    for v in replicated {
        v.iter().for_each(|v| h.write_u32(v.to_bits()));
    }
    if t.shard.is_none() {
        t.since_fired.iter().for_each(|v| h.write_u64(*v));
    }
    h.finish()
}

/// The architecture's name as `--arch` spells it.
fn arch_name(cfg: &TrainConfig) -> String {
    serde_json::to_value(cfg.arch)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn metrics_line(r: &StepReport, tokens: usize, tokens_per_s: f64) -> MetricsLine {
    MetricsLine {
        step: r.step,
        tokens,
        mse: r.losses.mse,
        fvu: r.fvu,
        l0: r.losses.l0,
        sparsity_loss: r.losses.sparsity,
        aux_loss: r.losses.aux,
        dead_fraction: r.dead_fraction,
        lr: r.lr,
        sparsity_coefficient: r.sparsity_coefficient,
        grad_norm: r.grad_norm,
        dense_kernels: r.dense_kernels,
        resampled: r.resampled,
        tokens_per_s,
    }
}

#[allow(clippy::too_many_arguments)]
fn export_activations(
    model: &Model,
    store: &mut ActivationStore,
    eval_w: &[Vec<u32>],
    hooks: &[String],
    tokens: usize,
    eval_tokens: usize,
    path: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let mut rows = vec![Vec::new(); hooks.len()];
    let d = store.widths()[0];
    progress.begin(
        Stage::Export,
        "collecting training activations (tokens)",
        tokens as u64,
        0,
    );
    let mut train = Vec::with_capacity(tokens * d);
    while train.len() < tokens * d {
        let n = store.next_batch(4096.min(tokens - train.len() / d), &mut rows)?;
        if n == 0 {
            break;
        }
        train.extend_from_slice(&rows[0]);
        progress.advance(Stage::Export, n as u64);
    }
    progress.end(Stage::Export);
    store.skip_to(0)?;
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
    glassbox_atomic::write_with(path, |tmp| -> Result<()> {
        Ok(candle_core::safetensors::save(&t, tmp)?)
    })
    .with_context(|| format!("cannot write activations to {}", path.display()))?;
    progress.note(&format!(
        "wrote {} training and {} held-out rows to {}",
        train.len() / d,
        eval.len() / d,
        path.display()
    ));
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
