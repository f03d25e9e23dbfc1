//! A dictionary's weights and its encode/decode, as SAELens defines them:
//! `sae_in = x − b_dec` (when `apply_b_dec_to_input`), `pre = sae_in·W_enc + b_enc`, then
//! ReLU (standard), top-k of `pre` then ReLU (topk), ReLU gated by `pre > threshold`
//! (jumprelu), or gate/magnitude paths (gated); `decode(f) = f·W_dec + b_dec`
//! (+ `x·W_skipᵀ` for transcoders with a skip connection).

use crate::{Result, SaeError};
use candle_core::{DType, Tensor};
use serde::Serialize;

/// How pre-activations become feature activations (SAELens' `architecture`, without
/// the transcoder suffix: a transcoder is told apart by [`Dictionary::is_transcoder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// `ReLU(pre)`
    Standard,
    /// the `k` largest pre-activations of each token, then ReLU; zeros elsewhere
    TopK,
    /// `ReLU(pre)` where `pre > threshold` (per feature), zero elsewhere (Rajamanoharan
    /// et al. 2024)
    JumpReLU,
    /// a gate path (`sae_in·W_enc + b_gate > 0`) times a magnitude path
    /// (`ReLU(sae_in·(W_enc ⊙ exp(r_mag)) + b_mag)`), sharing `W_enc` (Rajamanoharan et
    /// al. 2024)
    Gated,
}

impl Architecture {
    /// SAELens' name of the architecture (`standard`, `topk`, `jumprelu`, `gated`), as
    /// `cfg.json` writes it for an SAE.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Standard => "standard",
            Architecture::TopK => "topk",
            Architecture::JumpReLU => "jumprelu",
            Architecture::Gated => "gated",
        }
    }
}

/// A sparse dictionary — an SAE or a transcoder — with its weights in SAELens' layout
/// (f32 on the CPU as [`crate::format::load`] reads them). Written by
/// [`crate::format::save_saelens`], made by [`crate::train::Trainer::to_dictionary`];
/// the fields are public so tests and converters can build one by hand.
#[derive(Debug, Clone)]
pub struct Dictionary {
    /// how pre-activations become feature activations
    pub architecture: Architecture,
    /// input width (the width of the hook it reads)
    pub d_in: usize,
    /// number of features (latents)
    pub d_sae: usize,
    /// output width: `d_in` for an SAE, the target's width for a transcoder
    pub d_out: usize,
    /// active features per token, used by [`Architecture::TopK`] only (`cfg.json`'s `k`,
    /// or legacy `activation_fn_kwargs.k`)
    pub k: Option<usize>,
    /// subtract `b_dec` from the input before encoding (SAELens' default `true`; ignored
    /// for transcoders, whose `b_dec` is the output's bias)
    pub apply_b_dec_to_input: bool,
    /// `[d_in, d_sae]`
    pub w_enc: Tensor,
    /// `[d_sae]` (absent for gated)
    pub b_enc: Option<Tensor>,
    /// `[d_sae, d_out]`
    pub w_dec: Tensor,
    /// `[d_out]`
    pub b_dec: Tensor,
    /// `[d_sae]`, jumprelu: a feature is active where its pre-activation exceeds this
    pub threshold: Option<Tensor>,
    /// `[d_sae]`, gated: the gate path's bias
    pub b_gate: Option<Tensor>,
    /// `[d_sae]`, gated: log scale of the magnitude path's encoder (`W_enc ⊙ exp(r_mag)`,
    /// per feature)
    pub r_mag: Option<Tensor>,
    /// `[d_sae]`, gated: the magnitude path's bias
    pub b_mag: Option<Tensor>,
    /// `[d_out, d_in]`, transcoders with a skip connection
    pub w_skip: Option<Tensor>,
    /// the hook the dictionary reads (`metadata.hook_name`)
    pub hook_name: Option<String>,
    /// the hook a transcoder predicts (`metadata.hook_name_out`)
    pub hook_name_out: Option<String>,
    /// the model it was trained on (`metadata.model_name`)
    pub model_name: Option<String>,
    /// the cfg.json as read (its `architecture` names a transcoder; a save keeps its
    /// `metadata` object and rewrites the rest)
    pub extra_cfg: serde_json::Map<String, serde_json::Value>,
}

fn need<'a>(t: &'a Option<Tensor>, name: &str, arch: Architecture) -> Result<&'a Tensor> {
    t.as_ref()
        .ok_or_else(|| SaeError::BadInput(format!("a {} dictionary needs `{name}`", arch.name())))
}

impl Dictionary {
    /// Reads one hook and predicts another (SAELens' `*transcoder` architectures).
    pub fn is_transcoder(&self) -> bool {
        self.d_out != self.d_in
            || self.w_skip.is_some()
            || self.hook_name_out.is_some()
            || self
                .extra_cfg
                .get("architecture")
                .and_then(|a| a.as_str())
                .is_some_and(|a| a.ends_with("transcoder"))
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.dims().last() != Some(&self.d_in) {
            return Err(SaeError::BadInput(format!(
                "input has shape {:?}; this dictionary reads vectors of width {}",
                x.dims(),
                self.d_in
            )));
        }
        Ok(())
    }

    /// Feature activations `[.., d_sae]` for inputs `[.., d_in]` (any float dtype, read
    /// as f32). [`SaeError::BadInput`] when the last dimension is not `d_in`, or the
    /// architecture's tensors are missing.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let x = x.to_dtype(DType::F32)?;
        let sae_in = if self.apply_b_dec_to_input && !self.is_transcoder() {
            x.broadcast_sub(&self.b_dec)?
        } else {
            x
        };
        let a = self.architecture;
        Ok(match a {
            Architecture::Gated => {
                let gate = sae_in.broadcast_matmul(&self.w_enc)?.broadcast_add(need(
                    &self.b_gate,
                    "b_gate",
                    a,
                )?)?;
                let w_mag = self
                    .w_enc
                    .broadcast_mul(&need(&self.r_mag, "r_mag", a)?.exp()?)?;
                let mag = sae_in
                    .broadcast_matmul(&w_mag)?
                    .broadcast_add(need(&self.b_mag, "b_mag", a)?)?
                    .relu()?;
                gate.gt(0.0)?.to_dtype(DType::F32)?.mul(&mag)?
            }
            _ => {
                let pre = sae_in.broadcast_matmul(&self.w_enc)?.broadcast_add(need(
                    &self.b_enc,
                    "b_enc",
                    a,
                )?)?;
                match a {
                    Architecture::Standard => pre.relu()?,
                    Architecture::JumpReLU => {
                        let keep = pre
                            .broadcast_gt(need(&self.threshold, "threshold", a)?)?
                            .to_dtype(DType::F32)?;
                        pre.relu()?.mul(&keep)?
                    }
                    Architecture::TopK => {
                        // never a silent default: k decides which features fire
                        let k = self.k.ok_or_else(|| {
                            SaeError::BadInput("a topk dictionary needs `k`".into())
                        })?;
                        top_k_relu(&pre, k)?
                    }
                    Architecture::Gated => unreachable!("handled above"),
                }
            }
        })
    }

    /// Reconstruction `[.., d_out]` from feature activations `f` `[.., d_sae]` (and, with
    /// a skip connection, the input `x` `[.., d_in]`, else [`SaeError::BadInput`]; `x` is
    /// ignored without one).
    pub fn decode(&self, f: &Tensor, x: Option<&Tensor>) -> Result<Tensor> {
        let mut out = f
            .broadcast_matmul(&self.w_dec)?
            .broadcast_add(&self.b_dec)?;
        if let Some(w) = &self.w_skip {
            let x = x.ok_or_else(|| {
                SaeError::BadInput(
                    "a transcoder with a skip connection decodes from its input too".into(),
                )
            })?;
            out = (out + x.broadcast_matmul(&w.t()?)?)?;
        }
        Ok(out)
    }

    /// Decoder row of one feature, `[d_out]`.
    pub fn decoder_row(&self, feature: usize) -> Result<Tensor> {
        if feature >= self.d_sae {
            return Err(SaeError::BadInput(format!(
                "feature {feature} does not exist: this dictionary has {} features (0..{})",
                self.d_sae,
                self.d_sae.saturating_sub(1)
            )));
        }
        Ok(self.w_dec.get(feature)?)
    }
}

/// Keeps the `k` largest pre-activations of each row (then ReLU), zeros elsewhere.
fn top_k_relu(pre: &Tensor, k: usize) -> Result<Tensor> {
    let dims = pre.dims().to_vec();
    let d = *dims.last().expect("rank ≥ 1");
    let rows: Vec<f32> = pre.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; rows.len()];
    let mut idx: Vec<usize> = (0..d).collect();
    for (r, row) in rows.chunks(d).enumerate() {
        idx.iter_mut().enumerate().for_each(|(i, x)| *x = i);
        let k = k.min(d);
        if k == 0 {
            continue;
        }
        idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
        for &i in &idx[..k] {
            out[r * d + i] = row[i].max(0.0);
        }
    }
    Ok(Tensor::from_vec(out, dims.as_slice(), pre.device())?)
}

#[cfg(test)]
mod tests {
    use crate::testing::RandomTranscoder;
    use candle_core::{Device, Tensor};

    #[test]
    fn a_topk_dictionary_without_k_is_an_error_not_a_default() {
        let mut t = RandomTranscoder::new(0, 8, 16, 1);
        t.k = Some(3);
        let mut d = t.build().unwrap();
        let x = Tensor::ones((2, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let f = d.encode(&x).unwrap();
        let fired: Vec<f32> = f
            .ne(0f32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(fired.iter().all(|&n| n <= 3.0), "{fired:?}");
        d.k = None;
        let msg = d.encode(&x).unwrap_err().to_string();
        assert!(msg.contains("needs `k`"), "{msg}");
    }
}
