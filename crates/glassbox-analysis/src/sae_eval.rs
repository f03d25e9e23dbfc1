//! Evaluating a dictionary (SAE or transcoder) on a model: how sparse it is, how well it
//! reconstructs, and how much of the model's behaviour survives when its reconstruction
//! is spliced into the forward pass.
//!
//! Definitions (as the field uses them):
//! - L0 = mean over tokens of #(f > 0).
//! - FVU = E‖x − x̂‖² / Σ_d Var(x_d), variance about the mean over the evaluated tokens;
//!   explained variance = 1 − FVU. For a transcoder `x` is the true activation at its
//!   output hook.
//! - dead: never fired over the evaluated tokens; dense: fired on more than 10 % of them;
//!   the density histogram is over log10(freq + 1e-10).
//! - CE loss recovered = (CE_zero − CE_spliced) / (CE_zero − CE_clean); KL recovered =
//!   1 − KL(clean‖spliced) / KL(clean‖zero), token-averaged. "Spliced" replaces the
//!   (output) hook's activation by the reconstruction; "zero" sets it to zero.
//!
//! Which tokens count is the model's [`RowRule`] — the one training and the feature store
//! use: position 0 of every window (the attention sink) and special tokens (BOS/EOS,
//! also between packed documents) are left out of every statistic (reconstruction,
//! sparsity, CE, KL) and are never spliced or ablated: they keep their true activation in
//! every pass. The CE is scored at the kept positions that have a next token.

use crate::metric::log_softmax;
use crate::{bad, Result};
use candle_core::{DType, Tensor, D};
use glassbox_model::hooks::{hook_points, HookLayout};
use glassbox_model::{Batch, Edit, HookFilter, Intervention, RowRule, Run, Transformer};
use glassbox_sae::Dictionary;
use serde::Serialize;

/// A feature is dense when it fires on more than this fraction of tokens.
pub const DENSE_THRESHOLD: f64 = 0.1;
/// Added to firing frequencies before log10 (so dead features land at −10).
pub const DENSITY_EPSILON: f64 = 1e-10;

/// Runs a dictionary on a batch of vectors `x` `[.., d_in]` (any float dtype): feature
/// activations `[.., d_sae]` and the reconstruction / prediction `[.., d_out]`. Refuses a
/// wrong width and NaN or infinite entries.
pub fn apply_dictionary(dict: &Dictionary, x: &Tensor) -> Result<(Tensor, Tensor)> {
    let width = x.dims().last().copied();
    if width != Some(dict.d_in) {
        return Err(bad(format!(
            "x has shape {:?} (width {}); this dictionary reads vectors of width d_in = {}",
            x.dims(),
            width.map_or("none".to_string(), |w| w.to_string()),
            dict.d_in
        )));
    }
    let x = x.to_dtype(DType::F32)?;
    let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let bad_count = values.iter().filter(|v| !v.is_finite()).count();
    if bad_count > 0 {
        let first = values.iter().position(|v| !v.is_finite()).unwrap_or(0);
        return Err(bad(format!(
            "x holds {bad_count} NaN or infinite value(s) (the first in row {}, column {})",
            first / dict.d_in,
            first % dict.d_in
        )));
    }
    let f = dict.encode(&x)?;
    let out = dict.decode(&f, Some(&x))?;
    Ok((f, out))
}

/// Where a dictionary reads and writes in a model.
#[derive(Debug, Clone, Serialize)]
pub struct Hooks {
    /// the hook the encoder reads
    pub hook_in: String,
    /// the hook the reconstruction replaces (= `hook_in` for an SAE; a transcoder's target)
    pub hook_out: String,
    /// the dictionary is a transcoder (its output hook differs from its input hook)
    pub transcoder: bool,
}

/// The width of one hook point's vectors (heads flattened for per-head hooks).
fn hook_width(model: &Transformer, hook: &str) -> Result<usize> {
    if hook.contains('*') || hook.contains(',') {
        return Err(bad(format!(
            "`{hook}` is a pattern; a dictionary is evaluated at one hook point"
        )));
    }
    // an unknown name gets the runtime's "did you mean" message
    HookFilter::parse(hook, &model.config)?;
    let info = hook_points(&model.config)
        .into_iter()
        .find(|h| h.name == hook)
        .ok_or_else(|| bad(format!("`{hook}` is not a hook point of this model")))?;
    match HookLayout::of(hook) {
        HookLayout::Stream | HookLayout::PerHead => info.row_width().ok_or_else(|| {
            bad(format!(
                "cannot tell the width of `{hook}` from {:?}",
                info.shape_strings()
            ))
        }),
        HookLayout::Pattern => Err(bad(format!(
            "`{hook}` is an attention pattern; a dictionary reads [batch, pos, width] or per-head activations"
        ))),
    }
}

/// Resolves the hooks a dictionary reads and replaces (`hook` and `hook_out` override the
/// dictionary's own `hook_name` / `hook_name_out`) and checks their widths.
pub fn resolve_hooks(
    model: &Transformer,
    dict: &Dictionary,
    hook: Option<&str>,
    hook_out: Option<&str>,
) -> Result<Hooks> {
    let hook_in = match (hook, &dict.hook_name) {
        (Some(h), _) => h.to_string(),
        (None, Some(h)) => h.clone(),
        (None, None) => {
            return Err(bad(
                "the dictionary names no hook (no `hook_name` in its cfg.json); give the hook it reads with --hook",
            ))
        }
    };
    let transcoder = dict.is_transcoder();
    let hook_out = if transcoder {
        match (hook_out, &dict.hook_name_out) {
            (Some(h), _) => h.to_string(),
            (None, Some(h)) => h.clone(),
            (None, None) => return Err(bad(
                "this transcoder names no output hook (no `hook_name_out` in its cfg.json); give the hook it predicts with --hook-out",
            )),
        }
    } else {
        match hook_out {
            Some(h) if h != hook_in => {
                return Err(bad(format!(
                    "--hook-out {h} is for transcoders; this dictionary is an SAE and reconstructs its input hook {hook_in}"
                )))
            }
            _ => hook_in.clone(),
        }
    };
    let w_in = hook_width(model, &hook_in)?;
    if w_in != dict.d_in {
        return Err(bad(format!(
            "width mismatch: the dictionary reads vectors of width d_in = {}, but {hook_in} has width {w_in}",
            dict.d_in
        )));
    }
    let w_out = hook_width(model, &hook_out)?;
    if w_out != dict.d_out {
        return Err(bad(format!(
            "width mismatch: the dictionary writes vectors of width d_out = {}, but {hook_out} has width {w_out}",
            dict.d_out
        )));
    }
    Ok(Hooks {
        hook_in,
        hook_out,
        transcoder,
    })
}

/// How [`evaluate`] runs. `Default`: the dictionary's own hooks, 4 windows per batch,
/// 20 histogram bins, and [`RowRule::default`] (position 0 left out, no special tokens).
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// the hook the encoder reads (default: the dictionary's `hook_name`)
    pub hook: Option<String>,
    /// a transcoder's output hook (default: the dictionary's `hook_name_out`)
    pub hook_out: Option<String>,
    /// windows per forward pass (memory grows with batch × window × vocabulary)
    pub batch_windows: usize,
    /// bins of the density histogram over log10(freq + 1e-10) in [−10, 0]
    pub histogram_bins: usize,
    /// which positions count: pass [`RowRule::for_model`], as training does (the default
    /// leaves out position 0 only)
    pub rows: RowRule,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            hook: None,
            hook_out: None,
            batch_windows: 4,
            histogram_bins: 20,
            rows: RowRule::default(),
        }
    }
}

/// Counts of features per bin of log10(firing frequency + 1e-10); bin `i` covers
/// `[log10_min + i·w, log10_min + (i+1)·w)`, the last bin includes `log10_max`.
#[derive(Debug, Clone, Serialize)]
pub struct DensityHistogram {
    /// the low end of the first bin (−10)
    pub log10_min: f64,
    /// the high end of the last bin (0: a feature that fires on every token)
    pub log10_max: f64,
    /// added to each frequency before log10 ([`DENSITY_EPSILON`])
    pub epsilon: f64,
    /// features per bin; they sum to `d_sae`
    pub counts: Vec<u64>,
}

impl DensityHistogram {
    /// The histogram of per-feature firing counts over `tokens` tokens, in `bins` bins
    /// (at least 1). A dead feature lands in the first bin.
    pub fn of(firing_counts: &[u64], tokens: u64, bins: usize) -> Self {
        let (lo, hi) = (-10.0, 0.0);
        let bins = bins.max(1);
        let mut counts = vec![0u64; bins];
        for &c in firing_counts {
            let freq = c as f64 / tokens.max(1) as f64;
            let v = (freq + DENSITY_EPSILON).log10();
            let i = ((v - lo) / (hi - lo) * bins as f64).floor();
            counts[(i.max(0.0) as usize).min(bins - 1)] += 1;
        }
        DensityHistogram {
            log10_min: lo,
            log10_max: hi,
            epsilon: DENSITY_EPSILON,
            counts,
        }
    }
}

/// Every number of one evaluation. Serialises to the JSON `glassbox eval-sae` prints.
#[derive(Debug, Clone, Serialize)]
pub struct SaeEval {
    /// the hook the encoder read
    pub hook: String,
    /// the hook whose activation was reconstructed and spliced (= `hook` for an SAE)
    pub hook_out: String,
    /// the dictionary is a transcoder
    pub transcoder: bool,
    /// the dictionary's architecture (`standard`, `topk`, `jumprelu`, ...)
    pub architecture: String,
    /// input width
    pub d_in: usize,
    /// number of features
    pub d_sae: usize,
    /// output width (= `d_in` for an SAE)
    pub d_out: usize,
    /// windows evaluated
    pub windows: usize,
    /// tokens per window (including position 0)
    pub context_size: usize,
    /// tokens evaluated: the positions the row rule keeps
    pub tokens: u64,
    /// positions left out by the row rule (position 0 of every window, special tokens,
    /// massive activations)
    pub tokens_excluded: u64,
    /// of those, rows left out as massive activations (the dictionary's
    /// `metadata.glassbox_massive_norm`; 0 without one)
    pub massive_excluded: u64,
    /// the massive-activation threshold applied: (residual hook, norm)
    pub massive_norm: Option<(String, f32)>,
    /// the special token ids left out
    pub excluded_token_ids: Vec<u32>,
    /// the window over which dead / dense / density are counted, in tokens (= `tokens`)
    pub window_tokens: u64,
    /// position 0 of every window is left out of every statistic
    pub first_position_excluded: bool,
    /// left-out positions (position 0, special tokens) keep their true activation in the
    /// spliced and zero-ablated passes
    pub first_position_spliced: bool,
    /// mean number of active features per token
    pub l0: f64,
    /// E‖x − x̂‖²
    pub mse: f64,
    /// Σ_d Var(x_d) over the evaluated tokens
    pub total_variance: f64,
    /// fraction of variance unexplained: `mse / total_variance` (NaN when the variance is 0)
    pub fvu: f64,
    /// 1 − `fvu`
    pub explained_variance: f64,
    /// mean over tokens of cos(x, x̂)
    pub cosine: f64,
    /// fraction of features that never fired in `window_tokens` tokens
    pub dead_fraction: f64,
    /// fraction of features that fired on more than `dense_threshold` of the tokens
    pub dense_fraction: f64,
    /// [`DENSE_THRESHOLD`]
    pub dense_threshold: f64,
    /// the features' firing frequencies, log10-binned
    pub density_histogram: DensityHistogram,
    /// predictions scored for CE: the evaluated positions that have a next token
    pub ce_tokens: u64,
    /// mean next-token cross-entropy of the plain model, in nats
    pub ce_clean: f64,
    /// the same with the reconstruction spliced in at `hook_out`
    pub ce_spliced: f64,
    /// the same with `hook_out` set to zero at the evaluated positions
    pub ce_zero_ablated: f64,
    /// (CE_zero − CE_spliced) / (CE_zero − CE_clean): 1 is as good as the model, 0 no
    /// better than zero ablation (NaN when the two baselines are equal)
    pub ce_recovered: f64,
    /// positions scored for KL: every evaluated token
    pub kl_tokens: u64,
    /// mean KL(clean ‖ spliced)
    pub kl_spliced: f64,
    /// mean KL(clean ‖ zero-ablated)
    pub kl_zero_ablated: f64,
    /// 1 − KL_spliced / KL_zero (NaN when KL_zero is 0)
    pub kl_recovered: f64,
    /// per feature: on how many of the evaluated tokens it fired
    #[serde(skip)]
    pub firing_counts: Vec<u64>,
}

/// Running sums over batches.
struct Acc {
    tokens: u64,
    active: f64,
    sq_err: f64,
    cos: f64,
    // per-dimension mean and sum of squared deviations, merged batch by batch (Chan)
    mean: Vec<f64>,
    m2: Vec<f64>,
    fired: Vec<u64>,
    ce: [f64; 3],
    ce_tokens: u64,
    kl: [f64; 2],
}

impl Acc {
    fn add_reconstruction(&mut self, x: &[f32], xh: &[f32], d: usize) {
        let n = x.len() / d;
        if n == 0 {
            return;
        }
        let mut bmean = vec![0f64; d];
        for (row, rh) in x.chunks(d).zip(xh.chunks(d)) {
            let (mut dot, mut nx, mut nh, mut se) = (0f64, 0f64, 0f64, 0f64);
            for ((&a, &b), m) in row.iter().zip(rh).zip(bmean.iter_mut()) {
                let (a, b) = (a as f64, b as f64);
                dot += a * b;
                nx += a * a;
                nh += b * b;
                se += (a - b) * (a - b);
                *m += a;
            }
            self.sq_err += se;
            self.cos += if nx == 0.0 && nh == 0.0 {
                1.0
            } else if nx == 0.0 || nh == 0.0 {
                0.0
            } else {
                dot / (nx.sqrt() * nh.sqrt())
            };
        }
        bmean.iter_mut().for_each(|m| *m /= n as f64);
        let mut bm2 = vec![0f64; d];
        for row in x.chunks(d) {
            for ((&a, m), s) in row.iter().zip(&bmean).zip(bm2.iter_mut()) {
                let dv = a as f64 - m;
                *s += dv * dv;
            }
        }
        let (na, nb) = (self.tokens as f64, n as f64);
        let total = na + nb;
        for j in 0..d {
            let delta = bmean[j] - self.mean[j];
            self.mean[j] += delta * nb / total;
            self.m2[j] += bm2[j] + delta * delta * na * nb / total;
        }
        self.tokens += n as u64;
    }
}

/// The positions one batch of equal-length windows is scored on, by the row rule.
pub(crate) struct Scored {
    /// flat `w × s + p` of the kept positions
    rows: Tensor,
    pub n: usize,
    /// indices into `rows` of the kept positions that have a next token, and that token
    ce_at: Tensor,
    ce_targets: Tensor,
    pub m: usize,
    /// `[b s, 1]`: 1 where kept
    mask: Tensor,
    flat: usize,
}

impl Scored {
    /// `massive`: per flat position, whether the rule's massive-activation criterion
    /// leaves it out (from the clean pass: [`RowRule::massive_flags`]); empty for none.
    pub(crate) fn new(
        windows: &[Vec<u32>],
        s: usize,
        rule: &RowRule,
        massive: &[bool],
    ) -> Result<Self> {
        let dev = &candle_core::Device::Cpu;
        let rows: Vec<u32> = windows
            .iter()
            .enumerate()
            .flat_map(|(w, win)| {
                let flags = massive.get(w * s..(w + 1) * s).unwrap_or(&[]);
                rule.positions_after(win, flags)
                    .map(move |p| (w * s + p) as u32)
            })
            .collect();
        let (mut ce_at, mut targets) = (Vec::new(), Vec::new());
        for (i, &f) in rows.iter().enumerate() {
            let (w, p) = (f as usize / s, f as usize % s);
            if p + 1 < s {
                ce_at.push(i as u32);
                targets.push(windows[w][p + 1]);
            }
        }
        let flat = windows.len() * s;
        let mut mask = vec![0u8; flat];
        for &f in &rows {
            mask[f as usize] = 1;
        }
        let (n, m) = (rows.len(), ce_at.len());
        Ok(Scored {
            rows: Tensor::from_vec(rows, n, dev)?,
            n,
            ce_at: Tensor::from_vec(ce_at, m, dev)?,
            ce_targets: Tensor::from_vec(targets, (m, 1), dev)?,
            m,
            mask: Tensor::from_vec(mask, (flat, 1), dev)?,
            flat,
        })
    }

    /// The kept rows of an activation `[b, s, ...]` as `[n, width]`.
    pub(crate) fn rows_of(&self, act: &Tensor) -> Result<Tensor> {
        let width = act.elem_count() / self.flat.max(1);
        Ok(act
            .reshape((self.flat, width))?
            .index_select(&self.rows, 0)?)
    }

    /// Log-probabilities at the kept positions, `[n, vocab]`, from logits `[b, s, vocab]`.
    pub(crate) fn log_probs(&self, logits: &Tensor) -> Result<Tensor> {
        log_softmax(&self.rows_of(logits)?)
    }

    /// Σ −log p(next token) over the kept positions that have one; `lp` from `log_probs`.
    pub(crate) fn ce(&self, lp: &Tensor) -> Result<f64> {
        if self.m == 0 {
            return Ok(0.0);
        }
        let picked = lp
            .index_select(&self.ce_at, 0)?
            .gather(&self.ce_targets, 1)?;
        Ok(-(picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?))
    }

    /// `act` (`[b, s, ...]`) with the kept positions set to `rows` (`[n, width]`; zeros
    /// when `None`); left-out positions keep their true values.
    pub(crate) fn splice(&self, act: &Tensor, rows: Option<&Tensor>) -> Result<Tensor> {
        let width = act.elem_count() / self.flat.max(1);
        let flat = act.reshape((self.flat, width))?;
        let full = Tensor::zeros((self.flat, width), act.dtype(), act.device())?;
        let full = match rows {
            Some(r) => full.index_add(&self.rows, &r.to_dtype(act.dtype())?, 0)?,
            None => full,
        };
        let mask = self.mask.broadcast_as((self.flat, width))?;
        Ok(mask.where_cond(&full, &flat)?.reshape(act.dims())?)
    }
}

/// Σ over positions of KL(p ‖ q), given log p, p and log q `[b, n, V]`.
pub(crate) fn kl_sum(lp: &Tensor, p: &Tensor, lq: &Tensor) -> Result<f64> {
    let per_token = (p * (lp - lq)?)?.sum(D::Minus1)?;
    Ok(per_token
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?)
}

fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        f64::NAN
    } else {
        num / den
    }
}

/// Evaluates `dict` on `windows` (equal-length token windows, each beginning with BOS or
/// a document start) in one streaming pass: batches of `opts.batch_windows` windows,
/// three forward passes each (clean, spliced, zero-ablated). `on_batch` is called with
/// the number of windows done after each batch.
pub fn evaluate(
    model: &Transformer,
    dict: &Dictionary,
    windows: &[Vec<u32>],
    opts: &EvalOptions,
    mut on_batch: impl FnMut(usize),
) -> Result<SaeEval> {
    let hooks = resolve_hooks(model, dict, opts.hook.as_deref(), opts.hook_out.as_deref())?;
    let s = windows
        .first()
        .map(Vec::len)
        .ok_or_else(|| bad("no windows to evaluate on"))?;
    if s < 3 {
        return Err(bad(format!(
            "windows of {s} tokens are too short: position 0 is excluded and the next-token loss needs two more"
        )));
    }
    if let Some((i, w)) = windows.iter().enumerate().find(|(_, w)| w.len() != s) {
        return Err(bad(format!(
            "window {i} has {} tokens, window 0 has {s}; windows must have equal length",
            w.len()
        )));
    }
    let cfg = &model.config;
    let filter_out = HookFilter::parse(&hooks.hook_out, cfg)?;
    // The spliced and zero-ablated passes differ from the clean one only from the output
    // hook's block on: they start there from the clean pass's residual stream.
    let start = glassbox_model::hooks::layer_of(&hooks.hook_out)
        .filter(|&l| l > 0)
        .map(|l| (l, format!("blocks.{l}.hook_resid_pre")));
    let mut cached = vec![hooks.hook_in.clone(), hooks.hook_out.clone()];
    cached.extend(start.iter().map(|(_, h)| h.clone()));
    let cached = opts.rows.hooks_with_norm(&cached);
    let filter_cache = HookFilter::new(cached, cfg)?;
    let mut acc = Acc {
        tokens: 0,
        active: 0.0,
        sq_err: 0.0,
        cos: 0.0,
        mean: vec![0.0; dict.d_out],
        m2: vec![0.0; dict.d_out],
        fired: vec![0; dict.d_sae],
        ce: [0.0; 3],
        ce_tokens: 0,
        kl: [0.0; 2],
    };
    let (mut excluded, mut massive_excluded) = (0u64, 0u64);
    for chunk in windows.chunks(opts.batch_windows.max(1)) {
        let b = chunk.len();
        let batch = Batch::new(chunk.to_vec());
        // clean pass: logits and the true activations
        let clean = model.run(&batch, &mut Run::new().cache(filter_cache.clone()))?;
        let massive = opts.rows.massive_flags(&clean.cache, b * s)?;
        let scored = Scored::new(chunk, s, &opts.rows, &massive)?;
        let by_tokens = opts.rows.count(chunk);
        excluded += (b * s - scored.n) as u64;
        massive_excluded += (by_tokens - scored.n) as u64;
        if scored.n == 0 {
            on_batch(b);
            continue;
        }
        let get = |name: &str| {
            clean
                .cache
                .get(name)
                .cloned()
                .ok_or_else(|| bad(format!("hook {name} was not reached")))
        };
        let resume = |run: Run<'static>| -> Result<Run<'static>> {
            Ok(match &start {
                Some((l, h)) => run.start_at_layer(*l, get(h)?),
                None => run,
            })
        };
        let act_in = get(&hooks.hook_in)?;
        let act_out = get(&hooks.hook_out)?;
        let rows_in = scored.rows_of(&act_in)?;
        let rows_out = scored.rows_of(&act_out)?;
        let f = dict.encode(&rows_in)?;
        let recon = dict.decode(&f, Some(&rows_in))?;
        // sparsity
        let on = f.gt(0.0)?.to_dtype(DType::F32)?;
        acc.active += on.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let per_feature: Vec<f32> = on.sum(0)?.to_vec1()?;
        for (c, v) in acc.fired.iter_mut().zip(per_feature) {
            *c += v as u64;
        }
        // reconstruction
        let x: Vec<f32> = rows_out.flatten_all()?.to_vec1()?;
        let xh: Vec<f32> = recon.flatten_all()?.to_vec1()?;
        acc.add_reconstruction(&x, &xh, dict.d_out);
        // splice and zero-ablate the kept positions; the left-out ones keep their values
        let replacement = scored.splice(&act_out, Some(&recon))?;
        let zeroed = scored.splice(&act_out, None)?;
        let lp = scored.log_probs(clean.logits()?)?;
        let mut splice_run = resume(Run::new().intervene(
            filter_out.clone(),
            Intervention::new(Edit::Replace(replacement)),
        ))?;
        let mut zero_run = resume(
            Run::new().intervene(filter_out.clone(), Intervention::new(Edit::Replace(zeroed))),
        )?;
        drop(clean);
        let p = lp.exp()?;
        acc.ce[0] += scored.ce(&lp)?;
        let spliced = model.run(&batch, &mut splice_run)?;
        let lq = scored.log_probs(spliced.logits()?)?;
        drop(spliced);
        acc.ce[1] += scored.ce(&lq)?;
        acc.kl[0] += kl_sum(&lp, &p, &lq)?;
        drop(lq);
        let zeroed = model.run(&batch, &mut zero_run)?;
        let lq = scored.log_probs(zeroed.logits()?)?;
        drop(zeroed);
        acc.ce[2] += scored.ce(&lq)?;
        acc.kl[1] += kl_sum(&lp, &p, &lq)?;
        acc.ce_tokens += scored.m as u64;
        on_batch(b);
    }
    if acc.tokens == 0 {
        return Err(bad(
            "no position to evaluate: every position is position 0 or a special token",
        ));
    }
    let n = acc.tokens;
    let nf = n as f64;
    let total_variance: f64 = acc.m2.iter().sum::<f64>() / nf;
    let mse = acc.sq_err / nf;
    let fvu = ratio(mse, total_variance);
    let dead = acc.fired.iter().filter(|&&c| c == 0).count();
    let dense = acc
        .fired
        .iter()
        .filter(|&&c| c as f64 / nf > DENSE_THRESHOLD)
        .count();
    let ct = acc.ce_tokens as f64;
    let (ce_clean, ce_spliced, ce_zero) = (acc.ce[0] / ct, acc.ce[1] / ct, acc.ce[2] / ct);
    let (kl_spliced, kl_zero) = (acc.kl[0] / nf, acc.kl[1] / nf);
    Ok(SaeEval {
        hook: hooks.hook_in,
        hook_out: hooks.hook_out,
        transcoder: hooks.transcoder,
        architecture: dict.architecture.name().to_string(),
        d_in: dict.d_in,
        d_sae: dict.d_sae,
        d_out: dict.d_out,
        windows: windows.len(),
        context_size: s,
        tokens: n,
        tokens_excluded: excluded,
        massive_excluded,
        massive_norm: opts.rows.massive().map(|m| (m.hook.clone(), m.threshold)),
        excluded_token_ids: opts.rows.excluded_tokens().to_vec(),
        window_tokens: n,
        first_position_excluded: true,
        first_position_spliced: false,
        l0: acc.active / nf,
        mse,
        total_variance,
        fvu,
        explained_variance: 1.0 - fvu,
        cosine: acc.cos / nf,
        dead_fraction: dead as f64 / dict.d_sae as f64,
        dense_fraction: dense as f64 / dict.d_sae as f64,
        dense_threshold: DENSE_THRESHOLD,
        density_histogram: DensityHistogram::of(&acc.fired, n, opts.histogram_bins),
        ce_tokens: acc.ce_tokens,
        ce_clean,
        ce_spliced,
        ce_zero_ablated: ce_zero,
        ce_recovered: ratio(ce_zero - ce_spliced, ce_zero - ce_clean),
        kl_tokens: n,
        kl_spliced,
        kl_zero_ablated: kl_zero,
        kl_recovered: 1.0 - ratio(kl_spliced, kl_zero),
        firing_counts: acc.fired,
    })
}
