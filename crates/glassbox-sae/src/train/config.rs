//! What a training run is: architecture, sizes, losses and schedules. Serialisable, so
//! a run directory records it and `--config FILE` (TOML) can set it.

use serde::{Deserialize, Serialize};

/// The architecture to train (`--arch`; serialised lowercase, e.g. `batchtopk`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainArch {
    /// k largest pre-activations per token (OpenAI, Gao et al. 2024), AuxK for dead latents
    TopK,
    /// k × batch largest over the whole batch (Bussmann et al. 2024); saved as JumpReLU
    /// with the running threshold
    BatchTopK,
    /// ReLU with an L1 penalty (see [`L1Recipe`])
    Standard,
    /// ReLU gated by a learned threshold, L0 penalty with straight-through gradients
    /// (Rajamanoharan et al. 2024, Gemma Scope)
    JumpReLU,
    /// separate gate and magnitude paths (Rajamanoharan et al. 2024)
    Gated,
}

impl TrainArch {
    /// The architecture named `s`, case-insensitive: `topk`, `batchtopk` (also
    /// `batch-topk`, `batch_topk`), `standard` (or `relu`), `jumprelu`, `gated`; `None`
    /// for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "topk" => TrainArch::TopK,
            "batchtopk" | "batch-topk" | "batch_topk" => TrainArch::BatchTopK,
            "standard" | "relu" => TrainArch::Standard,
            "jumprelu" => TrainArch::JumpReLU,
            "gated" => TrainArch::Gated,
            _ => return None,
        })
    }

    /// Whether it selects `k` latents per token (TopK, BatchTopK): these use `k` and
    /// AuxK, the others a sparsity penalty and resampling.
    pub fn uses_k(self) -> bool {
        matches!(self, TrainArch::TopK | TrainArch::BatchTopK)
    }
}

/// The two common ReLU + L1 recipes ([`TrainArch::Standard`] only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum L1Recipe {
    /// Anthropic (April 2024): L1 of each activation times its decoder row's norm, no
    /// norm constraint (SAELens' `standard` default)
    Anthropic,
    /// decoder rows kept at unit norm (renormalised after every step, the gradient
    /// component along each row removed), plain L1 (Bricken et al. 2023)
    UnitNorm,
}

/// How [`Trainer::prepare`](super::Trainer::prepare) initialises `b_dec` from sample
/// rows of the target (the input for an SAE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BDecInit {
    /// all zeros
    Zeros,
    /// the rows' mean
    Mean,
    /// the geometric median of the first 8192 rows, by at most 50 Weiszfeld iterations
    /// ([`geometric_median`](super::params::geometric_median))
    GeometricMedian,
}

/// SAELens' `normalize_activations`: `expected_average_only_in` scales inputs so that
/// E‖x‖ = √d_in during training and folds the factor into the weights on save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalize {
    /// train on the activations as they are
    None,
    /// scale inputs (and a transcoder's targets, by their own factor) to E‖x‖ = √width
    ExpectedAverageOnlyIn,
}

/// Everything a training run fixes about the dictionary and its optimisation. Every
/// field has a default ([`TrainConfig::default`]; [`TrainConfig::for_run`] gives the
/// recommended one for a run's length); unknown fields are an error on reading.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// the architecture (default TopK)
    pub arch: TrainArch,
    /// input width (the hook's width; 0 by default, so it must be set)
    pub d_in: usize,
    /// the target's width for a transcoder; `None` for an SAE (target = input)
    pub d_out: Option<usize>,
    /// number of latents (default 4096)
    pub d_sae: usize,
    /// active latents per token (topk, batchtopk)
    pub k: usize,
    /// which ReLU + L1 recipe (standard only; default Anthropic)
    pub l1_recipe: L1Recipe,
    /// L1 coefficient (standard, gated) or L0 coefficient (jumprelu)
    pub sparsity_coefficient: f32,
    /// the sparsity coefficient rises linearly from 0 over these steps
    pub sparsity_warmup_steps: usize,
    /// Adam's learning rate after warm-up and before decay
    pub lr: f32,
    /// the learning rate rises linearly from `lr / lr_warmup_steps` over these steps
    pub lr_warmup_steps: usize,
    /// the learning rate falls linearly to 0 over the last fraction of steps
    pub lr_decay_fraction: f32,
    /// Adam's first-moment decay (default 0.9)
    pub adam_beta1: f32,
    /// Adam's second-moment decay (default 0.999)
    pub adam_beta2: f32,
    /// clip the global gradient norm to this (0 = no clipping)
    pub grad_clip: f32,
    /// AuxK loss weight (topk, batchtopk; OpenAI use 1/32)
    pub aux_k_coefficient: f32,
    /// latents used by AuxK per token (default d_in / 2)
    pub aux_k: Option<usize>,
    /// a latent is dead when it has not fired for this many training tokens
    pub dead_window_tokens: u64,
    /// standard/gated/jumprelu: re-initialise dead latents every N steps (0 = never)
    pub resample_every_steps: usize,
    /// jumprelu: width ε of the rectangle kernel of the straight-through threshold
    /// gradient (Rajamanoharan et al. 2024)
    pub jumprelu_bandwidth: f32,
    /// jumprelu: every latent's threshold θ at initialisation
    pub jumprelu_init_threshold: f32,
    /// how `b_dec` is initialised (default the geometric median)
    pub b_dec_init: BDecInit,
    /// input normalisation during training (default `expected_average_only_in`)
    pub normalize: Normalize,
    /// transcoders: a linear skip connection `W_skip x`
    pub skip: bool,
    /// tokens (rows) per step
    pub batch: usize,
    /// seed of the initialisation and of resampling (glassbox-train also seeds its
    /// window shuffle, held-out split and activation store with it)
    pub seed: u64,
    /// ReLU-family steps switch from sparse kernels to dense GEMMs above this density
    pub dense_above: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            arch: TrainArch::TopK,
            d_in: 0,
            d_out: None,
            d_sae: 4096,
            k: 32,
            l1_recipe: L1Recipe::Anthropic,
            sparsity_coefficient: 5.0,
            sparsity_warmup_steps: 0,
            lr: 1e-3,
            lr_warmup_steps: 0,
            lr_decay_fraction: 0.2,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            grad_clip: 0.0,
            aux_k_coefficient: 1.0 / 32.0,
            aux_k: None,
            dead_window_tokens: 200_000,
            resample_every_steps: 0,
            jumprelu_bandwidth: 0.001,
            jumprelu_init_threshold: 0.001,
            b_dec_init: BDecInit::GeometricMedian,
            normalize: Normalize::ExpectedAverageOnlyIn,
            skip: false,
            batch: 4096,
            seed: 0,
            dense_above: 0.1,
        }
    }
}

impl TrainConfig {
    /// The recommended configuration of `arch` for a run of `tokens` training tokens in
    /// batches of `batch` (what `glassbox train-sae` uses for every option not given):
    /// Adam at 1e-3 for TopK-style and 3e-4 otherwise; for L1-style (standard, gated) the
    /// sparsity coefficient warms up over the first 5 % of steps and the gradient norm is
    /// clipped at 1; a latent is dead after 10 % of the run's tokens without firing.
    pub fn for_run(arch: TrainArch, tokens: usize, batch: usize) -> Self {
        let steps = tokens / batch.max(1);
        let l1_style = matches!(arch, TrainArch::Standard | TrainArch::Gated);
        TrainConfig {
            arch,
            d_sae: 16384,
            sparsity_coefficient: match arch {
                TrainArch::JumpReLU => 0.001,
                _ => 5.0,
            },
            sparsity_warmup_steps: if l1_style { steps / 20 } else { 0 },
            lr: if arch.uses_k() { 1e-3 } else { 3e-4 },
            grad_clip: if l1_style { 1.0 } else { 0.0 },
            dead_window_tokens: (tokens as u64 / 10).max(batch as u64),
            jumprelu_init_threshold: 0.01,
            batch,
            ..TrainConfig::default()
        }
    }

    /// The output width: `d_out`, or `d_in` for an SAE.
    pub fn d_out(&self) -> usize {
        self.d_out.unwrap_or(self.d_in)
    }

    /// Whether it trains a transcoder (`d_out` is set), predicting another hook.
    pub fn is_transcoder(&self) -> bool {
        self.d_out.is_some()
    }

    /// SAEs subtract `b_dec` from their input (SAELens default); transcoders cannot.
    pub fn apply_b_dec_to_input(&self) -> bool {
        !self.is_transcoder()
    }

    /// Latents AuxK uses per token: `aux_k`, or `d_in / 2`, within `1..=d_sae`.
    pub fn aux_k(&self) -> usize {
        self.aux_k.unwrap_or(self.d_in / 2).clamp(1, self.d_sae)
    }

    /// Every inconsistency, as a message that says what to change.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |v: f32| v.is_finite() && v > 0.0;
        if self.d_in == 0 || self.d_sae == 0 || self.d_out == Some(0) {
            return Err("d_in, d_out and d_sae must be positive".into());
        }
        if self.arch.uses_k() && (self.k == 0 || self.k > self.d_sae) {
            return Err(format!(
                "k must be between 1 and d_sae ({}); got {}",
                self.d_sae, self.k
            ));
        }
        if self.batch == 0 {
            return Err("batch must be positive".into());
        }
        if !pos(self.lr) {
            return Err(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(0.0..=1.0).contains(&self.lr_decay_fraction) {
            return Err("lr_decay_fraction must be between 0 and 1".into());
        }
        if !(self.sparsity_coefficient.is_finite() && self.sparsity_coefficient >= 0.0) {
            return Err("sparsity_coefficient must be a finite number ≥ 0".into());
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err("grad_clip must be ≥ 0 (0 turns clipping off)".into());
        }
        for (name, v) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("{name} must be in [0, 1), got {v}"));
            }
        }
        if self.arch == TrainArch::JumpReLU
            && !(pos(self.jumprelu_bandwidth) && pos(self.jumprelu_init_threshold))
        {
            return Err("jumprelu_bandwidth and jumprelu_init_threshold must be positive".into());
        }
        if self.skip && !self.is_transcoder() {
            return Err("a skip connection is for transcoders (set d_out / --hook-out)".into());
        }
        Ok(())
    }
}
