//! Training sparse dictionaries (SAEs and transcoders) with hand-written CPU kernels.
//!
//! [`Trainer`] owns the parameters, Adam, the schedules (learning-rate warm-up and
//! decay, sparsity-coefficient warm-up), dead-latent tracking (AuxK for TopK-style,
//! resampling for ReLU-style), input normalisation (folded into the weights on save)
//! and checkpoints that resume bit-for-bit ([`checkpoint`]). The kernels are in
//! [`step`]; what a run is, in [`TrainConfig`].

pub mod adam;
pub mod checkpoint;
pub mod collective;
pub mod config;
pub mod kill_point;
mod matmul;
pub mod params;
pub mod step;

pub use collective::{Alone, Collective};
pub use config::{BDecInit, L1Recipe, Normalize, TrainArch, TrainConfig};
pub use params::Params;
pub use step::{LatentShard, Losses, StepCoefficients, Workspace};

use crate::{Architecture, Dictionary};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `out [b, m] = x [b, d] · wᵀ` with `w [m, d]`: the encoder's GEMM alone, for
/// benchmarks that report how close a step comes to it.
pub fn encoder_gemm(out: &mut [f32], x: &[f32], w: &[f32], b: usize, d: usize, m: usize) {
    matmul::matmul(
        out,
        false,
        matmul::MatRef::new(x, b, d),
        matmul::MatRef::new(w, m, d).t(),
    );
}

/// Why a trainer could not be made or a step could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// the configuration is inconsistent ([`TrainConfig::validate`]'s message, which says
    /// what to change), or a transcoder step was given no targets
    #[error("{0}")]
    Config(String),
    /// the loss or the gradient norm is NaN or infinite; the parameters are unchanged
    #[error("step {step}: the {what} is {value} (NaN or infinite); training stopped before the update, the last checkpoint is intact. Lower the learning rate, enable --grad-clip, or check the activations for NaN/Inf")]
    NonFinite {
        /// the step that stopped (counted from 0)
        step: usize,
        /// `"loss"` or `"gradient norm"`
        what: &'static str,
        /// the offending value
        value: f32,
    },
    /// a batch of inputs or targets of the wrong length
    #[error("batch has {got} values; expected {want} (batch × width)")]
    Shape {
        /// values given
        got: usize,
        /// values expected: `batch × d_in` (inputs) or `batch × d_out` (targets)
        want: usize,
    },
}

fn check_len(v: &[f32], want: usize) -> Result<(), TrainError> {
    if v.len() == want {
        Ok(())
    } else {
        Err(TrainError::Shape { got: v.len(), want })
    }
}

/// What one step did, for progress bars and the metrics log.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// the step, counted from 0
    pub step: usize,
    /// the loss terms, in normalised units (inputs times [`Trainer::scale_in`])
    pub losses: Losses,
    /// this batch's fraction of variance unexplained
    pub fvu: f32,
    /// fraction of latents that have not fired within `dead_window_tokens`, after this
    /// step
    pub dead_fraction: f32,
    /// the learning rate of this step
    pub lr: f32,
    /// the sparsity coefficient of this step (after warm-up)
    pub sparsity_coefficient: f32,
    /// the global gradient L2 norm, before clipping
    pub grad_norm: f32,
    /// whether the step used dense GEMMs (dense activity) rather than sparse kernels
    pub dense_kernels: bool,
    /// dead latents re-initialised after this step (ReLU-family, every
    /// `resample_every_steps`)
    pub resampled: usize,
}

/// Trains one dictionary: its parameters, Adam's state, the schedules and the
/// dead-latent counters. [`Trainer::prepare`] on sample rows, then [`Trainer::step`] on
/// raw batches; [`checkpoint`] saves and restores it, [`Trainer::to_dictionary`] gives
/// the result in SAELens' layout.
pub struct Trainer {
    /// the run's configuration
    pub cfg: TrainConfig,
    /// the trainable parameters, in normalised units (see `scale_in`, `scale_out`)
    pub params: Params,
    /// Adam's moments and step count
    pub opt: adam::Adam,
    ws: Workspace,
    /// the run's length in steps (where the learning-rate decay ends; at least 1)
    pub total_steps: usize,
    /// steps done: the index of the next step
    pub step: usize,
    /// per latent: training tokens since it last fired
    pub since_fired: Vec<u64>,
    /// the factor inputs are multiplied by during training (1 unless
    /// [`Normalize::ExpectedAverageOnlyIn`])
    pub scale_in: f32,
    /// the factor targets are multiplied by (a transcoder's own; an SAE's is `scale_in`)
    pub scale_out: f32,
    /// batchtopk: running mean of the smallest selected activation (the inference
    /// threshold)
    pub batch_topk_threshold: f32,
    xs: Vec<f32>,
    ys: Vec<f32>,
    dead: Vec<bool>,
    /// the flat buffer [`Trainer::step_with`] sums over the ranks
    flat: Vec<f32>,
    /// `Some`: this trainer holds one rank's share of the latents
    /// ([`Trainer::new_latent_shard`]); `cfg.d_sae` is then the share's width
    pub shard: Option<LatentShard>,
}

impl Trainer {
    /// A fresh trainer for a run of `total_steps` steps: parameters from [`Params::init`],
    /// Adam's moments at zero, no normalisation yet. [`TrainError::Config`] when
    /// [`TrainConfig::validate`] finds an inconsistency.
    pub fn new(cfg: TrainConfig, total_steps: usize) -> Result<Self, TrainError> {
        cfg.validate().map_err(TrainError::Config)?;
        let params = Params::init(&cfg);
        let opt = adam::Adam::new(&params, cfg.adam_beta1, cfg.adam_beta2);
        let ws = Workspace::new(&cfg, &params);
        Ok(Trainer {
            since_fired: vec![0; cfg.d_sae],
            dead: vec![false; cfg.d_sae],
            xs: vec![0.0; cfg.batch * cfg.d_in],
            ys: if cfg.is_transcoder() {
                vec![0.0; cfg.batch * cfg.d_out()]
            } else {
                Vec::new()
            },
            cfg,
            params,
            opt,
            ws,
            total_steps: total_steps.max(1),
            step: 0,
            scale_in: 1.0,
            scale_out: 1.0,
            batch_topk_threshold: 0.0,
            flat: Vec::new(),
            shard: None,
        })
    }

    /// Rank `rank` of `ranks`' share of a TopK dictionary `cfg` too wide for one
    /// machine: latents `rank · d_sae / ranks ..` (encoder rows, decoder rows, biases,
    /// Adam moments), initialised as the same rows of the whole dictionary's
    /// initialisation, so that stepping every rank on the same whole batches with
    /// [`Trainer::step_with`] trains the dictionary one trainer would (up to f32
    /// summation order). `ranks` must divide `d_sae`.
    pub fn new_latent_shard(
        cfg: TrainConfig,
        total_steps: usize,
        rank: usize,
        ranks: usize,
    ) -> Result<Self, TrainError> {
        cfg.validate().map_err(TrainError::Config)?;
        if cfg.arch != TrainArch::TopK {
            return Err(TrainError::Config(format!(
                "latent sharding trains TopK dictionaries; {:?} selects across the batch or has no k",
                cfg.arch
            )));
        }
        if ranks == 0 || !cfg.d_sae.is_multiple_of(ranks) || cfg.d_sae / ranks < cfg.k {
            return Err(TrainError::Config(format!(
                "latent sharding splits d_sae ({}) into {ranks} equal shares of at least k ({}) latents: pick a d_sae that {ranks} divides",
                cfg.d_sae, cfg.k
            )));
        }
        let share = cfg.d_sae / ranks;
        let first = rank * share;
        // the whole initialisation, then this rank's rows: the same dictionary as one
        // trainer's (it costs the whole dictionary's memory once, at the start)
        let whole = Params::init(&cfg);
        let (d, o) = (cfg.d_in, cfg.d_out());
        let rows = |v: &Vec<f32>, w: usize| -> Vec<f32> {
            if v.is_empty() {
                Vec::new()
            } else {
                v[first * w..(first + share) * w].to_vec()
            }
        };
        let params = Params {
            w_enc_t: rows(&whole.w_enc_t, d),
            b_enc: rows(&whole.b_enc, 1),
            w_dec: rows(&whole.w_dec, o),
            b_dec: whole.b_dec.clone(),
            log_threshold: rows(&whole.log_threshold, 1),
            r_mag: rows(&whole.r_mag, 1),
            b_mag: rows(&whole.b_mag, 1),
            w_skip: whole.w_skip.clone(),
        };
        let shard = LatentShard {
            first,
            d_sae: cfg.d_sae,
            aux_k: cfg.aux_k(),
        };
        let mut t = Trainer::new(
            TrainConfig {
                d_sae: share,
                ..cfg
            },
            total_steps,
        )?;
        t.opt = adam::Adam::new(&params, t.cfg.adam_beta1, t.cfg.adam_beta2);
        t.params = params;
        t.shard = Some(shard);
        Ok(t)
    }

    /// The whole dictionary's trainer, from every rank's share (a sum over the ranks:
    /// every rank gets it). Parameters and counters only; Adam's moments are left at
    /// zero (what [`Trainer::to_dictionary`] needs). A trainer that is no shard gives a
    /// copy of itself without Adam's state.
    pub fn gather_latent_shards(&self, comm: &dyn Collective) -> Result<Trainer, TrainError> {
        let Some(shard) = self.shard else {
            let mut t = Trainer::new(self.cfg.clone(), self.total_steps)?;
            t.copy_state_from(self);
            t.params = self.params.clone();
            return Ok(t);
        };
        let cfg = TrainConfig {
            d_sae: shard.d_sae,
            ..self.cfg.clone()
        };
        let mut t = Trainer::new(cfg, self.total_steps)?;
        let (d, o, share) = (self.cfg.d_in, self.cfg.d_out(), self.cfg.d_sae);
        let place = |whole: &mut Vec<f32>, part: &[f32], w: usize| {
            if whole.is_empty() {
                return;
            }
            whole.iter_mut().for_each(|v| *v = 0.0);
            whole[shard.first * w..(shard.first + share) * w].copy_from_slice(part);
            comm.sum_f32(whole);
        };
        place(&mut t.params.w_enc_t, &self.params.w_enc_t, d);
        place(&mut t.params.b_enc, &self.params.b_enc, 1);
        place(&mut t.params.w_dec, &self.params.w_dec, o);
        place(&mut t.params.log_threshold, &self.params.log_threshold, 1);
        t.params.b_dec = self.params.b_dec.clone();
        t.params.w_skip = self.params.w_skip.clone();
        let mut fired = vec![0u64; shard.d_sae];
        fired[shard.first..shard.first + share].copy_from_slice(&self.since_fired);
        comm.sum_u64(&mut fired);
        t.copy_state_from(self);
        t.since_fired = fired;
        Ok(t)
    }

    fn copy_state_from(&mut self, other: &Trainer) {
        self.step = other.step;
        self.scale_in = other.scale_in;
        self.scale_out = other.scale_out;
        self.batch_topk_threshold = other.batch_topk_threshold;
        self.since_fired = other.since_fired.clone();
    }

    /// Before the first step: normalisation factors and `b_dec` from sample rows
    /// (inputs `x`, and targets `y` for a transcoder).
    pub fn prepare(&mut self, x: &[f32], y: Option<&[f32]>) {
        let (d, o) = (self.cfg.d_in, self.cfg.d_out());
        let mean_norm = |rows: &[f32], w: usize| {
            let n = (rows.len() / w).max(1) as f64;
            rows.chunks(w)
                .map(|r| r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt())
                .sum::<f64>()
                / n
        };
        if self.cfg.normalize == Normalize::ExpectedAverageOnlyIn {
            self.scale_in = ((d as f64).sqrt() / mean_norm(x, d).max(1e-12)) as f32;
            self.scale_out = match y {
                Some(y) => ((o as f64).sqrt() / mean_norm(y, o).max(1e-12)) as f32,
                None => self.scale_in,
            };
        }
        let target: Vec<f32> = y.unwrap_or(x).iter().map(|v| v * self.scale_out).collect();
        // a sample is enough for the median; Weiszfeld is O(n·d) per iteration
        let sample = &target[..target.len().min(8192 * o)];
        self.params.b_dec = match self.cfg.b_dec_init {
            BDecInit::Zeros => vec![0.0; o],
            BDecInit::Mean => params::mean(&target, o),
            BDecInit::GeometricMedian => params::geometric_median(sample, o, 50),
        };
    }

    /// The learning rate at `step` (from 0): `lr` times a linear warm-up
    /// (`(step + 1) / lr_warmup_steps`, at most 1) times a linear decay to 0 over the last
    /// `lr_decay_fraction` of `total_steps`.
    pub fn lr_at(&self, step: usize) -> f32 {
        let c = &self.cfg;
        let warm = if c.lr_warmup_steps > 0 {
            ((step + 1) as f32 / c.lr_warmup_steps as f32).min(1.0)
        } else {
            1.0
        };
        let decay_steps = (c.lr_decay_fraction * self.total_steps as f32).round() as usize;
        let decay_from = self.total_steps.saturating_sub(decay_steps);
        let decay = if decay_steps > 0 && step >= decay_from {
            1.0 - (step - decay_from) as f32 / decay_steps as f32
        } else {
            1.0
        };
        c.lr * warm * decay
    }

    /// The sparsity coefficient at `step` (from 0): `sparsity_coefficient` times a linear
    /// warm-up (`(step + 1) / sparsity_warmup_steps`, at most 1).
    pub fn sparsity_at(&self, step: usize) -> f32 {
        let c = &self.cfg;
        if c.sparsity_warmup_steps == 0 {
            return c.sparsity_coefficient;
        }
        c.sparsity_coefficient * ((step + 1) as f32 / c.sparsity_warmup_steps as f32).min(1.0)
    }

    fn load_batch(&mut self, x: &[f32], y: Option<&[f32]>) -> Result<(), TrainError> {
        let (b, d, o) = (self.cfg.batch, self.cfg.d_in, self.cfg.d_out());
        check_len(x, b * d)?;
        let s = self.scale_in;
        self.xs.iter_mut().zip(x).for_each(|(o, v)| *o = v * s);
        if self.cfg.is_transcoder() {
            let y =
                y.ok_or_else(|| TrainError::Config("a transcoder step needs targets".into()))?;
            check_len(y, b * o)?;
            let s = self.scale_out;
            self.ys.iter_mut().zip(y).for_each(|(o, v)| *o = v * s);
        }
        Ok(())
    }

    /// Refreshes `self.dead` from the firing counters; whether any latent is dead.
    fn refresh_dead_mask(&mut self) -> bool {
        let window = self.cfg.dead_window_tokens;
        let mut any = false;
        for (d, &s) in self.dead.iter_mut().zip(&self.since_fired) {
            *d = s >= window;
            any |= *d;
        }
        any
    }

    /// One optimisation step on raw (unnormalised) `x` `[batch, d_in]` and, for a
    /// transcoder, targets `y` `[batch, d_out]`. A non-finite loss or gradient stops
    /// before the parameters change.
    pub fn step(&mut self, x: &[f32], y: Option<&[f32]>) -> Result<StepReport, TrainError> {
        self.step_with(x, y, &Alone)
    }

    /// [`Trainer::step`] as one rank of a data-parallel job: this rank's `batch` rows
    /// are its share of a global batch of `batch × ranks`. The gradients, firing
    /// counts, losses and BatchTopK's smallest selection are summed over the ranks in
    /// one flat buffer (one collective a step), the gradients divided by the ranks: the
    /// mean over the global batch, so every rank applies the same update and the result
    /// equals one process stepping on the whole global batch (up to f32 summation
    /// order). BatchTopK still selects within each rank's rows, as per-GPU batches do
    /// in other DDP trainers; resampling (standard, `resample_every_steps`) picks rows
    /// of one rank's batch, so callers refuse it with more than one rank.
    pub fn step_with(
        &mut self,
        x: &[f32],
        y: Option<&[f32]>,
        comm: &dyn Collective,
    ) -> Result<StepReport, TrainError> {
        if let Some(shard) = self.shard {
            return self.step_latent_sharded(x, y, comm, shard);
        }
        self.load_batch(x, y)?;
        let step = self.step;
        let sparsity = self.sparsity_at(step);
        let uses_aux_k = self.cfg.arch.uses_k();
        let any_dead = uses_aux_k && self.refresh_dead_mask();
        let coefs = StepCoefficients {
            sparsity,
            dead: any_dead.then_some(&self.dead[..]),
        };
        let ys = self.cfg.is_transcoder().then_some(&self.ys[..]);
        let mut losses = step::forward(&self.cfg, &self.params, &mut self.ws, &self.xs, ys, &coefs);
        let ranks = comm.size();
        if ranks == 1 && !losses.total.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                what: "loss",
                value: losses.total,
            });
        }
        step::backward(&self.cfg, &self.params, &mut self.ws, &self.xs, &coefs);
        if ranks > 1 {
            // after the sum every rank sees the same loss, so all stop or none does
            self.sum_over_ranks(&mut losses, comm);
            if !losses.total.is_finite() {
                return Err(TrainError::NonFinite {
                    step,
                    what: "loss",
                    value: losses.total,
                });
            }
        }
        let unit_norm =
            self.cfg.arch == TrainArch::Standard && self.cfg.l1_recipe == L1Recipe::UnitNorm;
        let o = self.cfg.d_out();
        if unit_norm {
            adam::remove_parallel_component(&self.params.w_dec, &mut self.ws.grads.w_dec, o);
        }
        let gnorm = adam::grad_norm(&self.ws.grads);
        let lr = self.update(step, gnorm)?;
        if unit_norm {
            adam::normalize_rows(&mut self.params.w_dec, o);
        }
        // tokens this step over every rank: the dead window counts global tokens
        self.count_firing((self.cfg.batch * ranks) as u64);
        if self.cfg.arch == TrainArch::BatchTopK {
            let t = self.ws.batch_min_active;
            self.batch_topk_threshold = if step == 0 {
                t
            } else {
                0.99 * self.batch_topk_threshold + 0.01 * t
            };
        }
        let resampled = if !uses_aux_k
            && self.cfg.resample_every_steps > 0
            && (step + 1).is_multiple_of(self.cfg.resample_every_steps)
        {
            self.resample_dead()
        } else {
            0
        };
        self.step += 1;
        let dead_fraction = self
            .since_fired
            .iter()
            .filter(|&&s| s >= self.cfg.dead_window_tokens)
            .count() as f32
            / self.cfg.d_sae as f32;
        Ok(StepReport {
            step,
            fvu: losses.mse / losses.variance.max(1e-30),
            losses,
            dead_fraction,
            lr,
            sparsity_coefficient: sparsity,
            grad_norm: gnorm,
            dense_kernels: self.ws.was_dense(),
            resampled,
        })
    }

    /// Adam's update with the step's learning rate, the gradients clipped to
    /// `grad_clip` by their global norm `gnorm`; refused (nothing changed) when the norm
    /// is not finite. Gives the learning rate.
    fn update(&mut self, step: usize, gnorm: f32) -> Result<f32, TrainError> {
        if !gnorm.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                what: "gradient norm",
                value: gnorm,
            });
        }
        let clip = if self.cfg.grad_clip > 0.0 && gnorm > self.cfg.grad_clip {
            self.cfg.grad_clip / gnorm
        } else {
            1.0
        };
        let lr = self.lr_at(step);
        self.opt.update(&mut self.params, &self.ws.grads, lr, clip);
        Ok(lr)
    }

    /// Per latent: 0 tokens since firing if it fired this step, else `tokens` more.
    fn count_firing(&mut self, tokens: u64) {
        for (s, &f) in self.since_fired.iter_mut().zip(&self.ws.fired) {
            *s = if f > 0 { 0 } else { s.saturating_add(tokens) };
        }
    }

    /// A step of a latent shard: every rank has the same whole batch, selection and
    /// reconstruction are global ([`step::forward_latent_sharded`]), the backward pass
    /// runs on the shard; the gradient norm and `b_dec`'s gradient (the encoder's part of
    /// it comes from every shard) are summed over the ranks.
    fn step_latent_sharded(
        &mut self,
        x: &[f32],
        y: Option<&[f32]>,
        comm: &dyn Collective,
        shard: LatentShard,
    ) -> Result<StepReport, TrainError> {
        self.load_batch(x, y)?;
        let step = self.step;
        self.refresh_dead_mask();
        let coefs = StepCoefficients {
            sparsity: 0.0,
            dead: Some(&self.dead[..]),
        };
        let ys = self.cfg.is_transcoder().then_some(&self.ys[..]);
        let losses = step::forward_latent_sharded(
            &self.cfg,
            &self.params,
            &mut self.ws,
            &self.xs,
            ys,
            &coefs,
            &shard,
            comm,
        );
        if !losses.total.is_finite() {
            return Err(TrainError::NonFinite {
                step,
                what: "loss",
                value: losses.total,
            });
        }
        step::backward(&self.cfg, &self.params, &mut self.ws, &self.xs, &coefs);
        // b_dec's gradient is the decoder's Σ err (the same on every rank) minus each
        // shard's encoder part: counted once, from rank 0
        let o = self.cfg.d_out();
        if comm.rank() != 0 {
            let mut decoder_part = vec![0f32; o];
            for r in 0..self.cfg.batch {
                let row = self.ws.error_row(r);
                decoder_part.iter_mut().zip(row).for_each(|(s, e)| *s += e);
            }
            self.ws
                .grads
                .b_dec
                .iter_mut()
                .zip(&decoder_part)
                .for_each(|(g, s)| *g -= s);
        }
        comm.sum_f32(&mut self.ws.grads.b_dec);
        let g = &self.ws.grads;
        let sq = |v: &[f32]| v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>();
        let mut sharded = [(sq(&g.w_enc_t) + sq(&g.b_enc) + sq(&g.w_dec)) as f32];
        comm.sum_f32(&mut sharded);
        let gnorm = ((sharded[0] as f64) + sq(&g.b_dec) + sq(&g.w_skip)).sqrt() as f32;
        let lr = self.update(step, gnorm)?;
        self.count_firing(self.cfg.batch as u64);
        self.step += 1;
        let mut dead = [self
            .since_fired
            .iter()
            .filter(|&&s| s >= self.cfg.dead_window_tokens)
            .count() as u64];
        comm.sum_u64(&mut dead);
        Ok(StepReport {
            step,
            fvu: losses.mse / losses.variance.max(1e-30),
            losses,
            dead_fraction: dead[0] as f32 / shard.d_sae as f32,
            lr,
            sparsity_coefficient: 0.0,
            grad_norm: gnorm,
            dense_kernels: false,
            resampled: 0,
        })
    }

    /// Sums this step's gradients (then divided by the ranks), firing counts, losses
    /// (averaged) and BatchTopK's smallest selection (averaged) over the ranks, in one
    /// collective over a flat buffer. Firing counts travel as f32, exact below 2²⁴
    /// tokens a step.
    fn sum_over_ranks(&mut self, losses: &mut Losses, comm: &dyn Collective) {
        let ranks = comm.size() as f32;
        let grads = self.ws.grads.tensors();
        let n_grads: usize = grads.iter().map(|t| t.len()).sum();
        let mut flat = std::mem::take(&mut self.flat);
        flat.clear();
        flat.reserve(n_grads + self.ws.fired.len() + 7);
        for t in grads {
            flat.extend_from_slice(t);
        }
        flat.extend(self.ws.fired.iter().map(|&f| f as f32));
        flat.extend([
            losses.mse,
            losses.sparsity,
            losses.aux,
            losses.total,
            losses.l0,
            losses.variance,
            self.ws.batch_min_active,
        ]);
        comm.sum_f32(&mut flat);
        let mut at = 0;
        for t in self.ws.grads.tensors_mut() {
            let n = t.len();
            t.iter_mut()
                .zip(&flat[at..at + n])
                .for_each(|(g, s)| *g = s / ranks);
            at += n;
        }
        for (f, s) in self.ws.fired.iter_mut().zip(&flat[at..]) {
            *f = s.round() as u32;
        }
        at += self.ws.fired.len();
        let mean = |i: usize| flat[at + i] / ranks;
        *losses = Losses {
            mse: mean(0),
            sparsity: mean(1),
            aux: mean(2),
            total: mean(3),
            l0: mean(4),
            variance: mean(5),
        };
        self.ws.batch_min_active = mean(6);
        self.flat = flat;
    }

    /// Re-initialises dead latents from this batch's worst-reconstructed tokens
    /// (Bricken et al. 2023): encoder and decoder along the token's centred input
    /// (a transcoder's decoder along its residual), encoder scaled to 0.2 × the mean
    /// live encoder norm, zero bias, fresh Adam moments.
    fn resample_dead(&mut self) -> usize {
        let (d, o, b) = (self.cfg.d_in, self.cfg.d_out(), self.cfg.batch);
        let window = self.cfg.dead_window_tokens;
        let dead: Vec<usize> = (0..self.cfg.d_sae)
            .filter(|&f| self.since_fired[f] >= window)
            .collect();
        if dead.is_empty() {
            return 0;
        }
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let alive: Vec<usize> = (0..self.cfg.d_sae)
            .filter(|&f| self.since_fired[f] < window)
            .collect();
        let mean_norm = |w: &[f32], width: usize, default: f32| {
            if alive.is_empty() {
                return default;
            }
            alive
                .iter()
                .map(|&f| norm(&w[f * width..(f + 1) * width]))
                .sum::<f32>()
                / alive.len() as f32
        };
        let enc_norm = 0.2 * mean_norm(&self.params.w_enc_t, d, 1.0);
        let dec_norm =
            if self.cfg.l1_recipe == L1Recipe::UnitNorm && self.cfg.arch == TrainArch::Standard {
                1.0
            } else {
                mean_norm(&self.params.w_dec, o, 0.1)
            };
        // per-token loss (the workspace holds 2/b · error)
        let loss = self.ws_row_losses();
        let total: f64 = loss.iter().map(|v| *v as f64).sum();
        let mut rng =
            StdRng::seed_from_u64(self.cfg.seed ^ (self.step as u64).wrapping_mul(0x9e37));
        for &f in &dead {
            let mut pick = rng.gen_range(0.0..total.max(1e-30));
            let mut r = b - 1;
            for (i, l) in loss.iter().enumerate() {
                pick -= *l as f64;
                if pick <= 0.0 {
                    r = i;
                    break;
                }
            }
            let mut enc: Vec<f32> = self.xs[r * d..(r + 1) * d].to_vec();
            if self.cfg.apply_b_dec_to_input() {
                enc.iter_mut()
                    .zip(&self.params.b_dec)
                    .for_each(|(v, b)| *v -= b);
            }
            let dec: Vec<f32> = if self.cfg.is_transcoder() {
                self.ws.error_row(r).iter().map(|v| -v).collect()
            } else {
                enc.clone()
            };
            let (ne, nd) = (norm(&enc).max(1e-12), norm(&dec).max(1e-12));
            self.params.w_enc_t[f * d..(f + 1) * d]
                .iter_mut()
                .zip(&enc)
                .for_each(|(w, v)| *w = v / ne * enc_norm);
            self.params.w_dec[f * o..(f + 1) * o]
                .iter_mut()
                .zip(&dec)
                .for_each(|(w, v)| *w = v / nd * dec_norm);
            self.params.b_enc[f] = 0.0;
            if let Some(v) = self.params.r_mag.get_mut(f) {
                *v = 0.0;
            }
            if let Some(v) = self.params.b_mag.get_mut(f) {
                *v = 0.0;
            }
            self.since_fired[f] = 0;
        }
        self.opt.reset_latents(&dead, d, o);
        dead.len()
    }

    fn ws_row_losses(&self) -> Vec<f32> {
        let o = self.cfg.d_out();
        (0..self.cfg.batch)
            .map(|r| self.ws.error_row(r).iter().map(|v| v * v).sum())
            .map(|v: f32| v.max(0.0) / o as f32)
            .collect()
    }

    /// Forward pass only (no update) on a raw batch of the training batch size, at the
    /// full sparsity coefficient and without AuxK: the losses. Each token's selections
    /// are then at [`Trainer::row_selection`] when the pass used sparse kernels.
    pub fn evaluate(&mut self, x: &[f32], y: Option<&[f32]>) -> Result<Losses, TrainError> {
        self.load_batch(x, y)?;
        let coefs = StepCoefficients {
            sparsity: self.cfg.sparsity_coefficient,
            dead: None,
        };
        let ys = self.cfg.is_transcoder().then_some(&self.ys[..]);
        Ok(step::forward(
            &self.cfg,
            &self.params,
            &mut self.ws,
            &self.xs,
            ys,
            &coefs,
        ))
    }

    /// Row `r`'s selected latents and values in the last forward (sparse steps only).
    pub fn row_selection(&self, r: usize) -> Option<(&[u32], &[f32])> {
        self.ws.row_selection(r)
    }

    /// The gradient buffers of the last step (tests and diagnostics).
    pub fn gradients(&self) -> &Params {
        &self.ws.grads
    }

    /// Forward + backward without an update, on already-normalised inputs (tests).
    pub fn loss_and_gradients(
        &mut self,
        x: &[f32],
        y: Option<&[f32]>,
        sparsity: f32,
        dead: Option<&[bool]>,
    ) -> Losses {
        let coefs = StepCoefficients { sparsity, dead };
        let l = step::forward(&self.cfg, &self.params, &mut self.ws, x, y, &coefs);
        step::backward(&self.cfg, &self.params, &mut self.ws, x, &coefs);
        l
    }

    /// Loss only, on already-normalised inputs (tests).
    pub fn loss(
        &mut self,
        x: &[f32],
        y: Option<&[f32]>,
        sparsity: f32,
        dead: Option<&[bool]>,
    ) -> Losses {
        let coefs = StepCoefficients { sparsity, dead };
        step::forward(&self.cfg, &self.params, &mut self.ws, x, y, &coefs)
    }

    /// The dictionary in SAELens' layout, with the normalisation folded into the
    /// weights so it reads raw activations (SAELens' `fold_activation_norm_scaling_factor`).
    /// BatchTopK becomes JumpReLU with its running threshold, as in SAELens.
    pub fn to_dictionary(
        &self,
        hook_name: Option<String>,
        hook_name_out: Option<String>,
        model_name: Option<String>,
    ) -> crate::Result<Dictionary> {
        use candle_core::{Device, Tensor};
        let dev = &Device::Cpu;
        let c = &self.cfg;
        let (d, m, o) = (c.d_in, c.d_sae, c.d_out());
        let p = &self.params;
        let (si, so) = (self.scale_in, self.scale_out);
        let w_enc: Vec<f32> = p.w_enc_t.iter().map(|v| v * si).collect();
        let w_dec: Vec<f32> = p.w_dec.iter().map(|v| v / so).collect();
        let b_dec: Vec<f32> = p.b_dec.iter().map(|v| v / so).collect();
        let t1 = |v: &[f32]| Tensor::from_slice(v, m, dev);
        let (architecture, threshold) = match c.arch {
            TrainArch::TopK => (Architecture::TopK, None),
            TrainArch::BatchTopK => (
                Architecture::JumpReLU,
                Some(t1(&vec![self.batch_topk_threshold; m])?),
            ),
            TrainArch::Standard => (Architecture::Standard, None),
            TrainArch::JumpReLU => {
                let t: Vec<f32> = p.log_threshold.iter().map(|v| v.exp()).collect();
                (Architecture::JumpReLU, Some(t1(&t)?))
            }
            TrainArch::Gated => (Architecture::Gated, None),
        };
        let gated = c.arch == TrainArch::Gated;
        let mut metadata = serde_json::Map::new();
        metadata.insert("trained_with".into(), "glassbox".into());
        metadata.insert(
            "training_arch".into(),
            serde_json::to_value(c.arch).unwrap_or_default(),
        );
        let mut extra_cfg = serde_json::Map::new();
        extra_cfg.insert("metadata".into(), metadata.into());
        Ok(Dictionary {
            architecture,
            d_in: d,
            d_sae: m,
            d_out: o,
            k: (c.arch == TrainArch::TopK).then_some(c.k),
            apply_b_dec_to_input: c.apply_b_dec_to_input(),
            w_enc: Tensor::from_slice(&w_enc, (m, d), dev)?.t()?.contiguous()?,
            b_enc: (!gated).then(|| t1(&p.b_enc)).transpose()?,
            w_dec: Tensor::from_slice(&w_dec, (m, o), dev)?,
            b_dec: Tensor::from_slice(&b_dec, o, dev)?,
            threshold,
            b_gate: gated.then(|| t1(&p.b_enc)).transpose()?,
            r_mag: gated.then(|| t1(&p.r_mag)).transpose()?,
            b_mag: gated.then(|| t1(&p.b_mag)).transpose()?,
            w_skip: c
                .skip
                .then(|| {
                    let w: Vec<f32> = p.w_skip.iter().map(|v| v * si / so).collect();
                    Tensor::from_slice(&w, (o, d), dev)
                })
                .transpose()?,
            hook_name,
            hook_name_out,
            model_name,
            extra_cfg,
        })
    }
}
