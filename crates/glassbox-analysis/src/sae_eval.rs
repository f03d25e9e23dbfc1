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
//! Position 0 of every window (BOS, the attention sink) is excluded from every statistic
//! and is never spliced or ablated: it keeps its true activation in every pass.

use crate::metric::log_softmax;
use crate::{bad, Result};
use candle_core::{DType, Tensor, D};
use glassbox_model::hooks::{hook_points, HookLayout};
use glassbox_model::{Batch, Edit, HookFilter, Intervention, Run, Transformer};
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
    let size = |s: &String| -> Result<usize> {
        s.rsplit('=')
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("cannot read the width of `{hook}` from {s:?}")))
    };
    match HookLayout::of(hook) {
        HookLayout::Stream => size(&info.shape[2]),
        HookLayout::PerHead => Ok(size(&info.shape[2])? * size(&info.shape[3])?),
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
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            hook: None,
            hook_out: None,
            batch_windows: 4,
            histogram_bins: 20,
        }
    }
}

/// Counts of features per bin of log10(firing frequency + 1e-10); bin `i` covers
/// `[log10_min + i·w, log10_min + (i+1)·w)`, the last bin includes `log10_max`.
#[derive(Debug, Clone, Serialize)]
pub struct DensityHistogram {
    pub log10_min: f64,
    pub log10_max: f64,
    pub epsilon: f64,
    pub counts: Vec<u64>,
}

impl DensityHistogram {
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
    pub hook: String,
    pub hook_out: String,
    pub transcoder: bool,
    pub architecture: String,
    pub d_in: usize,
    pub d_sae: usize,
    pub d_out: usize,
    /// windows evaluated
    pub windows: usize,
    /// tokens per window (including position 0)
    pub context_size: usize,
    /// tokens evaluated: windows × (context_size − 1)
    pub tokens: u64,
    /// the window over which dead / dense / density are counted, in tokens (= `tokens`)
    pub window_tokens: u64,
    /// position 0 of every window is left out of every statistic
    pub first_position_excluded: bool,
    /// position 0 keeps its true activation in the spliced and zero-ablated passes
    pub first_position_spliced: bool,
    /// mean number of active features per token
    pub l0: f64,
    /// E‖x − x̂‖²
    pub mse: f64,
    /// Σ_d Var(x_d) over the evaluated tokens
    pub total_variance: f64,
    pub fvu: f64,
    pub explained_variance: f64,
    /// mean over tokens of cos(x, x̂)
    pub cosine: f64,
    /// fraction of features that never fired in `window_tokens` tokens
    pub dead_fraction: f64,
    /// fraction of features that fired on more than `dense_threshold` of the tokens
    pub dense_fraction: f64,
    pub dense_threshold: f64,
    pub density_histogram: DensityHistogram,
    /// predictions scored for CE: positions 1..context_size−1 (each has a next token)
    pub ce_tokens: u64,
    pub ce_clean: f64,
    pub ce_spliced: f64,
    pub ce_zero_ablated: f64,
    pub ce_recovered: f64,
    /// positions scored for KL: every evaluated token
    pub kl_tokens: u64,
    /// mean KL(clean ‖ spliced)
    pub kl_spliced: f64,
    /// mean KL(clean ‖ zero-ablated)
    pub kl_zero_ablated: f64,
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

/// Sum over rows and positions 0..s−1 of −log p(next token), for log-probs of positions
/// 1..s (`lp` `[b, s−1, V]`) of windows whose tokens are `rows`.
pub(crate) fn ce_sum(lp: &Tensor, rows: &[Vec<u32>]) -> Result<f64> {
    let (b, n, _) = lp.dims3()?;
    // position p (1-based in the window) predicts token p+1; the last has no target
    let targets: Vec<u32> = rows.iter().flat_map(|r| r[2..].iter().copied()).collect();
    let idx = Tensor::from_vec(targets, (b, n - 1, 1), lp.device())?;
    let picked = lp
        .narrow(1, 0, n - 1)?
        .contiguous()?
        .gather(&idx, D::Minus1)?;
    Ok(-(picked.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?))
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
    let later: Vec<usize> = (1..s).collect();
    for chunk in windows.chunks(opts.batch_windows.max(1)) {
        let b = chunk.len();
        let batch = Batch::new(chunk.to_vec());
        // clean pass: logits and the true activations
        let clean = model.run(&batch, &mut Run::new().cache(filter_cache.clone()))?;
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
        let rows_in = act_in
            .narrow(1, 1, s - 1)?
            .reshape((b * (s - 1), dict.d_in))?;
        let rows_out = act_out
            .narrow(1, 1, s - 1)?
            .reshape((b * (s - 1), dict.d_out))?;
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
        // splice: position 0 keeps its true activation
        let replacement = Tensor::cat(
            &[
                &act_out.narrow(1, 0, 1)?.reshape((b, 1, dict.d_out))?,
                &recon.reshape((b, s - 1, dict.d_out))?,
            ],
            1,
        )?
        .reshape(act_out.dims())?;
        let lp = log_softmax(&clean.logits()?.narrow(1, 1, s - 1)?)?;
        let mut splice_run = resume(Run::new().intervene(
            filter_out.clone(),
            Intervention::new(Edit::Replace(replacement)),
        ))?;
        let mut zero_run = resume(Run::new().intervene(
            filter_out.clone(),
            Intervention::new(Edit::ZeroAblate).at_positions(later.clone()),
        ))?;
        drop(clean);
        let p = lp.exp()?;
        acc.ce[0] += ce_sum(&lp, chunk)?;
        let spliced = model.run(&batch, &mut splice_run)?;
        let lq = log_softmax(&spliced.logits()?.narrow(1, 1, s - 1)?)?;
        drop(spliced);
        acc.ce[1] += ce_sum(&lq, chunk)?;
        acc.kl[0] += kl_sum(&lp, &p, &lq)?;
        drop(lq);
        let zeroed = model.run(&batch, &mut zero_run)?;
        let lq = log_softmax(&zeroed.logits()?.narrow(1, 1, s - 1)?)?;
        drop(zeroed);
        acc.ce[2] += ce_sum(&lq, chunk)?;
        acc.kl[1] += kl_sum(&lp, &p, &lq)?;
        acc.ce_tokens += (b * (s - 2)) as u64;
        on_batch(b);
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
