//! The run directory a training run writes, and the one place its files are read and
//! written: the dictionary (SAELens files, [`glassbox_sae::format`]), `config.toml`
//! ([`RunConfig`]), the step log `metrics.jsonl` ([`MetricsLine`], [`MetricsLog`]), the
//! final `metrics.json` ([`RunMetrics`]) and `checkpoint/` ([`glassbox_sae::train::checkpoint`]).

use anyhow::{Context, Result};
use glassbox_sae::train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How the run was made ([`RunConfig`]).
pub const CONFIG_FILE: &str = "config.toml";
/// One line per logged training step ([`MetricsLine`]).
pub const METRICS_LOG: &str = "metrics.jsonl";
/// The finished run and its held-out evaluation ([`RunMetrics`]).
pub const METRICS_FILE: &str = "metrics.json";
/// The trainer's last checkpoint ([`glassbox_sae::train::checkpoint`]).
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// What `config.toml` records about how a run's dictionary was trained. Every field is
/// optional on reading: older runs, and run directories written by hand, hold fewer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    /// the model's resolved path (what `features build` and `serve` reopen)
    pub model: Option<String>,
    /// the model's file or folder name, for people
    pub model_name: Option<String>,
    /// the hook the dictionary reads
    pub hook: Option<String>,
    /// a transcoder's target hook
    pub hook_out: Option<String>,
    /// the corpus file or folder
    pub corpus: Option<String>,
    /// the JSONL field or Parquet column holding the text
    pub text_field: Option<String>,
    /// training tokens asked for
    pub tokens: Option<usize>,
    /// tokens per window, BOS first
    pub context_size: Option<usize>,
    /// the shuffle buffer, in tokens
    pub buffer_tokens: Option<usize>,
    /// where harvested activations were cached
    pub cache_dir: Option<PathBuf>,
    /// training tokens between checkpoints
    pub checkpoint_every_tokens: Option<usize>,
    /// held-out tokens of the final evaluation
    pub eval_tokens: Option<usize>,
    /// position 0 (the attention sink) left out of training
    pub first_position_excluded: Option<bool>,
    /// special tokens (BOS, chat markers) left out of training
    pub special_tokens_excluded: Option<bool>,
    /// the activation folder the run trained from (`train-sae --acts`)
    pub acts: Option<PathBuf>,
    /// ranks of the MPI job that trained it (absent: one process)
    pub ranks: Option<usize>,
    /// how those ranks split the work: `"rows"` (data-parallel) or `"latents"`
    pub split: Option<String>,
    /// early runs recorded the seed here rather than in `[train]`; read
    /// [`RunConfig::seed`], which looks in both
    #[serde(rename = "seed", skip_serializing_if = "Option::is_none")]
    pub legacy_seed: Option<u64>,
    /// the trainer's configuration, `d_in` and `d_out` included
    pub train: Option<TrainConfig>,
}

impl RunConfig {
    /// The seed of the window shuffle and the held-out split (`[train] seed`, 0 when
    /// the file names none).
    pub fn seed(&self) -> u64 {
        self.train
            .as_ref()
            .map(|t| t.seed)
            .or(self.legacy_seed)
            .unwrap_or(0)
    }

    /// Reads `dir/config.toml`; `None` when the directory has none.
    pub fn read(dir: &Path) -> Result<Option<RunConfig>> {
        let path = dir.join(CONFIG_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let cfg = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a run configuration glassbox reads: {e}",
                path.display()
            )
        })?;
        Ok(Some(cfg))
    }

    /// Writes `dir/config.toml` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).context("cannot serialise config.toml")?;
        Ok(glassbox_atomic::write(
            &dir.join(CONFIG_FILE),
            text.as_bytes(),
        )?)
    }
}

/// One line of `metrics.jsonl`: a training step's losses and schedules.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsLine {
    /// the step, counted from 0
    pub step: usize,
    /// training tokens consumed after this step
    pub tokens: usize,
    /// mean squared reconstruction error of this batch
    pub mse: f32,
    /// this batch's fraction of variance unexplained
    pub fvu: f32,
    /// mean active latents per token
    pub l0: f32,
    /// the L1 or L0 term (ReLU-family)
    pub sparsity_loss: f32,
    /// the AuxK term (TopK-family)
    pub aux_loss: f32,
    /// latents that have not fired within the dead window
    pub dead_fraction: f32,
    /// the learning rate of this step
    pub lr: f32,
    /// the sparsity coefficient of this step (after warm-up)
    pub sparsity_coefficient: f32,
    /// the global gradient norm, before clipping
    pub grad_norm: f32,
    /// whether the step used dense GEMMs (dense activity) rather than sparse kernels
    pub dense_kernels: bool,
    /// dead latents re-initialised this step
    pub resampled: usize,
    /// training throughput since this session began
    pub tokens_per_s: f64,
}

/// `metrics.jsonl`, appended a line at a time.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// A new, empty log in `dir` (a fresh run).
    pub fn create(dir: &Path) -> Result<MetricsLog> {
        let path = dir.join(METRICS_LOG);
        std::fs::write(&path, "").with_context(|| format!("cannot create {}", path.display()))?;
        Self::append_to(path)
    }

    /// The log of a resumed run: lines of steps before `step` are kept, the rest (written
    /// after the checkpoint the run resumes from) are dropped.
    pub fn resume(dir: &Path, step: usize) -> Result<MetricsLog> {
        let path = dir.join(METRICS_LOG);
        let kept: String = Self::read(dir)?
            .into_iter()
            .filter(|l| l.step < step)
            .map(|l| serde_json::to_string(&l).map(|s| s + "\n"))
            .collect::<Result<_, _>>()?;
        glassbox_atomic::write(&path, kept.as_bytes())?;
        Self::append_to(path)
    }

    fn append_to(path: PathBuf) -> Result<MetricsLog> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(MetricsLog { path, file })
    }

    /// Appends one line.
    pub fn append(&mut self, line: &MetricsLine) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(line)?)
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }

    /// Every readable line of `dir/metrics.jsonl` (none when it is missing); a line cut
    /// short by a kill is passed over.
    pub fn read(dir: &Path) -> Result<Vec<MetricsLine>> {
        let path = dir.join(METRICS_LOG);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// `metrics.json`: what the run trained and how the dictionary does on held-out text.
#[derive(Debug, Clone, Serialize)]
pub struct RunMetrics {
    /// the architecture, as `--arch` names it
    pub arch: String,
    /// the hook the dictionary reads
    pub hook: String,
    /// a transcoder's target hook
    pub hook_out: Option<String>,
    /// input width
    pub d_in: usize,
    /// output width (= `d_in` for an SAE)
    pub d_out: usize,
    /// latents
    pub d_sae: usize,
    /// active latents per token (TopK-family)
    pub k: Option<usize>,
    /// training tokens over the whole run
    pub train_tokens: usize,
    /// optimisation steps over the whole run
    pub steps: usize,
    /// wall time of training since the last start (a resumed run counts from there)
    pub train_seconds_this_session: f64,
    /// training throughput of this session
    pub train_tokens_per_s: f64,
    /// rows passed over as massive activations
    pub train_massive_rows_excluded: u64,
    /// the massive-activation threshold applied, if any
    pub massive_norm: Option<serde_json::Value>,
    /// the held-out evaluation (FVU, L0, dead latents, CE and KL recovered)
    pub eval: glassbox_analysis::sae_eval::SaeEval,
}

impl RunMetrics {
    /// Writes `dir/metrics.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        Ok(glassbox_atomic::write(
            &dir.join(METRICS_FILE),
            text.as_bytes(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_reads_partial_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RunConfig::read(dir.path()).unwrap().is_none());
        let cfg = RunConfig {
            model: Some("/m.gguf".into()),
            hook: Some("blocks.1.hook_resid_pre".into()),
            context_size: Some(24),
            train: Some(TrainConfig {
                seed: 9,
                ..TrainConfig::default()
            }),
            ..RunConfig::default()
        };
        cfg.write(dir.path()).unwrap();
        let back = RunConfig::read(dir.path()).unwrap().unwrap();
        assert_eq!(back.model.as_deref(), Some("/m.gguf"));
        assert_eq!(back.context_size, Some(24));
        assert_eq!(back.seed(), 9);
        assert!(back.corpus.is_none());
        // an early run's file: the seed at the top level, no [train]
        std::fs::write(dir.path().join(CONFIG_FILE), "model = \"m\"\nseed = 4\n").unwrap();
        assert_eq!(RunConfig::read(dir.path()).unwrap().unwrap().seed(), 4);
        std::fs::write(dir.path().join(CONFIG_FILE), "model = [").unwrap();
        let err = RunConfig::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.toml"), "{err}");
    }

    #[test]
    fn a_resumed_log_keeps_only_the_steps_before_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let line = |step| MetricsLine {
            step,
            tokens: step * 8,
            mse: 1.0,
            fvu: 0.5,
            l0: 4.0,
            sparsity_loss: 0.0,
            aux_loss: 0.0,
            dead_fraction: 0.0,
            lr: 1e-3,
            sparsity_coefficient: 0.0,
            grad_norm: 1.0,
            dense_kernels: false,
            resampled: 0,
            tokens_per_s: 100.0,
        };
        let mut log = MetricsLog::create(dir.path()).unwrap();
        for s in [10, 20, 30] {
            log.append(&line(s)).unwrap();
        }
        drop(log);
        // a kill mid-line leaves a fragment
        let path = dir.path().join(METRICS_LOG);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"step\": 4");
        std::fs::write(&path, text).unwrap();
        let mut log = MetricsLog::resume(dir.path(), 20).unwrap();
        log.append(&line(20)).unwrap();
        let steps: Vec<usize> = MetricsLog::read(dir.path())
            .unwrap()
            .iter()
            .map(|l| l.step)
            .collect();
        assert_eq!(steps, [10, 20]);
    }
}
