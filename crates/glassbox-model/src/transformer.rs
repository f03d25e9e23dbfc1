//! The forward pass: one implementation for every supported family, with a hook call
//! at each TransformerLens hook point. Fused candle ops are used unless gradients or
//! a `hook_scale` are asked for; then differentiable compositions compute the same thing.

use crate::config::{Activation, ModelConfig, NormKind, QkNorm, RopeScaling};
use crate::error::{ModelError, Result};
use crate::hooks::HookFilter;
use crate::kernels::{FusedAttention, LinearOp, MaskData, RopeData, RopeSplit, SiluMulPacked};
use crate::run::{Batch, HookFn, LogitsMode, Run, RunOutput};
use crate::stored::{to_f32, StoredTensor};
use crate::weights::{BlockWeights, Linear, ModelWeights, Norm};
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::BTreeMap;

/// A model ready to run: its config and weights. [`Transformer::run`] is one forward
/// pass with hooks; [`Transformer::generate`] samples with a KV cache.
pub struct Transformer {
    /// what the forward pass computes
    pub config: ModelConfig,
    /// the weights, in HF orientation
    pub weights: ModelWeights,
}

/// Keys and values of past positions, for generation.
pub struct KvCache {
    /// per layer: keys and values of the positions cached so far
    layers: Vec<Option<LayerKv>>,
    key_mask: Vec<Vec<bool>>,
    key_pos: Vec<Vec<u32>>,
}

/// One layer's keys and values: buffers `[batch, kv_heads, capacity, d_head]` whose
/// first `len` positions are filled. A decoding step writes its one new position in
/// place (the capacity doubles when full) instead of copying the whole past into a new
/// tensor, which cost a tenth of a step at 16 sequences and 70 positions.
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerKv {
    /// A layer holding exactly `k` and `v` (`[batch, kv_heads, t, d_head]`).
    fn new(k: Tensor, v: Tensor) -> Result<Self> {
        let len = k.dim(2)?;
        Ok(LayerKv {
            k: k.contiguous()?,
            v: v.contiguous()?,
            len,
        })
    }

    /// The filled positions, as views of the buffers (each head's `[t, d_head]`
    /// contiguous, which the attention kernel reads).
    fn keys_values(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }

    /// Writes `k` and `v` (`[batch, kv_heads, s, d_head]`) after the filled positions.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let s = k.dim(2)?;
        let cap = self.k.dim(2)?;
        if self.len + s > cap {
            let grown = |x: &Tensor| -> Result<Tensor> {
                let (b, h, _, d) = x.dims4()?;
                let new_cap = (self.len + s).max(2 * cap).max(16);
                let buf = Tensor::zeros((b, h, new_cap, d), x.dtype(), x.device())?;
                buf.slice_set(&x.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                Ok(buf)
            };
            (self.k, self.v) = (grown(&self.k)?, grown(&self.v)?);
        }
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += s;
        Ok(())
    }
}

impl KvCache {
    /// An empty cache with a slot per layer of `cfg`.
    pub fn new(cfg: &ModelConfig) -> Self {
        KvCache {
            layers: (0..cfg.n_layers).map(|_| None).collect(),
            key_mask: Vec::new(),
            key_pos: Vec::new(),
        }
    }

    /// Positions cached so far (padding included).
    pub fn len(&self) -> usize {
        self.key_mask.first().map_or(0, Vec::len)
    }

    /// Whether no position is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequences held (the batch size of the passes that filled it).
    pub fn rows(&self) -> usize {
        self.key_mask.len()
    }

    /// Real (unpadded) positions cached for each sequence.
    pub fn real_lens(&self) -> Vec<usize> {
        self.key_mask
            .iter()
            .map(|m| m.iter().filter(|&&x| x).count())
            .collect()
    }

    /// One cache holding the sequences of `parts` in order, for continuous batching:
    /// shorter caches are left-padded with masked positions, which attention never
    /// sees and positions do not count, so each sequence continues exactly as alone.
    pub fn concat(parts: Vec<KvCache>) -> Result<KvCache> {
        let parts: Vec<KvCache> = parts.into_iter().filter(|p| p.rows() > 0).collect();
        let Some(first) = parts.first() else {
            return Err(ModelError::BadInput("no KV caches to join".into()));
        };
        let n_layers = first.layers.len();
        let t = parts.iter().map(KvCache::len).max().unwrap_or(0);
        let mut out = KvCache {
            layers: (0..n_layers).map(|_| None).collect(),
            key_mask: Vec::new(),
            key_pos: Vec::new(),
        };
        for l in 0..n_layers {
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for p in &parts {
                let Some(layer) = &p.layers[l] else {
                    return Err(ModelError::BadInput(format!(
                        "a KV cache has no layer {l}: join only caches of whole passes"
                    )));
                };
                let (k, v) = layer.keys_values()?;
                let pad = t - p.len();
                let left = |x: &Tensor| -> Result<Tensor> {
                    if pad == 0 {
                        return Ok(x.clone());
                    }
                    let (b, h, _, d) = x.dims4()?;
                    let zeros = Tensor::zeros((b, h, pad, d), x.dtype(), x.device())?;
                    // the attention kernel reads [past, d_head] per head contiguously
                    Ok(Tensor::cat(&[&zeros, x], 2)?.contiguous()?)
                };
                ks.push(left(&k)?);
                vs.push(left(&v)?);
            }
            out.layers[l] = Some(LayerKv::new(Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?)?);
        }
        for p in parts {
            let pad = t - p.len();
            for (m, pos) in p.key_mask.into_iter().zip(p.key_pos) {
                out.key_mask
                    .push(std::iter::repeat_n(false, pad).chain(m).collect());
                out.key_pos
                    .push(std::iter::repeat_n(0, pad).chain(pos).collect());
            }
        }
        Ok(out)
    }

    /// Keeps only the sequences whose `keep` entry is true (a finished request leaves
    /// the batch), then drops leading positions that are padding in every remaining row.
    pub fn retain(&mut self, keep: &[bool]) -> Result<()> {
        if keep.len() != self.rows() {
            return Err(ModelError::BadInput(format!(
                "retain got {} flags for {} sequences",
                keep.len(),
                self.rows()
            )));
        }
        let idx: Vec<u32> = (0..keep.len() as u32)
            .filter(|&i| keep[i as usize])
            .collect();
        let mut flags = keep.iter();
        self.key_mask.retain(|_| *flags.next().unwrap_or(&false));
        let mut flags = keep.iter();
        self.key_pos.retain(|_| *flags.next().unwrap_or(&false));
        if idx.is_empty() {
            self.layers.iter_mut().for_each(|l| *l = None);
            return Ok(());
        }
        let skip = (0..self.len())
            .take_while(|&j| self.key_mask.iter().all(|m| !m[j]))
            .count();
        let sel = Tensor::new(idx.as_slice(), &Device::Cpu)?;
        let len = self.len() - skip;
        for layer in self.layers.iter_mut().flatten() {
            // index_select reads whole (contiguous) buffers; the filled part is cut after
            let cut = |x: &Tensor| -> Result<Tensor> {
                Ok(x.index_select(&sel, 0)?.narrow(2, skip, len)?)
            };
            *layer = LayerKv::new(cut(&layer.k)?, cut(&layer.v)?)?;
        }
        for m in self.key_mask.iter_mut() {
            m.drain(..skip);
        }
        for p in self.key_pos.iter_mut() {
            p.drain(..skip);
        }
        Ok(())
    }
}

/// Per-pass state: the caller's hooks plus what the pass records.
struct Ctx<'r, 'h> {
    hooks: &'r mut Vec<(HookFilter, HookFn<'h>)>,
    cache_filter: Option<&'r HookFilter>,
    grad_filter: Option<&'r HookFilter>,
    cache: BTreeMap<String, Tensor>,
    grad_vars: Vec<(String, Var)>,
    /// a pass with a KV cache (generation: its prompt and every step); up to
    /// `FEW_ROWS` token rows then take the few-rows kernel instead of the GEMM
    decoding: bool,
    /// use differentiable compositions instead of fused kernels
    differentiable: bool,
}

impl Ctx<'_, '_> {
    fn active(&self) -> bool {
        !self.hooks.is_empty() || self.cache_filter.is_some() || self.grad_filter.is_some()
    }

    fn wants(&self, name: &str) -> bool {
        self.hooks.iter().any(|(f, _)| f.matches(name))
            || self.cache_filter.is_some_and(|f| f.matches(name))
            || self.grad_filter.is_some_and(|f| f.matches(name))
    }

    /// The hook point `name` (built lazily: no string work when nothing is hooked).
    fn hook(&mut self, name: impl FnOnce() -> String, mut x: Tensor) -> Result<Tensor> {
        if !self.active() {
            return Ok(x);
        }
        let name = name();
        for (filter, f) in self.hooks.iter_mut() {
            if filter.matches(&name) {
                let shape = x.dims().to_vec();
                x = f(&name, x)?;
                if x.dims() != shape.as_slice() {
                    return Err(ModelError::BadIntervention {
                        hook: name,
                        problem: format!(
                            "hook returned shape {:?}, expected {:?}",
                            x.dims(),
                            shape
                        ),
                    });
                }
            }
        }
        if self.grad_filter.is_some_and(|f| f.matches(&name)) {
            // d(metric)/d(activation) = gradient of a zero added here.
            let var = Var::zeros(x.shape(), x.dtype(), x.device())?;
            x = (x + var.as_tensor())?;
            self.grad_vars.push((name.clone(), var));
        }
        if self.cache_filter.is_some_and(|f| f.matches(&name)) {
            self.cache.insert(name, x.clone());
        }
        Ok(x)
    }
}

/// `x [n, in] · Wᵀ + b`. The differentiable path must use candle's matmul (it has a
/// backward); the fast path writes the GEMM straight into its output.
/// `x · Wᵀ (+ b)`; `decoding` (a pass with a KV cache) takes the few-rows kernel up to
/// `FEW_ROWS` rows, so a sequence's numbers do not depend on the batch it decodes in and
/// a short prompt does not pay for packing the weights.
fn linear(x: &Tensor, l: &Linear, differentiable: bool, decoding: bool) -> Result<Tensor> {
    if !differentiable && l.weight.is_contiguous() {
        let bias = match &l.bias {
            Some(b) => Some(std::sync::Arc::new(b.to_vec1::<f32>()?)),
            None => None,
        };
        return Ok(x
            .contiguous()?
            .apply_op2_no_bwd(&l.weight, &LinearOp::new(bias).few_rows(decoding))?);
    }
    let y = x.matmul(&l.weight.t()?)?;
    Ok(match &l.bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

fn softmax(x: &Tensor, differentiable: bool) -> Result<Tensor> {
    if !differentiable {
        return Ok(candle_nn::ops::softmax_last_dim(x)?);
    }
    // The max only shifts for stability; its gradient cancels, so detach it.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// What attention reads: the normalised residual, and per-head copies of it when the
/// split-input hooks are in use.
struct AttnInput<'w> {
    block: &'w BlockWeights,
    shared: Tensor,
    per_head: Option<[Tensor; 3]>,
}

/// `centred / scale · w (+ b)`
fn scale_norm(centred: &Tensor, scale: &Tensor, n: &Norm) -> Result<Tensor> {
    let y = centred.broadcast_div(scale)?.broadcast_mul(&n.weight)?;
    Ok(match &n.bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// Each head's own input through its rows of `l`: `x [b, s, n, in]`, `l [n·out, in]`
/// → `[b·s, n·out]`.
fn per_head_linear(x: &Tensor, l: &Linear) -> Result<Tensor> {
    let (b, s, n, d) = x.dims4()?;
    let out = l.weight.dim(0)? / n;
    let xh = x
        .permute((2, 0, 1, 3))?
        .contiguous()?
        .reshape((n, b * s, d))?;
    let w = l
        .weight
        .reshape((n, out, d))?
        .transpose(1, 2)?
        .contiguous()?;
    let y = xh
        .matmul(&w)?
        .permute((1, 0, 2))?
        .contiguous()?
        .reshape((b * s, n * out))?;
    Ok(match &l.bias {
        Some(bias) => y.broadcast_add(bias)?,
        None => y,
    })
}

/// Rotary tables for the given positions: `cos`, `sin` as `[batch, seq, 1, rot_dim]`.
/// Rotary tables as tensors (for the composed path) and as data (for the kernels).
struct Rope {
    cos: Tensor,
    sin: Tensor,
    data: RopeData,
}

fn rotary_tables(theta: f64, scaling: &RopeScaling, rot: usize, pos: &[Vec<u32>]) -> Result<Rope> {
    let inv_freq = scaling.inv_freq(theta, rot);
    let (b, s) = (pos.len(), pos[0].len());
    let mut cos = Vec::with_capacity(b * s * rot);
    let mut sin = Vec::with_capacity(b * s * rot);
    for row in pos {
        for &p in row {
            for _ in 0..2 {
                for f in &inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
    }
    Ok(Rope {
        cos: Tensor::from_vec(cos.clone(), (b, s, 1, rot), &Device::Cpu)?,
        sin: Tensor::from_vec(sin.clone(), (b, s, 1, rot), &Device::Cpu)?,
        data: RopeData {
            cos: std::sync::Arc::new(cos),
            sin: std::sync::Arc::new(sin),
            rot,
        },
    })
}

/// HF `rotate_half` rotary on the first `rot` dims of `[batch, seq, heads, d_head]`.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor, rot: usize) -> Result<Tensor> {
    let dh = x.dim(3)?;
    let xr = if rot == dh {
        x.clone()
    } else {
        x.narrow(3, 0, rot)?
    };
    let half = rot / 2;
    let x1 = xr.narrow(3, 0, half)?;
    let x2 = xr.narrow(3, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
    let out = (xr.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
    Ok(if rot == dh {
        out
    } else {
        Tensor::cat(&[&out, &x.narrow(3, rot, dh - rot)?], 3)?
    })
}

/// Additive attention mask `[batch, 1, q, k]`: causal, padding, optional sliding window.
fn attention_mask(
    q_pos: &[Vec<u32>],
    key_pos: &[Vec<u32>],
    key_mask: &[Vec<bool>],
    past: usize,
    window: Option<usize>,
) -> MaskData {
    let (b, s, t) = (q_pos.len(), q_pos[0].len(), key_pos[0].len());
    let mut m = vec![f32::NEG_INFINITY; b * s * t];
    for r in 0..b {
        for i in 0..s {
            let qi = past + i;
            let row = &mut m[(r * s + i) * t..(r * s + i + 1) * t];
            let mut any = false;
            for (j, slot) in row.iter_mut().enumerate().take(qi + 1) {
                let in_window =
                    window.is_none_or(|w| (q_pos[r][i] as i64 - key_pos[r][j] as i64) < w as i64);
                if key_mask[r][j] && in_window {
                    *slot = 0.0;
                    any = true;
                }
            }
            // A padding query sees no real key; let it see itself so softmax stays finite.
            if !any {
                row[qi] = 0.0;
            }
        }
    }
    MaskData {
        data: std::sync::Arc::new(m),
        queries: s,
        keys: t,
    }
}

impl MaskData {
    fn tensor(&self) -> Result<Tensor> {
        let b = self.data.len() / (self.queries * self.keys);
        Ok(Tensor::from_vec(
            self.data.to_vec(),
            (b, 1, self.queries, self.keys),
            &Device::Cpu,
        )?)
    }
}

impl Transformer {
    /// A model from a config and weights that match it (the loaders check the shapes).
    pub fn new(config: ModelConfig, weights: ModelWeights) -> Self {
        Transformer { config, weights }
    }

    /// One forward pass with the options in `run`. The batch is checked first: equal
    /// lengths, ids below `d_vocab` ([`ModelError::TokenOutOfRange`]), at most `n_ctx`
    /// positions ([`ModelError::TooLong`]).
    pub fn run(&self, batch: &Batch, run: &mut Run<'_>) -> Result<RunOutput> {
        self.forward(batch, run, None)
    }

    /// A forward pass that reads and extends `kv` (generation).
    pub fn run_cached(
        &self,
        batch: &Batch,
        run: &mut Run<'_>,
        kv: &mut KvCache,
    ) -> Result<RunOutput> {
        self.forward(batch, run, Some(kv))
    }

    fn norm(&self, x: &Tensor, n: &Norm, prefix: &str, ctx: &mut Ctx) -> Result<Tensor> {
        let eps = self.config.norm_eps;
        let scale_name = || format!("{prefix}.hook_scale");
        let composite = ctx.differentiable || (ctx.active() && ctx.wants(&scale_name()));
        let out = if !composite {
            match (&self.config.norm, &n.bias) {
                (NormKind::LayerNorm, Some(b)) => {
                    candle_nn::ops::layer_norm(&x.contiguous()?, &n.weight, b, eps as f32)?
                }
                (NormKind::LayerNorm, None) => candle_nn::ops::layer_norm(
                    &x.contiguous()?,
                    &n.weight,
                    &n.weight.zeros_like()?,
                    eps as f32,
                )?,
                _ => candle_nn::ops::rms_norm(&x.contiguous()?, &n.weight, eps as f32)?,
            }
        } else {
            let (centred, scale) = self.norm_parts(x)?;
            let scale = ctx.hook(scale_name, scale)?;
            scale_norm(&centred, &scale, n)?
        };
        ctx.hook(|| format!("{prefix}.hook_normalized"), out)
    }

    /// The centred input (LayerNorm) or the input (RMSNorm), and the per-row scale.
    fn norm_parts(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let centred = match self.config.norm {
            NormKind::LayerNorm => x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?,
            _ => x.clone(),
        };
        let scale = (centred.sqr()?.mean_keepdim(D::Minus1)? + self.config.norm_eps)?.sqrt()?;
        Ok((centred, scale))
    }

    /// A norm with no hook points (the per-head copies of the attention input).
    fn norm_quiet(&self, x: &Tensor, n: &Norm) -> Result<Tensor> {
        let (centred, scale) = self.norm_parts(x)?;
        scale_norm(&centred, &scale, n)
    }

    /// TransformerLens' per-head copies of the attention input, normalised by ln1:
    /// `hook_attn_in` (when every query head has its own KV head) and
    /// `hook_q_input`/`hook_k_input`/`hook_v_input`, so one head's input can be
    /// patched. Built only when one of them is hooked.
    fn split_inputs(
        &self,
        l: usize,
        w: &BlockWeights,
        resid: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<Option<[Tensor; 3]>> {
        let c = &self.config;
        if !ctx.active() {
            return Ok(None);
        }
        let name = |n: &str| format!("blocks.{l}.{n}");
        let shared = c.n_kv_heads == c.n_heads;
        let want_in = shared && ctx.wants(&name("hook_attn_in"));
        let want_split = ["hook_q_input", "hook_k_input", "hook_v_input"]
            .iter()
            .any(|n| ctx.wants(&name(n)));
        if !want_in && !want_split {
            return Ok(None);
        }
        let (b, s, d) = resid.dims3()?;
        let repeat = |n: usize| -> Result<Tensor> {
            Ok(resid
                .unsqueeze(2)?
                .broadcast_as((b, s, n, d))?
                .contiguous()?)
        };
        let attn_in = if shared {
            Some(ctx.hook(|| name("hook_attn_in"), repeat(c.n_heads)?)?)
        } else {
            None
        };
        let mut inputs = Vec::with_capacity(3);
        for (hook, heads) in [
            ("hook_q_input", c.n_heads),
            ("hook_k_input", c.n_kv_heads),
            ("hook_v_input", c.n_kv_heads),
        ] {
            let x = match &attn_in {
                Some(a) => a.clone(),
                None => repeat(heads)?,
            };
            let x = ctx.hook(|| name(hook), x)?;
            inputs.push(match &w.ln1 {
                Some(n) => self.norm_quiet(&x, n)?,
                None => x,
            });
        }
        let [q, k, v]: [Tensor; 3] = inputs.try_into().map_err(|_| {
            ModelError::BadInput("internal: three attention inputs expected".into())
        })?;
        Ok(Some([q, k, v]))
    }

    fn activation(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.config.activation {
            Activation::Silu => x.silu()?,
            Activation::GeluTanh => x.gelu()?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::Relu => x.relu()?,
        })
    }

    fn forward(
        &self,
        batch: &Batch,
        run: &mut Run<'_>,
        mut kv: Option<&mut KvCache>,
    ) -> Result<RunOutput> {
        let c = &self.config;
        let past = kv.as_ref().map_or(0, |k| k.len());
        batch.validate(c, past)?;
        let (b, s) = (batch.batch_size(), batch.seq_len());
        if let Some(kv) = kv.as_ref() {
            if !kv.is_empty() && kv.key_mask.len() != b {
                return Err(ModelError::BadInput(format!(
                    "KV cache holds {} sequences, the batch has {b}",
                    kv.key_mask.len()
                )));
            }
        }
        let n_layers = match run.stop_at_layer {
            Some(l) if l > c.n_layers => {
                return Err(ModelError::BadInput(format!(
                    "stop_at_layer {l} is past the last block (the model has {} layers)",
                    c.n_layers
                )))
            }
            Some(l) => l,
            None => c.n_layers,
        };
        let real: Vec<Vec<bool>> = batch
            .attention_mask
            .clone()
            .unwrap_or_else(|| vec![vec![true; s]; b]);
        // Positions count real tokens only, so left padding changes nothing.
        let positions: Vec<Vec<u32>> = match &batch.position_ids {
            Some(p) => p.clone(),
            None => (0..b)
                .map(|r| {
                    let mut next = kv
                        .as_ref()
                        .and_then(|k| {
                            k.key_pos.get(r).and_then(|kp| {
                                kp.iter()
                                    .zip(&k.key_mask[r])
                                    .filter(|(_, &m)| m)
                                    .map(|(&p, _)| p + 1)
                                    .max()
                            })
                        })
                        .unwrap_or(0);
                    real[r]
                        .iter()
                        .map(|&m| {
                            let p = next;
                            if m {
                                next += 1;
                            }
                            p
                        })
                        .collect()
                })
                .collect(),
        };
        if let Some(p) = positions.iter().flatten().find(|&&p| p as usize >= c.n_ctx) {
            return Err(ModelError::TooLong {
                len: *p as usize + 1,
                n_ctx: c.n_ctx,
            });
        }
        let (key_pos, key_mask): (Vec<Vec<u32>>, Vec<Vec<bool>>) = match kv.as_ref() {
            Some(k) if !k.is_empty() => (
                k.key_pos
                    .iter()
                    .zip(&positions)
                    .map(|(a, n)| a.iter().chain(n).copied().collect())
                    .collect(),
                k.key_mask
                    .iter()
                    .zip(&real)
                    .map(|(a, n)| a.iter().chain(n).copied().collect())
                    .collect(),
            ),
            _ => (positions.clone(), real.clone()),
        };
        let full_mask = attention_mask(&positions, &key_pos, &key_mask, past, None);
        let sliding_mask = match c.sliding_window {
            Some(w) if c.sliding_layers.iter().any(|&x| x) => Some(attention_mask(
                &positions,
                &key_pos,
                &key_mask,
                past,
                Some(w),
            )),
            _ => None,
        };
        // Global layers use the (possibly rescaled) base; Gemma 3's local layers their own.
        let rope = match c.rotary_dim {
            Some(rot) => Some(rotary_tables(
                c.rope_theta,
                &c.rope_scaling,
                rot,
                &positions,
            )?),
            None => None,
        };
        let rope_local = match (c.rotary_dim, c.rope_local_theta) {
            (Some(rot), Some(theta)) => Some(rotary_tables(
                theta,
                &RopeScaling::Default,
                rot,
                &positions,
            )?),
            _ => None,
        };

        let mut ctx = Ctx {
            hooks: &mut run.hooks,
            cache_filter: run.cache.as_ref(),
            grad_filter: run.grads.as_ref(),
            cache: BTreeMap::new(),
            grad_vars: Vec::new(),
            differentiable: run.grads.is_some(),
            // generation's passes; the others keep the GEMM's numbers, which analyses
            // compare exactly between runs of different shapes
            decoding: kv.is_some(),
        };

        if run.start_at_layer.is_some() && kv.is_some() {
            return Err(ModelError::BadInput(
                "start_at_layer cannot be combined with a KV cache".into(),
            ));
        }
        let first_layer = match &run.start_at_layer {
            Some((l, _)) if *l > n_layers => {
                return Err(ModelError::BadInput(format!(
                    "start_at_layer {l} is past the last layer run ({n_layers})"
                )))
            }
            Some((l, _)) => *l,
            None => 0,
        };
        let mut resid = match &run.start_at_layer {
            Some((_, r)) => {
                if r.dims() != [b, s, c.d_model] {
                    return Err(ModelError::BadInput(format!(
                        "start_at_layer residual has shape {:?}, expected {:?}",
                        r.dims(),
                        [b, s, c.d_model]
                    )));
                }
                r.clone()
            }
            None => self.embed(batch, &positions, &mut ctx)?,
        };

        for l in first_layer..n_layers {
            // f32 weights of this layer only (expanded now if stored in another precision)
            let block = self.weights.blocks[l].get()?;
            let w: &BlockWeights = &block;
            resid = ctx.hook(|| format!("blocks.{l}.hook_resid_pre"), resid)?;
            let split = self.split_inputs(l, w, &resid, &mut ctx)?;
            let x = match &w.ln1 {
                Some(n) => self.norm(&resid, n, &format!("blocks.{l}.ln1"), &mut ctx)?,
                None => resid.clone(),
            };
            let (mask, layer_rope) = if c.sliding_layers[l] {
                (
                    sliding_mask.as_ref().unwrap_or(&full_mask),
                    rope_local.as_ref().or(rope.as_ref()),
                )
            } else {
                (&full_mask, rope.as_ref())
            };
            let layer_kv = kv.as_mut().map(|k| &mut k.layers[l]);
            let input = AttnInput {
                block: w,
                shared: x,
                per_head: split,
            };
            let mut attn = self.attention(l, input, mask, layer_rope, layer_kv, &mut ctx)?;
            if let Some(n) = &w.ln1_post {
                attn = self.norm(&attn, n, &format!("blocks.{l}.ln1_post"), &mut ctx)?;
            }
            let attn = ctx.hook(|| format!("blocks.{l}.hook_attn_out"), attn)?;
            let mlp_in = if c.parallel_residual {
                resid.clone()
            } else {
                resid = ctx.hook(|| format!("blocks.{l}.hook_resid_mid"), (resid + &attn)?)?;
                resid.clone()
            };
            let mlp_in = ctx.hook(|| format!("blocks.{l}.hook_mlp_in"), mlp_in)?;
            let x = match &w.ln2 {
                Some(n) => self.norm(&mlp_in, n, &format!("blocks.{l}.ln2"), &mut ctx)?,
                None => mlp_in,
            };
            let mut mlp = self.mlp(l, w, &x, &mut ctx)?;
            if let Some(n) = &w.ln2_post {
                mlp = self.norm(&mlp, n, &format!("blocks.{l}.ln2_post"), &mut ctx)?;
            }
            let mlp = ctx.hook(|| format!("blocks.{l}.hook_mlp_out"), mlp)?;
            resid = if c.parallel_residual {
                ((resid + attn)? + mlp)?
            } else {
                (resid + mlp)?
            };
            resid = ctx.hook(|| format!("blocks.{l}.hook_resid_post"), resid)?;
        }

        if let Some(kv) = kv.as_mut() {
            kv.key_pos = key_pos;
            kv.key_mask = key_mask;
        }

        let stopped = run.stop_at_layer.is_some();
        let logits = if stopped || run.logits == LogitsMode::None {
            None
        } else {
            let x = match run.logits {
                LogitsMode::Last => resid.narrow(1, s - 1, 1)?,
                _ => resid.clone(),
            };
            let x = self.norm(&x, &self.weights.ln_final, "ln_final", &mut ctx)?;
            let (bb, ss, d) = x.dims3()?;
            let mut logits =
                self.unembed(&x.reshape((bb * ss, d))?, ctx.differentiable, ctx.decoding)?;
            if let Some(bias) = &self.weights.unembed_bias {
                logits = logits.broadcast_add(bias)?;
            }
            let mut logits = logits.reshape((bb, ss, c.d_vocab))?;
            if let Some(cap) = c.final_softcap {
                logits = ((logits / cap)?.tanh()? * cap)?;
            }
            Some(logits)
        };
        Ok(RunOutput {
            logits,
            residual: resid,
            cache: ctx.cache,
            grad_vars: ctx.grad_vars,
        })
    }

    /// `x [n, d_model] · W_Uᵀ`. A stored (bf16, quantized) unembedding is expanded a
    /// slice of the vocabulary at a time, straight into the logits buffer.
    fn unembed(&self, x: &Tensor, differentiable: bool, decoding: bool) -> Result<Tensor> {
        let u = &self.weights.unembed;
        if let StoredTensor::Dense(w) = u {
            if w.dtype() == DType::F32 {
                let (n, d) = x.dims2()?;
                if decoding && !differentiable && n <= crate::kernels::FEW_ROWS && w.is_contiguous()
                {
                    // decoding: a few rows against the whole vocabulary, without packing it
                    let vocab = w.dim(0)?;
                    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                    let (storage, layout) = w.storage_and_layout();
                    let candle_core::Storage::Cpu(cpu) = &*storage else {
                        return Ok(x.matmul(&w.t()?)?);
                    };
                    let all = cpu.as_slice::<f32>()?;
                    let ws = &all[layout.start_offset()..layout.start_offset() + vocab * d];
                    let mut logits = vec![0f32; n * vocab];
                    crate::kernels::few_rows_nt(&mut logits, &xs, n, d, ws, vocab);
                    return Ok(Tensor::from_vec(logits, (n, vocab), &Device::Cpu)?);
                }
                return Ok(x.matmul(&w.t()?)?);
            }
        }
        if differentiable {
            // gradients must flow through the logits: candle's matmul, on the whole matrix
            return Ok(x.matmul(&u.expand()?.t()?)?);
        }
        let (n, d) = x.dims2()?;
        let vocab = u.dims()[0];
        let x = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut logits = vec![0f32; n * vocab];
        const CHUNK_ROWS: usize = 8192;
        let mut start = 0;
        while start < vocab {
            let len = CHUNK_ROWS.min(vocab - start);
            let w = u
                .expand_rows(start, len)?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            crate::kernels::gemm_nt_into(&mut logits, vocab, start, &x, n, d, &w, len);
            start += len;
        }
        Ok(Tensor::from_vec(logits, (n, vocab), &Device::Cpu)?)
    }

    fn embed(&self, batch: &Batch, positions: &[Vec<u32>], ctx: &mut Ctx) -> Result<Tensor> {
        let c = &self.config;
        let (b, s) = (batch.batch_size(), batch.seq_len());
        let ids: Vec<u32> = batch.tokens.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(ids, b * s, &Device::Cpu)?;
        let rows = match &self.weights.embed {
            StoredTensor::Dense(t) => t.index_select(&ids, 0)?,
            q => q.expand()?.index_select(&ids, 0)?,
        };
        let mut embed = to_f32(&rows)?.reshape((b, s, c.d_model))?;
        if let Some(scale) = c.embed_scale {
            // HF casts the normaliser to the model dtype before multiplying.
            embed = (embed * (scale as f32) as f64)?;
        }
        let mut resid = ctx.hook(|| "hook_embed".into(), embed)?;
        if let Some(wpe) = &self.weights.pos_embed {
            let p: Vec<u32> = positions.iter().flatten().copied().collect();
            let p = Tensor::from_vec(p, b * s, &Device::Cpu)?;
            let pos = wpe.index_select(&p, 0)?.reshape((b, s, c.d_model))?;
            let pos = ctx.hook(|| "hook_pos_embed".into(), pos)?;
            resid = (resid + pos)?;
        }

        Ok(resid)
    }

    fn attention(
        &self,
        l: usize,
        input: AttnInput<'_>,
        mask: &MaskData,
        rope: Option<&Rope>,
        layer_kv: Option<&mut Option<LayerKv>>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let c = &self.config;
        let AttnInput {
            block: w,
            shared: x,
            per_head: split,
        } = input;
        let (b, s, d) = x.dims3()?;
        let (h, kvh, dh) = (c.n_heads, c.n_kv_heads, c.d_head);
        let per_head = split.is_some();
        let qkv = match &split {
            None => linear(
                &x.reshape((b * s, d))?,
                &w.qkv,
                ctx.differentiable,
                ctx.decoding,
            )?,
            Some([qx, kx, vx]) => Tensor::cat(
                &[
                    per_head_linear(qx, &w.q()?)?,
                    per_head_linear(kx, &w.k()?)?,
                    per_head_linear(vx, &w.v()?)?,
                ],
                1,
            )?,
        };
        let hooked = |ctx: &Ctx, names: &[&str]| {
            ctx.active()
                && names
                    .iter()
                    .any(|n| ctx.wants(&format!("blocks.{l}.attn.{n}")))
        };
        let (q, mut k, mut v) = if !ctx.differentiable
            && !per_head
            && c.qk_norm.is_none()
            && !hooked(
                ctx,
                &["hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k"],
            ) {
            // One pass from the fused GEMM output to rotated per-head layout.
            let op = RopeSplit {
                batch: b,
                n_heads: h,
                n_kv_heads: kvh,
                d_head: dh,
                rope: rope.map(|r| r.data.clone()),
            };
            let heads = qkv.apply_op1_no_bwd(&op)?;
            (
                heads.narrow(1, 0, h)?,
                heads.narrow(1, h, kvh)?,
                heads.narrow(1, h + kvh, kvh)?,
            )
        } else {
            let q = qkv.narrow(1, 0, h * dh)?;
            let k = qkv.narrow(1, h * dh, kvh * dh)?;
            let (q, k) = match (&w.q_norm, &w.k_norm) {
                (Some(qn), Some(kn)) => (
                    self.qk_norm(l, "q_norm", q, qn, (b, s, h, dh), ctx)?,
                    self.qk_norm(l, "k_norm", k, kn, (b, s, kvh, dh), ctx)?,
                ),
                _ => (q.reshape((b, s, h, dh))?, k.reshape((b, s, kvh, dh))?),
            };
            let q = ctx.hook(|| format!("blocks.{l}.attn.hook_q"), q)?;
            let k = ctx.hook(|| format!("blocks.{l}.attn.hook_k"), k)?;
            let v = ctx.hook(
                || format!("blocks.{l}.attn.hook_v"),
                qkv.narrow(1, (h + kvh) * dh, kvh * dh)?
                    .reshape((b, s, kvh, dh))?,
            )?;
            let (q, k) = match (rope, c.rotary_dim) {
                (Some(r), Some(rot)) => (
                    ctx.hook(
                        || format!("blocks.{l}.attn.hook_rot_q"),
                        apply_rotary(&q, &r.cos, &r.sin, rot)?,
                    )?,
                    ctx.hook(
                        || format!("blocks.{l}.attn.hook_rot_k"),
                        apply_rotary(&k, &r.cos, &r.sin, rot)?,
                    )?,
                ),
                _ => (q, k),
            };
            (
                q.transpose(1, 2)?.contiguous()?,
                k.transpose(1, 2)?.contiguous()?,
                v.transpose(1, 2)?.contiguous()?,
            )
        };
        if let Some(slot) = layer_kv {
            let layer = match slot.take() {
                Some(mut layer) => {
                    layer.append(&k, &v)?;
                    layer
                }
                None => LayerKv::new(k, v)?,
            };
            // the filled positions, views of the cache (the fused kernel reads them as
            // they are; the other path makes them contiguous)
            (k, v) = slot.insert(layer).keys_values()?;
        }
        let t = k.dim(2)?;
        let g = h / kvh;
        let past = t - s;
        let z = if !ctx.differentiable && !hooked(ctx, &["hook_attn_scores", "hook_pattern"]) {
            let op = FusedAttention {
                mask: mask.clone(),
                scale: c.attn_scale as f32,
                softcap: c.attn_softcap.map(|x| x as f32),
                past,
            };
            q.apply_op3_no_bwd(&k, &v, &op)?
        } else {
            // Query heads sharing a KV head are stacked along rows: no copy of K or V per head.
            let q = q.contiguous()?;
            let scores = q
                .reshape((b, kvh, g * s, dh))?
                .matmul(&k.contiguous()?.t()?)?
                .reshape((b, h, s, t))?;
            let mut scores = (scores * c.attn_scale)?;
            if let Some(cap) = c.attn_softcap {
                scores = ((scores / cap)?.tanh()? * cap)?;
            }
            let scores = ctx.hook(
                || format!("blocks.{l}.attn.hook_attn_scores"),
                scores.broadcast_add(&mask.tensor()?)?,
            )?;
            let pattern = ctx.hook(
                || format!("blocks.{l}.attn.hook_pattern"),
                softmax(&scores, ctx.differentiable)?,
            )?;
            pattern
                .contiguous()?
                .reshape((b, kvh, g * s, t))?
                .matmul(&v.contiguous()?)?
                .reshape((b, h, s, dh))?
        };
        let z = ctx.hook(|| format!("blocks.{l}.attn.hook_z"), z.transpose(1, 2)?)?;
        if ctx.active() && ctx.wants(&format!("blocks.{l}.attn.hook_result")) {
            // each head's output z_h · W_O,hᵀ before the sum, so one head can be edited
            let wo =
                w.o.weight
                    .reshape((d, h, dh))?
                    .permute((1, 2, 0))?
                    .contiguous()?;
            let zh = z
                .permute((2, 0, 1, 3))?
                .contiguous()?
                .reshape((h, b * s, dh))?;
            let result = zh
                .matmul(&wo)?
                .reshape((h, b, s, d))?
                .permute((1, 2, 0, 3))?
                .contiguous()?;
            let result = ctx.hook(|| format!("blocks.{l}.attn.hook_result"), result)?;
            let out = result.sum(2)?;
            return Ok(match &w.o.bias {
                Some(bias) => out.broadcast_add(bias)?,
                None => out,
            });
        }
        linear(
            &z.contiguous()?.reshape((b * s, h * dh))?,
            &w.o,
            ctx.differentiable,
            ctx.decoding,
        )?
        .reshape((b, s, d))
        .map_err(Into::into)
    }

    /// RMSNorm of queries or keys `[b s, heads d_head]` per head or across heads, as
    /// `[b, s, heads, d_head]` (hook points `blocks.L.attn.q_norm.*`).
    fn qk_norm(
        &self,
        l: usize,
        which: &str,
        x: Tensor,
        n: &Norm,
        shape: (usize, usize, usize, usize),
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let prefix = format!("blocks.{l}.attn.{which}");
        Ok(match self.config.qk_norm {
            Some(QkNorm::AllHeads) => self
                .norm(
                    &x.reshape((shape.0, shape.1, shape.2 * shape.3))?,
                    n,
                    &prefix,
                    ctx,
                )?
                .reshape(shape)?,
            _ => self.norm(&x.reshape(shape)?, n, &prefix, ctx)?,
        })
    }

    fn mlp(&self, l: usize, w: &BlockWeights, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let m = self.config.d_mlp;
        let x2 = x.reshape((b * s, d))?;
        let proj = linear(&x2, &w.mlp_in, ctx.differentiable, ctx.decoding)?;
        let post = if w.gated {
            let hooked = ctx.active()
                && (ctx.wants(&format!("blocks.{l}.mlp.hook_pre"))
                    || ctx.wants(&format!("blocks.{l}.mlp.hook_pre_linear")));
            if self.config.activation == Activation::Silu && !ctx.differentiable && !hooked {
                proj.apply_op1_no_bwd(&SiluMulPacked)?.reshape((b, s, m))?
            } else {
                let pre = ctx.hook(
                    || format!("blocks.{l}.mlp.hook_pre"),
                    proj.narrow(1, 0, m)?.reshape((b, s, m))?,
                )?;
                let lin = ctx.hook(
                    || format!("blocks.{l}.mlp.hook_pre_linear"),
                    proj.narrow(1, m, m)?.reshape((b, s, m))?,
                )?;
                (self.activation(&pre)? * lin)?
            }
        } else {
            let pre = ctx.hook(
                || format!("blocks.{l}.mlp.hook_pre"),
                proj.reshape((b, s, m))?,
            )?;
            self.activation(&pre)?
        };
        let post = ctx.hook(|| format!("blocks.{l}.mlp.hook_post"), post)?;
        Ok(linear(
            &post.reshape((b * s, m))?,
            &w.mlp_out,
            ctx.differentiable,
            ctx.decoding,
        )?
        .reshape((b, s, d))?)
    }
}

/// f32 everywhere: BF16 has no CPU GEMM in candle and f16 loses the precision
/// interpretability needs.
pub const RUNTIME_DTYPE: DType = DType::F32;
