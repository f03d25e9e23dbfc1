//! A dictionary's trainable parameters as flat buffers, their initialisation, and the
//! geometric median used to initialise `b_dec`.

use super::config::{L1Recipe, TrainArch, TrainConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Parameters in SAELens' layout, except the encoder, stored transposed so a latent's
/// encoder weights are one contiguous row. Unused tensors are empty.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// `[d_sae, d_in]` = `W_encᵀ` (gated: `W_gate`ᵀ)
    pub w_enc_t: Vec<f32>,
    /// `[d_sae]` (gated: `b_gate`)
    pub b_enc: Vec<f32>,
    /// `[d_sae, d_out]`
    pub w_dec: Vec<f32>,
    /// `[d_out]`
    pub b_dec: Vec<f32>,
    /// jumprelu: `[d_sae]`, the threshold is `exp(log_threshold)`
    pub log_threshold: Vec<f32>,
    /// gated: `[d_sae]`, log scale of the magnitude path's encoder
    pub r_mag: Vec<f32>,
    /// gated: `[d_sae]`, the magnitude path's bias
    pub b_mag: Vec<f32>,
    /// transcoders with a skip connection: `[d_out, d_in]`
    pub w_skip: Vec<f32>,
}

/// Names used in checkpoints, in [`Params::tensors`] order.
pub const PARAM_NAMES: [&str; 8] = [
    "W_enc_T",
    "b_enc",
    "W_dec",
    "b_dec",
    "log_threshold",
    "r_mag",
    "b_mag",
    "W_skip",
];

impl Params {
    /// Every buffer, in [`PARAM_NAMES`] order (empty ones included).
    pub fn tensors(&self) -> [&Vec<f32>; 8] {
        [
            &self.w_enc_t,
            &self.b_enc,
            &self.w_dec,
            &self.b_dec,
            &self.log_threshold,
            &self.r_mag,
            &self.b_mag,
            &self.w_skip,
        ]
    }

    /// Every buffer, mutably, in [`PARAM_NAMES`] order.
    pub fn tensors_mut(&mut self) -> [&mut Vec<f32>; 8] {
        [
            &mut self.w_enc_t,
            &mut self.b_enc,
            &mut self.w_dec,
            &mut self.b_dec,
            &mut self.log_threshold,
            &mut self.r_mag,
            &mut self.b_mag,
            &mut self.w_skip,
        ]
    }

    /// Same shapes, all zero (gradient and optimiser buffers).
    pub fn zeros_like(&self) -> Params {
        let z = |v: &Vec<f32>| vec![0.0; v.len()];
        Params {
            w_enc_t: z(&self.w_enc_t),
            b_enc: z(&self.b_enc),
            w_dec: z(&self.w_dec),
            b_dec: z(&self.b_dec),
            log_threshold: z(&self.log_threshold),
            r_mag: z(&self.r_mag),
            b_mag: z(&self.b_mag),
            w_skip: z(&self.w_skip),
        }
    }

    /// Initialisation per architecture: random decoder directions (unit norm for
    /// TopK-style and unit-norm recipes, norm 0.1 for L1/JumpReLU/gated as in Anthropic's
    /// recipe and SAELens), the encoder tied to the decoder's transpose where the widths
    /// allow, zero biases.
    pub fn init(cfg: &TrainConfig) -> Params {
        let (d, m, o) = (cfg.d_in, cfg.d_sae, cfg.d_out());
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let norm = match cfg.arch {
            TrainArch::TopK | TrainArch::BatchTopK => 1.0,
            TrainArch::Standard if cfg.l1_recipe == L1Recipe::UnitNorm => 1.0,
            _ => 0.1,
        };
        let mut directions = |width: usize| -> Vec<f32> {
            let mut w: Vec<f32> = (0..m * width).map(|_| rng.gen_range(-1.0..1.0)).collect();
            for row in w.chunks_mut(width) {
                let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v *= norm / n);
            }
            w
        };
        let w_dec = directions(o);
        let w_enc_t = if o == d && !cfg.is_transcoder() {
            w_dec.clone()
        } else {
            directions(d)
        };
        let per_latent = |on: bool, v: f32| if on { vec![v; m] } else { Vec::new() };
        let gated = cfg.arch == TrainArch::Gated;
        Params {
            w_enc_t,
            b_enc: vec![0.0; m],
            w_dec,
            b_dec: vec![0.0; o],
            log_threshold: per_latent(
                cfg.arch == TrainArch::JumpReLU,
                cfg.jumprelu_init_threshold.ln(),
            ),
            r_mag: per_latent(gated, 0.0),
            b_mag: per_latent(gated, 0.0),
            w_skip: if cfg.skip {
                vec![0.0; o * d]
            } else {
                Vec::new()
            },
        }
    }
}

/// Mean of rows `[n, d]`.
pub fn mean(rows: &[f32], d: usize) -> Vec<f32> {
    let n = (rows.len() / d).max(1) as f64;
    let mut acc = vec![0f64; d];
    for r in rows.chunks(d) {
        acc.iter_mut().zip(r).for_each(|(a, v)| *a += *v as f64);
    }
    acc.iter().map(|a| (a / n) as f32).collect()
}

/// Geometric median of rows `[n, d]` (the point minimising the sum of Euclidean
/// distances) by Weiszfeld's iterations from the mean; robust to the heavy-tailed
/// activations where the mean is dragged by a few huge-norm tokens.
pub fn geometric_median(rows: &[f32], d: usize, iterations: usize) -> Vec<f32> {
    let mut y: Vec<f64> = mean(rows, d).into_iter().map(f64::from).collect();
    for _ in 0..iterations {
        let mut num = vec![0f64; d];
        let mut den = 0f64;
        for r in rows.chunks(d) {
            let dist = r
                .iter()
                .zip(&y)
                .map(|(v, c)| (*v as f64 - c).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-8);
            let w = 1.0 / dist;
            num.iter_mut().zip(r).for_each(|(a, v)| *a += w * *v as f64);
            den += w;
        }
        let next: Vec<f64> = num.iter().map(|v| v / den).collect();
        let moved = next
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        y = next;
        if moved < 1e-6 {
            break;
        }
    }
    y.into_iter().map(|v| v as f32).collect()
}
