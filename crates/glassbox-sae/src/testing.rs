//! Deterministic random transcoders for tests and examples: the same seed gives the same
//! weights on every machine (a 64-bit LCG, no platform RNG).

use crate::{Architecture, Dictionary, Result};
use candle_core::{Device, Tensor};

/// A random transcoder `blocks.{layer}.ln2.hook_normalized → blocks.{layer}.hook_mlp_out`
/// of a `d`-wide model. Weights are uniform in ±scale/2.
#[derive(Debug, Clone)]
pub struct RandomTranscoder {
    /// the block it reads and writes (names its hooks)
    pub layer: usize,
    /// the model's `d_model`: input and output width
    pub d: usize,
    /// number of features
    pub d_sae: usize,
    /// `Some(k)`: TopK; `None`: standard (ReLU)
    pub k: Option<usize>,
    /// add a skip connection `W_skip` `[d, d]` (uniform in ±0.05)
    pub skip: bool,
    /// width of `W_enc`'s uniform range (default 1.0)
    pub enc_scale: f32,
    /// width of `W_dec`'s uniform range (default 0.3)
    pub dec_scale: f32,
    /// the LCG's seed: the same seed, the same weights
    pub seed: u64,
}

impl RandomTranscoder {
    /// A standard (ReLU) transcoder without a skip connection, at the default scales;
    /// set the fields to change that before [`RandomTranscoder::build`].
    pub fn new(layer: usize, d: usize, d_sae: usize, seed: u64) -> Self {
        RandomTranscoder {
            layer,
            d,
            d_sae,
            k: None,
            skip: false,
            enc_scale: 1.0,
            dec_scale: 0.3,
            seed,
        }
    }

    /// The dictionary: `W_enc`, then `b_enc` (±0.1), `W_dec`, `b_dec` (±0.05) and
    /// `W_skip` drawn in that order from one stream; f32 on the CPU,
    /// `apply_b_dec_to_input` off (a transcoder).
    pub fn build(&self) -> Result<Dictionary> {
        let (d, m) = (self.d, self.d_sae);
        let mut x = self.seed;
        let mut rnd = |n: usize, s: f32| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * s
                })
                .collect()
        };
        let dev = &Device::Cpu;
        let w_enc = Tensor::from_vec(rnd(d * m, self.enc_scale), (d, m), dev)?;
        let b_enc = Tensor::from_vec(rnd(m, 0.2), m, dev)?;
        let w_dec = Tensor::from_vec(rnd(m * d, self.dec_scale), (m, d), dev)?;
        let b_dec = Tensor::from_vec(rnd(d, 0.1), d, dev)?;
        let w_skip = if self.skip {
            Some(Tensor::from_vec(rnd(d * d, 0.1), (d, d), dev)?)
        } else {
            None
        };
        Ok(Dictionary {
            architecture: if self.k.is_some() {
                Architecture::TopK
            } else {
                Architecture::Standard
            },
            d_in: d,
            d_sae: m,
            d_out: d,
            k: self.k,
            apply_b_dec_to_input: false,
            w_enc,
            b_enc: Some(b_enc),
            w_dec,
            b_dec,
            threshold: None,
            b_gate: None,
            r_mag: None,
            b_mag: None,
            w_skip,
            hook_name: Some(format!("blocks.{}.ln2.hook_normalized", self.layer)),
            hook_name_out: Some(format!("blocks.{}.hook_mlp_out", self.layer)),
            model_name: None,
            extra_cfg: Default::default(),
        })
    }
}
