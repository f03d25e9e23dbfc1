//! One training step's forward and backward passes, hand-written for the CPU.
//!
//! The encoder is always one dense GEMM. What follows depends on how many latents are
//! active: TopK and BatchTopK select k per token, so decoding, the loss and both
//! backward passes touch only the selected entries, gathered per latent so threads
//! never contend. ReLU-family steps (standard, JumpReLU, gated) do the same once their
//! density is below `dense_above`; early in training, when half the latents fire, they
//! switch to dense GEMMs, which are faster there. Buffers live in a `Workspace`
//! allocated once (the dense buffers on first use): no allocation per element.

use super::collective::Collective;
use super::config::{TrainArch, TrainConfig};
use super::matmul::{matmul, MatRef};
use super::params::Params;
use rayon::prelude::*;

/// Coefficients the schedule decides for this step.
#[derive(Clone, Copy)]
pub struct StepCoefficients<'a> {
    /// L1 (standard, gated) or L0 (jumprelu) coefficient, after warm-up
    pub sparsity: f32,
    /// latents counted as dead (AuxK for topk/batchtopk); `None` = none yet
    pub dead: Option<&'a [bool]>,
}

/// The step's loss terms; `total` is what the gradients differentiate.
#[derive(Clone, Copy, Debug, Default)]
pub struct Losses {
    /// mean over tokens of ‖ŷ − y‖²
    pub mse: f32,
    /// the sparsity penalty: λ Σ a‖W_dec‖ (standard; unit-norm recipe: norms are 1),
    /// λ Σ ReLU(π_gate)‖W_dec‖ (gated) or λ L0 (jumprelu), per token; 0 for topk-style
    pub sparsity: f32,
    /// the auxiliary loss: AuxK (topk-style, weighted by `aux_k_coefficient`; Gao et al.
    /// 2024) or gated's gate-path reconstruction; 0 otherwise
    pub aux: f32,
    /// `mse + sparsity + aux`
    pub total: f32,
    /// mean active latents per token
    pub l0: f32,
    /// Σ_d Var(y_d) over this batch (for FVU)
    pub variance: f32,
}

/// Selected (row, latent) entries in row order (compressed sparse rows).
#[derive(Default)]
struct Csr {
    row_ptr: Vec<usize>,
    idx: Vec<u32>,
    /// the value the decoder sees
    a: Vec<f32>,
    /// d loss / d pre-activation
    dpre: Vec<f32>,
    /// gated: d loss / d π_gate, then d loss / d π_mag
    extra: Vec<f32>,
    extra2: Vec<f32>,
}

impl Csr {
    fn resize(&mut self, n: usize) {
        self.idx.resize(n, 0);
        self.a.resize(n, 0.0);
        self.dpre.resize(n, 0.0);
        self.extra.resize(n, 0.0);
        self.extra2.resize(n, 0.0);
    }
}

/// A step's buffers (pre-activations, selections, errors, gradients), sized for one
/// configuration and allocated once; [`forward`] and [`backward`] reuse them every step.
pub struct Workspace {
    /// rows per step (the training batch size)
    pub batch: usize,
    sae_in: Vec<f32>,
    pre: Vec<f32>,
    /// reconstruction minus target, then d loss / d reconstruction
    err: Vec<f32>,
    err_aux: Vec<f32>,
    main: Csr,
    aux: Csr,
    aux_scale: f32,
    dense: bool,
    /// density of the last ReLU-family step (picks the kernels of the next)
    last_density: Option<f32>,
    /// (active count, L1 sum) from the dense activation pass
    dense_stats: Option<(usize, f64)>,
    /// per latent: θ (jumprelu) or exp(r_mag) (gated)
    gate: Vec<f32>,
    /// per row chunk: partial per-latent sums of the dense backward pass
    partials: Vec<Partial>,
    dense_a: Vec<f32>,
    dense_u: Vec<f32>,
    scratch: Vec<Vec<u32>>,
    by_feature: Vec<(u32, u32)>,
    offsets: Vec<usize>,
    fill: Vec<usize>,
    dec_norm: Vec<f32>,
    colsum: Vec<f32>,
    /// Σ over tokens of each latent's L1-weighted activation (for the decoder-norm term)
    l1_sum: Vec<f32>,
    acc1: Vec<f32>,
    acc2: Vec<f32>,
    hist: Vec<Vec<u32>>,
    /// the gradients of the last [`backward`], shaped like the parameters
    pub grads: Params,
    /// per latent: tokens it fired on in the last step
    pub fired: Vec<u32>,
    /// batchtopk: the smallest selected activation in the last step
    pub batch_min_active: f32,
}

impl Workspace {
    /// Buffers for `cfg`'s batch and widths (the dense ones come on first use).
    pub fn new(cfg: &TrainConfig, params: &Params) -> Self {
        let (b, d, m, o) = (cfg.batch, cfg.d_in, cfg.d_sae, cfg.d_out());
        let threads = rayon::current_num_threads().max(1);
        Workspace {
            batch: b,
            sae_in: vec![0.0; b * d],
            pre: vec![0.0; b * m],
            err: vec![0.0; b * o],
            err_aux: vec![0.0; b * o],
            main: Csr::default(),
            aux: Csr::default(),
            aux_scale: 0.0,
            dense: false,
            last_density: None,
            dense_stats: None,
            gate: Vec::new(),
            partials: Vec::new(),
            dense_a: Vec::new(),
            dense_u: Vec::new(),
            scratch: (0..threads).map(|_| Vec::with_capacity(m)).collect(),
            by_feature: Vec::new(),
            offsets: vec![0; m + 1],
            fill: vec![0; m + 1],
            dec_norm: vec![0.0; m],
            colsum: vec![0.0; m],
            l1_sum: vec![0.0; m],
            acc1: vec![0.0; m],
            acc2: vec![0.0; m],
            hist: Vec::new(),
            grads: params.zeros_like(),
            fired: vec![0; m],
            batch_min_active: 0.0,
        }
    }

    /// Row `r` of the last forward's reconstruction error (scaled by 2/batch after a
    /// backward pass).
    pub fn error_row(&self, r: usize) -> &[f32] {
        let o = self.err.len() / self.batch;
        &self.err[r * o..(r + 1) * o]
    }

    /// Whether the last step used the dense kernels.
    pub fn was_dense(&self) -> bool {
        self.dense
    }

    /// The last forward's active (latent, value) pairs of row `r` (sparse steps only).
    pub fn row_selection(&self, r: usize) -> Option<(&[u32], &[f32])> {
        if self.dense {
            return None;
        }
        let (s, e) = (self.main.row_ptr[r], self.main.row_ptr[r + 1]);
        Some((&self.main.idx[s..e], &self.main.a[s..e]))
    }
}

/// Rows split into at most `parts` contiguous ranges, for parallel loops.
fn row_ranges(rows: usize, parts: usize) -> Vec<(usize, usize)> {
    let step = rows.div_ceil(parts.max(1)).max(1);
    (0..rows)
        .step_by(step)
        .map(|s| (s, (s + step).min(rows)))
        .collect()
}

/// Splits a CSR-aligned buffer at row-range boundaries.
fn split_rows<'a, T>(
    mut data: &'a mut [T],
    row_ptr: &[usize],
    ranges: &[(usize, usize)],
) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges {
        let (head, tail) = data.split_at_mut(row_ptr[e] - row_ptr[s]);
        out.push(head);
        data = tail;
    }
    out
}

/// Forward pass and losses (no gradients). `x` `[batch, d_in]`, `y` `[batch, d_out]`
/// (`None`: an SAE, the target is `x`).
pub fn forward(
    cfg: &TrainConfig,
    p: &Params,
    ws: &mut Workspace,
    x: &[f32],
    y: Option<&[f32]>,
    c: &StepCoefficients,
) -> Losses {
    let (b, d, m, o) = (ws.batch, cfg.d_in, cfg.d_sae, cfg.d_out());
    assert_eq!(x.len(), b * d, "x must be [batch, d_in]");
    let y = y.unwrap_or(x);
    assert_eq!(y.len(), b * o, "y must be [batch, d_out]");
    encode(cfg, p, ws, x);
    ws.dec_norm
        .par_iter_mut()
        .zip(p.w_dec.par_chunks(o))
        .for_each(|(n, w)| *n = w.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12));
    // per-latent constants, once per step rather than per element
    ws.gate.clear();
    match cfg.arch {
        TrainArch::JumpReLU => ws.gate.extend(p.log_threshold.iter().map(|v| v.exp())),
        TrainArch::Gated => ws.gate.extend(p.r_mag.iter().map(|v| v.exp())),
        _ => {}
    }
    // activation; ReLU-family steps pick dense or sparse kernels from the last step's
    // density (counting first would cost a pass over the [batch, d_sae] matrix)
    ws.dense = false;
    ws.dense_stats = None;
    match cfg.arch {
        TrainArch::TopK => select_topk(ws, cfg.k, m),
        TrainArch::BatchTopK => select_batch_topk(ws, cfg.k * b, m),
        _ => {
            let density = match ws.last_density {
                Some(d) => d,
                None => count_active(cfg, p, ws) as f32 / (b * m) as f32,
            };
            ws.dense = density > cfg.dense_above;
            if ws.dense {
                dense_activate(cfg, p, ws);
            } else {
                sparse_activate(cfg, p, ws);
            }
        }
    }
    // decoder: ŷ = b_dec (+ W_skip x) + Σ a W_dec
    ws.err
        .par_chunks_mut(o)
        .for_each(|e| e.copy_from_slice(&p.b_dec));
    if cfg.skip {
        matmul(
            &mut ws.err,
            true,
            MatRef::new(x, b, d),
            MatRef::new(&p.w_skip, o, d).t(),
        );
    }
    if ws.dense {
        matmul(
            &mut ws.err,
            true,
            MatRef::new(&ws.dense_a, b, m),
            MatRef::new(&p.w_dec, m, o),
        );
    } else {
        sparse_decode(&ws.main, &p.w_dec, o, &mut ws.err, |_, _, a| a);
    }
    let mse = subtract_target(ws, y, o);
    let variance = batch_variance(y, o);
    // sparsity and auxiliary terms
    let (l0, sparsity) = sparsity_loss(cfg, ws, c.sparsity);
    let aux = match cfg.arch {
        TrainArch::TopK | TrainArch::BatchTopK => match c.dead {
            Some(dead) if cfg.aux_k_coefficient > 0.0 => aux_k(cfg, p, ws, dead),
            _ => {
                ws.aux_scale = 0.0;
                0.0
            }
        },
        TrainArch::Gated => gated_aux(cfg, p, ws, y),
        _ => 0.0,
    };
    Losses {
        mse,
        sparsity,
        aux,
        total: mse + sparsity + aux,
        l0,
        variance,
    }
}

/// The encoder: `sae_in` (the input, minus `b_dec` where the architecture applies it)
/// and the pre-activations `sae_in · W_encᵀ + b_enc`, one GEMM.
fn encode(cfg: &TrainConfig, p: &Params, ws: &mut Workspace, x: &[f32]) {
    let (b, d, m) = (ws.batch, cfg.d_in, cfg.d_sae);
    let apply_b_dec = cfg.apply_b_dec_to_input();
    ws.sae_in
        .par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(s, x)| {
            s.copy_from_slice(x);
            if apply_b_dec {
                s.iter_mut().zip(&p.b_dec).for_each(|(s, b)| *s -= b);
            }
        });
    ws.pre
        .par_chunks_mut(m)
        .for_each(|row| row.copy_from_slice(&p.b_enc));
    matmul(
        &mut ws.pre,
        true,
        MatRef::new(&ws.sae_in, b, d),
        MatRef::new(&p.w_enc_t, m, d).t(),
    );
}

/// Turns the reconstruction in `ws.err` into the error (minus the target `y`); gives the
/// mean over rows of its squared norm.
fn subtract_target(ws: &mut Workspace, y: &[f32], o: usize) -> f32 {
    let b = ws.batch;
    ws.err
        .par_chunks_mut(o)
        .zip(y.par_chunks(o))
        .map(|(e, y)| {
            let mut s = 0f32;
            for (e, y) in e.iter_mut().zip(y) {
                *e -= y;
                s += *e * *e;
            }
            s as f64
        })
        .sum::<f64>() as f32
        / b as f32
}

fn batch_variance(y: &[f32], o: usize) -> f32 {
    let n = (y.len() / o).max(1) as f64;
    let mut mean = vec![0f64; o];
    let mut sq = 0f64;
    for r in y.chunks(o) {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += *v as f64;
            sq += (*v as f64).powi(2);
        }
    }
    let msq: f64 = mean.iter().map(|m| (m / n).powi(2)).sum();
    (sq / n - msq) as f32
}

/// Adds `Σ_j value(j, a_j) · W_dec[f_j]` to every row of `out`.
fn sparse_decode(
    csr: &Csr,
    w_dec: &[f32],
    o: usize,
    out: &mut [f32],
    value: impl Fn(usize, usize, f32) -> f32 + Sync,
) {
    out.par_chunks_mut(o).enumerate().for_each(|(r, e)| {
        for j in csr.row_ptr[r]..csr.row_ptr[r + 1] {
            let v = value(r, j, csr.a[j]);
            if v != 0.0 {
                let w = &w_dec[csr.idx[j] as usize * o..(csr.idx[j] as usize + 1) * o];
                e.iter_mut().zip(w).for_each(|(e, w)| *e += v * w);
            }
        }
    });
}

fn select_topk(ws: &mut Workspace, k: usize, m: usize) {
    let b = ws.batch;
    ws.main.row_ptr.clear();
    ws.main.row_ptr.extend((0..=b).map(|r| r * k));
    ws.main.resize(b * k);
    let chunk = b.div_ceil(ws.scratch.len());
    let pre = &ws.pre;
    ws.scratch
        .par_iter_mut()
        .zip(ws.main.idx.par_chunks_mut(chunk * k))
        .zip(ws.main.a.par_chunks_mut(chunk * k))
        .enumerate()
        .for_each(|(c, ((ord, idx), a))| {
            for (r, (idx, a)) in idx.chunks_mut(k).zip(a.chunks_mut(k)).enumerate() {
                let row = &pre[(c * chunk + r) * m..(c * chunk + r + 1) * m];
                ord.clear();
                ord.extend(0..m as u32);
                ord.select_nth_unstable_by(k - 1, |&x, &y| {
                    row[y as usize].total_cmp(&row[x as usize])
                });
                for j in 0..k {
                    idx[j] = ord[j];
                    a[j] = row[ord[j] as usize].max(0.0);
                }
            }
        });
}

/// The `want` largest positive pre-activations of the whole batch, found by a two-pass
/// radix selection on the float bits (positive floats order like their bit patterns).
fn select_batch_topk(ws: &mut Workspace, want: usize, m: usize) {
    let b = ws.batch;
    let parts = ws.scratch.len();
    let ranges = row_ranges(b, parts);
    if ws.hist.len() != ranges.len() {
        ws.hist = vec![vec![0u32; 1 << 16]; ranges.len()];
    }
    let pre = &ws.pre;
    let histogram = |hist: &mut Vec<Vec<u32>>, key: &(dyn Fn(u32) -> Option<usize> + Sync)| {
        hist.par_iter_mut().zip(&ranges).for_each(|(h, &(s, e))| {
            h.iter_mut().for_each(|v| *v = 0);
            for &v in &pre[s * m..e * m] {
                if v > 0.0 {
                    if let Some(bin) = key(v.to_bits()) {
                        h[bin] += 1;
                    }
                }
            }
        });
        let mut total = vec![0u64; 1 << 16];
        for h in hist.iter() {
            total.iter_mut().zip(h).for_each(|(t, v)| *t += *v as u64);
        }
        total
    };
    // pass 1: high 16 bits; pass 2: low 16 bits within the boundary bin
    let high = histogram(&mut ws.hist, &|bits| Some((bits >> 16) as usize));
    let mut above = 0u64;
    let mut threshold_bits = 1u32; // smallest positive float: take every positive value
    'outer: for hb in (0..1usize << 16).rev() {
        if above + high[hb] >= want as u64 {
            let low = histogram(&mut ws.hist, &|bits| {
                ((bits >> 16) as usize == hb).then_some((bits & 0xffff) as usize)
            });
            for lb in (0..1usize << 16).rev() {
                above += low[lb];
                if above >= want as u64 {
                    threshold_bits = ((hb as u32) << 16) | lb as u32;
                    break 'outer;
                }
            }
        }
        above += high[hb];
    }
    let t = f32::from_bits(threshold_bits);
    ws.batch_min_active = t;
    build_csr(ws, m, |_, v| if v >= t && v > 0.0 { Some(v) } else { None });
}

/// Fills `ws.main` with the entries `keep(latent, pre)` returns a value for.
fn build_csr(ws: &mut Workspace, m: usize, keep: impl Fn(usize, f32) -> Option<f32> + Sync) {
    let b = ws.batch;
    let pre = &ws.pre;
    let counts: Vec<usize> = (0..b)
        .into_par_iter()
        .map(|r| {
            pre[r * m..(r + 1) * m]
                .iter()
                .enumerate()
                .filter(|(f, v)| keep(*f, **v).is_some())
                .count()
        })
        .collect();
    let csr = &mut ws.main;
    csr.row_ptr.clear();
    csr.row_ptr.push(0);
    for c in &counts {
        csr.row_ptr
            .push(csr.row_ptr.last().copied().unwrap_or(0) + c);
    }
    csr.resize(csr.row_ptr[b]);
    let ranges = row_ranges(b, 4 * rayon::current_num_threads());
    let idx = split_rows(&mut csr.idx, &csr.row_ptr, &ranges);
    let a = split_rows(&mut csr.a, &csr.row_ptr, &ranges);
    idx.into_par_iter()
        .zip(a)
        .zip(&ranges)
        .for_each(|((idx, a), &(s, e))| {
            let mut j = 0;
            for r in s..e {
                for (f, &v) in pre[r * m..(r + 1) * m].iter().enumerate() {
                    if let Some(val) = keep(f, v) {
                        idx[j] = f as u32;
                        a[j] = val;
                        j += 1;
                    }
                }
            }
        });
}

/// Whether latent `f` fires at pre-activation `v`, and the value the decoder then sees.
/// `gate` holds θ (jumprelu) or exp(r_mag) (gated) per latent.
#[inline(always)]
fn activation(arch: TrainArch, p: &Params, gate: &[f32], f: usize, v: f32) -> Option<f32> {
    match arch {
        TrainArch::JumpReLU => (v > gate[f]).then_some(v),
        TrainArch::Gated => (v > 0.0).then(|| (gate[f] * (v - p.b_enc[f]) + p.b_mag[f]).max(0.0)),
        _ => (v > 0.0).then_some(v),
    }
}

fn count_active(cfg: &TrainConfig, p: &Params, ws: &Workspace) -> usize {
    let (m, gate) = (cfg.d_sae, &ws.gate);
    ws.pre
        .par_chunks(m)
        .map(|row| {
            row.iter()
                .enumerate()
                .filter(|(f, v)| activation(cfg.arch, p, gate, *f, **v).is_some())
                .count()
        })
        .sum()
}

fn sparse_activate(cfg: &TrainConfig, p: &Params, ws: &mut Workspace) {
    let gate = std::mem::take(&mut ws.gate);
    build_csr(ws, cfg.d_sae, |f, v| activation(cfg.arch, p, &gate, f, v));
    ws.gate = gate;
    ws.last_density = Some(ws.main.idx.len() as f32 / (ws.batch * cfg.d_sae) as f32);
}

/// Fills the dense activation matrix and, in the same pass, the active count and the
/// L1 sum Σ w·‖W_dec‖ (w = a for standard, ReLU(π_gate) for gated).
fn dense_activate(cfg: &TrainConfig, p: &Params, ws: &mut Workspace) {
    let (b, m) = (ws.batch, cfg.d_sae);
    ws.dense_a.resize(b * m, 0.0);
    ws.dense_u.resize(b * m, 0.0);
    let (gate, norm, arch) = (&ws.gate, &ws.dec_norm, cfg.arch);
    let (active, l1) = ws
        .dense_a
        .par_chunks_mut(m)
        .zip(ws.pre.par_chunks(m))
        .map(|(a, pre)| {
            let (mut n, mut s) = (0usize, 0f32);
            for f in 0..m {
                a[f] = activation(arch, p, gate, f, pre[f]).unwrap_or(0.0);
                n += usize::from(a[f] > 0.0);
                s += match arch {
                    TrainArch::Standard => a[f] * norm[f],
                    TrainArch::Gated => pre[f].max(0.0) * norm[f],
                    _ => 0.0,
                };
            }
            (n, s as f64)
        })
        .reduce(|| (0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
    ws.dense_stats = Some((active, l1));
    ws.last_density = Some(active as f32 / (b * m) as f32);
}

/// (L0, sparsity loss). Standard: λ Σ a‖W_dec‖ (unit-norm recipe: norms are 1);
/// gated: λ Σ ReLU(π_gate)‖W_dec‖; jumprelu: λ L0.
fn sparsity_loss(cfg: &TrainConfig, ws: &Workspace, lambda: f32) -> (f32, f32) {
    let (b, m) = (ws.batch, cfg.d_sae);
    let norm = &ws.dec_norm;
    let weight = |f: usize, pre: f32, a: f32| -> f32 {
        match cfg.arch {
            TrainArch::Standard => a * norm[f],
            TrainArch::Gated => pre.max(0.0) * norm[f],
            _ => 0.0,
        }
    };
    let (active, l1) = if let Some(stats) = ws.dense_stats {
        stats
    } else {
        let csr = &ws.main;
        (0..b)
            .into_par_iter()
            .map(|r| {
                let mut n = 0usize;
                let mut s = 0f64;
                for j in csr.row_ptr[r]..csr.row_ptr[r + 1] {
                    let f = csr.idx[j] as usize;
                    if csr.a[j] > 0.0 {
                        n += 1;
                    }
                    s += weight(f, ws.pre[r * m + f], csr.a[j]) as f64;
                }
                (n, s)
            })
            .reduce(|| (0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1))
    };
    let l0 = active as f32 / b as f32;
    let loss = match cfg.arch {
        TrainArch::Standard | TrainArch::Gated => lambda * l1 as f32 / b as f32,
        TrainArch::JumpReLU => lambda * l0,
        _ => 0.0,
    };
    (l0, loss)
}

/// AuxK (Gao et al. 2024): the top `aux_k` dead latents of each token reconstruct the
/// main reconstruction's residual; scaled by min(dead / aux_k, 1) and the coefficient.
fn aux_k(cfg: &TrainConfig, p: &Params, ws: &mut Workspace, dead: &[bool]) -> f32 {
    let (b, m, o) = (ws.batch, cfg.d_sae, cfg.d_out());
    let n_dead = dead.iter().filter(|&&d| d).count();
    if n_dead == 0 {
        ws.aux_scale = 0.0;
        return 0.0;
    }
    let ka = cfg.aux_k().min(n_dead);
    ws.aux_scale = cfg.aux_k_coefficient * (n_dead as f32 / cfg.aux_k() as f32).min(1.0);
    let aux = &mut ws.aux;
    aux.row_ptr.clear();
    aux.row_ptr.extend((0..=b).map(|r| r * ka));
    aux.resize(b * ka);
    let chunk = b.div_ceil(ws.scratch.len());
    let pre = &ws.pre;
    ws.scratch
        .par_iter_mut()
        .zip(aux.idx.par_chunks_mut(chunk * ka))
        .zip(aux.a.par_chunks_mut(chunk * ka))
        .enumerate()
        .for_each(|(c, ((ord, idx), a))| {
            for (r, (idx, a)) in idx.chunks_mut(ka).zip(a.chunks_mut(ka)).enumerate() {
                let row = &pre[(c * chunk + r) * m..(c * chunk + r + 1) * m];
                ord.clear();
                ord.extend((0..m as u32).filter(|&f| dead[f as usize]));
                ord.select_nth_unstable_by(ka - 1, |&x, &y| {
                    row[y as usize].total_cmp(&row[x as usize])
                });
                for j in 0..ka {
                    idx[j] = ord[j];
                    a[j] = row[ord[j] as usize].max(0.0);
                }
            }
        });
    // residual target: y − ŷ = −err, so e_aux = Σ a W_dec + err
    ws.err_aux.copy_from_slice(&ws.err);
    sparse_decode(&ws.aux, &p.w_dec, o, &mut ws.err_aux, |_, _, a| a);
    let sq: f64 = ws
        .err_aux
        .par_chunks(o)
        .map(|e| e.iter().map(|v| (v * v) as f64).sum::<f64>())
        .sum();
    ws.aux_scale * sq as f32 / b as f32
}

/// Gated's auxiliary loss: the gate path alone, ReLU(π_gate) through a frozen decoder,
/// must reconstruct the target too.
fn gated_aux(cfg: &TrainConfig, p: &Params, ws: &mut Workspace, y: &[f32]) -> f32 {
    let (b, m, o) = (ws.batch, cfg.d_sae, cfg.d_out());
    ws.err_aux
        .par_chunks_mut(o)
        .for_each(|e| e.copy_from_slice(&p.b_dec));
    if ws.dense {
        ws.dense_u
            .par_chunks_mut(m)
            .zip(ws.pre.par_chunks(m))
            .for_each(|(u, pre)| u.iter_mut().zip(pre).for_each(|(u, v)| *u = v.max(0.0)));
        matmul(
            &mut ws.err_aux,
            true,
            MatRef::new(&ws.dense_u, b, m),
            MatRef::new(&p.w_dec, m, o),
        );
    } else {
        let (pre, csr) = (&ws.pre, &ws.main);
        sparse_decode(csr, &p.w_dec, o, &mut ws.err_aux, |r, j, _| {
            pre[r * m + csr.idx[j] as usize].max(0.0)
        });
    }
    let sq: f64 = ws
        .err_aux
        .par_chunks_mut(o)
        .zip(y.par_chunks(o))
        .map(|(e, y)| {
            let mut s = 0f64;
            for (e, y) in e.iter_mut().zip(y) {
                *e -= y;
                s += (*e * *e) as f64;
            }
            s
        })
        .sum();
    sq as f32 / b as f32
}

/// One row chunk's per-latent partial sums in the dense backward pass: four sums and
/// a firing count, merged after the pass (rows stream in memory order; a column-wise
/// pass over a [4096, 16384] matrix thrashes the TLB).
pub(crate) struct Partial {
    sums: [Vec<f32>; 4],
    fired: Vec<u32>,
}

/// Visits every (row, latent) of the `[b, m]` dense buffers, rows in parallel,
/// `visit(f, pre, a, &mut u, sums, &mut fired)`; then adds the chunks' sums into
/// `out` (colsum, l1_sum, acc1, acc2) and `fired`.
#[allow(clippy::too_many_arguments)]
fn row_pass(
    b: usize,
    m: usize,
    partials: &mut Vec<Partial>,
    pre: &[f32],
    a: &[f32],
    u: &mut [f32],
    out: [&mut [f32]; 4],
    fired: &mut [u32],
    visit: impl Fn(usize, f32, f32, &mut f32, &mut [Vec<f32>; 4], &mut [u32]) + Sync,
) {
    let ranges = row_ranges(b, rayon::current_num_threads());
    partials.resize_with(ranges.len(), || Partial {
        sums: std::array::from_fn(|_| vec![0.0; m]),
        fired: vec![0; m],
    });
    partials
        .par_iter_mut()
        .zip(u.par_chunks_mut(ranges[0].1 * m))
        .zip(&ranges)
        .for_each(|((part, u), &(s, e))| {
            part.sums.iter_mut().for_each(|v| v.fill(0.0));
            part.fired.fill(0);
            for r in s..e {
                let (pre, a) = (&pre[r * m..(r + 1) * m], &a[r * m..(r + 1) * m]);
                let u = &mut u[(r - s) * m..(r - s + 1) * m];
                for f in 0..m {
                    visit(f, pre[f], a[f], &mut u[f], &mut part.sums, &mut part.fired);
                }
            }
        });
    for (k, o) in out.into_iter().enumerate() {
        for part in partials.iter() {
            o.iter_mut().zip(&part.sums[k]).for_each(|(o, v)| *o += v);
        }
    }
    for part in partials.iter() {
        fired.iter_mut().zip(&part.fired).for_each(|(o, v)| *o += v);
    }
}

/// Gradients of [`Losses::total`] into `ws.grads` (after [`forward`] on the same batch).
pub fn backward(
    cfg: &TrainConfig,
    p: &Params,
    ws: &mut Workspace,
    x: &[f32],
    c: &StepCoefficients,
) {
    let (b, d, _m, o) = (ws.batch, cfg.d_in, cfg.d_sae, cfg.d_out());
    let scale = 2.0 / b as f32;
    ws.err.par_iter_mut().for_each(|v| *v *= scale);
    let aux_scale = match cfg.arch {
        TrainArch::Gated => scale,
        TrainArch::TopK | TrainArch::BatchTopK => scale * ws.aux_scale,
        _ => 0.0,
    };
    if aux_scale > 0.0 {
        ws.err_aux.par_iter_mut().for_each(|v| *v *= aux_scale);
    }
    for g in [
        &mut ws.grads.log_threshold,
        &mut ws.grads.r_mag,
        &mut ws.grads.b_mag,
    ] {
        g.iter_mut().for_each(|v| *v = 0.0);
    }
    ws.fired.iter_mut().for_each(|v| *v = 0);
    ws.colsum.iter_mut().for_each(|v| *v = 0.0);
    ws.l1_sum.iter_mut().for_each(|v| *v = 0.0);
    if ws.dense {
        dense_backward(cfg, p, ws, c.sparsity);
    } else {
        sparse_backward(cfg, p, ws, c.sparsity, aux_scale > 0.0);
    }
    // b_dec: the decoder's Σ g, minus what flows back through `x − b_dec` at the input:
    // Σ_r dpre_r · W_encᵀ = (Σ_r dpre_r) · W_encᵀ, one matrix-vector product
    let g_b_dec = &mut ws.grads.b_dec;
    g_b_dec.iter_mut().for_each(|v| *v = 0.0);
    for row in ws.err.chunks(o) {
        g_b_dec.iter_mut().zip(row).for_each(|(g, v)| *g += v);
    }
    if cfg.apply_b_dec_to_input() {
        for (f, &cf) in ws.colsum.iter().enumerate() {
            if cf != 0.0 {
                let w = &p.w_enc_t[f * d..(f + 1) * d];
                g_b_dec.iter_mut().zip(w).for_each(|(g, w)| *g -= cf * w);
            }
        }
    }
    // the L1 term's pull on decoder norms: λ S_f W_dec_f / ‖W_dec_f‖
    if matches!(cfg.arch, TrainArch::Standard | TrainArch::Gated) && c.sparsity > 0.0 {
        let lambda_over_b = c.sparsity / b as f32;
        let (l1, norm) = (&ws.l1_sum, &ws.dec_norm);
        ws.grads
            .w_dec
            .par_chunks_mut(o)
            .zip(p.w_dec.par_chunks(o))
            .enumerate()
            .for_each(|(f, (g, w))| {
                let s = lambda_over_b * l1[f] / norm[f];
                if s != 0.0 {
                    g.iter_mut().zip(w).for_each(|(g, w)| *g += s * w);
                }
            });
    }
    if cfg.skip {
        matmul(
            &mut ws.grads.w_skip,
            false,
            MatRef::new(&ws.err, b, o).t(),
            MatRef::new(x, b, d),
        );
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

fn sparse_backward(cfg: &TrainConfig, p: &Params, ws: &mut Workspace, lambda: f32, aux: bool) {
    let (b, m, o) = (ws.batch, cfg.d_sae, cfg.d_out());
    let lambda_over_b = lambda / b as f32;
    let ranges = row_ranges(b, 4 * rayon::current_num_threads());
    let (pre, err, err_aux, norm, gate) = (&ws.pre, &ws.err, &ws.err_aux, &ws.dec_norm, &ws.gate);
    {
        let csr = &mut ws.main;
        let (row_ptr, idx, a) = (&csr.row_ptr, &csr.idx, &csr.a);
        let dpre = split_rows(&mut csr.dpre, row_ptr, &ranges);
        let e1 = split_rows(&mut csr.extra, row_ptr, &ranges);
        let e2 = split_rows(&mut csr.extra2, row_ptr, &ranges);
        dpre.into_par_iter().zip(e1).zip(e2).zip(&ranges).for_each(
            |(((dpre, e1), e2), &(s, e))| {
                let base = row_ptr[s];
                for r in s..e {
                    let g = &err[r * o..(r + 1) * o];
                    for j in row_ptr[r]..row_ptr[r + 1] {
                        let f = idx[j] as usize;
                        let w = &p.w_dec[f * o..(f + 1) * o];
                        let u = if a[j] != 0.0 || cfg.arch == TrainArch::Gated {
                            dot(g, w)
                        } else {
                            0.0
                        };
                        let jj = j - base;
                        dpre[jj] = match cfg.arch {
                            TrainArch::Standard => u + lambda_over_b * norm[f],
                            TrainArch::Gated => {
                                let er = gate[f];
                                let pv = pre[r * m + f];
                                let pim = er * (pv - p.b_enc[f]) + p.b_mag[f];
                                let dpim = if pim > 0.0 { u } else { 0.0 };
                                let u2 = dot(&err_aux[r * o..(r + 1) * o], w);
                                let dpig = lambda_over_b * norm[f] + u2;
                                e1[jj] = dpig;
                                e2[jj] = dpim;
                                dpig + er * dpim
                            }
                            _ if a[j] > 0.0 => u,
                            _ => 0.0,
                        };
                    }
                }
            },
        );
    }
    gather(cfg, p, ws, false);
    if aux && cfg.arch != TrainArch::Gated {
        // AuxK entries: u = g_aux · W_dec_f
        let err_aux = &ws.err_aux;
        let aux = &mut ws.aux;
        let ka = aux.row_ptr[1];
        let (idx, a) = (&aux.idx, &aux.a);
        aux.dpre.par_chunks_mut(ka).enumerate().for_each(|(r, dp)| {
            let g = &err_aux[r * o..(r + 1) * o];
            for (jj, dp) in dp.iter_mut().enumerate() {
                let j = r * ka + jj;
                let f = idx[j] as usize;
                *dp = if a[j] > 0.0 {
                    dot(g, &p.w_dec[f * o..(f + 1) * o])
                } else {
                    0.0
                };
            }
        });
        gather(cfg, p, ws, true);
    }
    if cfg.arch == TrainArch::JumpReLU {
        jumprelu_threshold_grad_sparse(cfg, p, ws, lambda_over_b);
    }
}

/// Per-latent sums over the selected entries, grouped by latent (counting sort) so each
/// gradient row has one writer: W_dec += a·g, W_encᵀ += dpre·sae_in, Σ dpre, plus the
/// architecture's per-latent terms. `aux` adds AuxK's entries on top of the main ones.
fn gather(cfg: &TrainConfig, p: &Params, ws: &mut Workspace, aux: bool) {
    let (d, m, o) = (cfg.d_in, cfg.d_sae, cfg.d_out());
    let csr = if aux { &ws.aux } else { &ws.main };
    let g_rows = if aux { &ws.err_aux } else { &ws.err };
    let n = csr.idx.len();
    ws.by_feature.resize(n, (0, 0));
    ws.offsets.iter_mut().for_each(|v| *v = 0);
    for &f in &csr.idx {
        ws.offsets[f as usize + 1] += 1;
    }
    for f in 0..m {
        ws.offsets[f + 1] += ws.offsets[f];
    }
    ws.fill.copy_from_slice(&ws.offsets);
    let b = csr.row_ptr.len() - 1;
    for r in 0..b {
        for j in csr.row_ptr[r]..csr.row_ptr[r + 1] {
            let f = csr.idx[j] as usize;
            ws.by_feature[ws.fill[f]] = (r as u32, j as u32);
            ws.fill[f] += 1;
        }
    }
    let (offsets, by_feature, sae_in, pre, gate) =
        (&ws.offsets, &ws.by_feature, &ws.sae_in, &ws.pre, &ws.gate);
    let gated = cfg.arch == TrainArch::Gated;
    let g = &mut ws.grads;
    g.w_dec
        .par_chunks_mut(o)
        .zip(g.w_enc_t.par_chunks_mut(d))
        .zip(ws.colsum.par_iter_mut())
        .zip(ws.l1_sum.par_iter_mut())
        .zip(ws.fired.par_iter_mut())
        .zip(g.b_enc.par_iter_mut())
        .zip(ws.acc1.par_iter_mut())
        .zip(ws.acc2.par_iter_mut())
        .enumerate()
        .for_each(|(f, (((((((gd, ge), cs), l1), fired), gb), gr), gm))| {
            if !aux {
                gd.iter_mut().for_each(|v| *v = 0.0);
                ge.iter_mut().for_each(|v| *v = 0.0);
                *gb = 0.0;
                *gr = 0.0;
                *gm = 0.0;
            }
            for &(r, j) in &by_feature[offsets[f]..offsets[f + 1]] {
                let (r, j) = (r as usize, j as usize);
                let (a, dp) = (csr.a[j], csr.dpre[j]);
                if a != 0.0 {
                    let gr_row = &g_rows[r * o..(r + 1) * o];
                    gd.iter_mut().zip(gr_row).for_each(|(v, g)| *v += a * g);
                }
                if dp != 0.0 {
                    let s = &sae_in[r * d..(r + 1) * d];
                    ge.iter_mut().zip(s).for_each(|(v, s)| *v += dp * s);
                }
                *cs += dp;
                if aux {
                    continue;
                }
                if a > 0.0 {
                    *fired += 1;
                }
                match cfg.arch {
                    TrainArch::Standard => *l1 += a,
                    TrainArch::Gated => {
                        let pv = pre[r * m + f];
                        *l1 += pv.max(0.0);
                        *gb += csr.extra[j];
                        let er = gate[f];
                        *gr += csr.extra2[j] * er * (pv - p.b_enc[f]);
                        *gm += csr.extra2[j];
                    }
                    _ => {}
                }
            }
            if !gated {
                *gb = *cs;
            }
        });
    if gated && !aux {
        g.r_mag.copy_from_slice(&ws.acc1);
        g.b_mag.copy_from_slice(&ws.acc2);
    }
}

/// JumpReLU's straight-through threshold gradient (rectangle kernel of width ε): from
/// the reconstruction, −(θ/ε)·u for tokens within ε/2 of the threshold, and from the
/// L0 penalty −λ/ε per such token; then d/d log θ = θ · d/dθ.
fn jumprelu_threshold_grad_sparse(
    cfg: &TrainConfig,
    p: &Params,
    ws: &mut Workspace,
    lambda_over_b: f32,
) {
    let (b, m, o) = (ws.batch, cfg.d_sae, cfg.d_out());
    let eps = cfg.jumprelu_bandwidth;
    let (pre, err, gate) = (&ws.pre, &ws.err, &ws.gate);
    let contributions: Vec<Vec<(u32, f32)>> = row_ranges(b, 4 * rayon::current_num_threads())
        .into_par_iter()
        .map(|(s, e)| {
            let mut out = Vec::new();
            for r in s..e {
                let g = &err[r * o..(r + 1) * o];
                for f in 0..m {
                    let t = gate[f];
                    let z = pre[r * m + f] - t;
                    if z.abs() < eps / 2.0 {
                        let u = dot(g, &p.w_dec[f * o..(f + 1) * o]);
                        out.push((f as u32, -(t / eps) * u - lambda_over_b / eps));
                    }
                }
            }
            out
        })
        .collect();
    let g = &mut ws.grads.log_threshold;
    let gate = &ws.gate;
    for part in contributions {
        for (f, v) in part {
            g[f as usize] += v;
        }
    }
    for (f, g) in g.iter_mut().enumerate() {
        *g *= gate[f];
    }
}

fn dense_backward(cfg: &TrainConfig, p: &Params, ws: &mut Workspace, lambda: f32) {
    let (b, d, m, o) = (ws.batch, cfg.d_in, cfg.d_sae, cfg.d_out());
    let lambda_over_b = lambda / b as f32;
    let eps = cfg.jumprelu_bandwidth;
    let Workspace {
        sae_in,
        pre,
        err,
        err_aux,
        dense_a,
        dense_u,
        colsum,
        l1_sum,
        fired,
        acc1,
        acc2,
        dec_norm: norm,
        gate,
        partials,
        grads,
        ..
    } = ws;
    acc1.fill(0.0);
    acc2.fill(0.0);
    let w_dec_t = MatRef::new(&p.w_dec, m, o).t();
    // W_dec gradient: Aᵀ g
    matmul(
        &mut grads.w_dec,
        false,
        MatRef::new(dense_a, b, m).t(),
        MatRef::new(err, b, o),
    );
    match cfg.arch {
        TrainArch::Standard | TrainArch::JumpReLU => {
            // U = g W_decᵀ, then in place D = d loss / d pre
            matmul(dense_u, false, MatRef::new(err, b, o), w_dec_t);
            let jump = cfg.arch == TrainArch::JumpReLU;
            let out = [
                &mut colsum[..],
                &mut l1_sum[..],
                &mut acc1[..],
                &mut acc2[..],
            ];
            row_pass(
                b,
                m,
                partials,
                pre,
                dense_a,
                dense_u,
                out,
                fired,
                |f, pv, a, u, s, fired| {
                    fired[f] += u32::from(a > 0.0);
                    if jump {
                        let t = gate[f];
                        if (pv - t).abs() < eps / 2.0 {
                            s[2][f] += -(t / eps) * *u - lambda_over_b / eps;
                        }
                        if pv <= t {
                            *u = 0.0;
                        }
                    } else {
                        s[1][f] += a;
                        *u = if pv > 0.0 {
                            *u + lambda_over_b * norm[f]
                        } else {
                            0.0
                        };
                    }
                    s[0][f] += *u;
                },
            );
            if jump {
                for (f, g) in grads.log_threshold.iter_mut().enumerate() {
                    *g = acc1[f] * gate[f];
                }
            }
            grads.b_enc.copy_from_slice(colsum);
        }
        TrainArch::Gated => {
            // pass 1: U = g_aux W_decᵀ → d loss / d π_gate (L1 + aux path)
            matmul(dense_u, false, MatRef::new(err_aux, b, o), w_dec_t);
            let out = [
                &mut colsum[..],
                &mut l1_sum[..],
                &mut acc1[..],
                &mut acc2[..],
            ];
            row_pass(
                b,
                m,
                partials,
                pre,
                dense_a,
                dense_u,
                out,
                fired,
                |f, pv, a, u, s, fired| {
                    fired[f] += u32::from(a > 0.0);
                    if pv > 0.0 {
                        s[1][f] += pv;
                        *u += lambda_over_b * norm[f];
                    } else {
                        *u = 0.0;
                    }
                    s[0][f] += *u;
                },
            );
            grads.b_enc.copy_from_slice(colsum);
            colsum.fill(0.0);
            // pass 2: A = g W_decᵀ → the magnitude path, added into U (l1_sum and
            // fired get nothing from this pass)
            matmul(dense_a, false, MatRef::new(err, b, o), w_dec_t);
            let mut none = vec![0.0f32; m];
            let mut none_fired = vec![0u32; m];
            let out = [&mut colsum[..], &mut none[..], &mut acc1[..], &mut acc2[..]];
            row_pass(
                b,
                m,
                partials,
                pre,
                dense_a,
                dense_u,
                out,
                &mut none_fired,
                |f, pv, a, u, s, _| {
                    if pv > 0.0 {
                        let er = gate[f];
                        let pim = er * (pv - p.b_enc[f]) + p.b_mag[f];
                        if pim > 0.0 {
                            *u += er * a;
                            s[2][f] += a * er * (pv - p.b_enc[f]);
                            s[3][f] += a;
                        }
                    }
                    s[0][f] += *u;
                },
            );
            grads.r_mag.copy_from_slice(acc1);
            grads.b_mag.copy_from_slice(acc2);
        }
        _ => unreachable!("TopK-style steps are always sparse"),
    }
    matmul(
        &mut grads.w_enc_t,
        false,
        MatRef::new(dense_u, b, m).t(),
        MatRef::new(sae_in, b, d),
    );
}

/// Which latents one rank of a latent-sharded job holds: `first..first + cfg.d_sae` of
/// `d_sae` (the whole dictionary's width). Each rank holds those latents' encoder
/// rows, decoder rows, biases and Adam moments; `b_dec` (and `W_skip`) are replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentShard {
    /// the global index of this rank's first latent
    pub first: usize,
    /// the whole dictionary's latents
    pub d_sae: usize,
    /// AuxK's latents per token in the whole dictionary ([`TrainConfig::aux_k`] of it)
    pub aux_k: usize,
}

/// [`forward`] for a TopK dictionary whose latents are split over the ranks of `comm`
/// ([`LatentShard`]); every rank has the same whole batch. Each rank encodes with its
/// own latents and proposes its top k of every row; one all-gather of the proposals, and
/// every rank keeps the global top k that fall in its shard (the other slots of its k
/// hold inert zeros, so the backward pass runs unchanged on the shard). The decoder
/// output is the sum over the ranks of their partial reconstructions; AuxK works the
/// same way over the dead latents of every shard. The losses are the whole
/// dictionary's, the same on every rank.
#[allow(clippy::too_many_arguments)]
pub fn forward_latent_sharded(
    cfg: &TrainConfig,
    p: &Params,
    ws: &mut Workspace,
    x: &[f32],
    y: Option<&[f32]>,
    c: &StepCoefficients,
    shard: &LatentShard,
    comm: &dyn Collective,
) -> Losses {
    let (b, d, m, o) = (ws.batch, cfg.d_in, cfg.d_sae, cfg.d_out());
    assert_eq!(cfg.arch, TrainArch::TopK, "latent sharding is TopK's");
    assert_eq!(x.len(), b * d, "x must be [batch, d_in]");
    let y = y.unwrap_or(x);
    encode(cfg, p, ws, x);
    ws.dense = false;
    ws.dense_stats = None;
    let k = cfg.k;
    let everyone = vec![true; m];
    select_global(ws, comm, shard, k, &everyone, true);
    // ŷ = b_dec (+ W_skip x) + Σ over the ranks of Σ_own a W_dec
    ws.err.iter_mut().for_each(|v| *v = 0.0);
    sparse_decode(&ws.main, &p.w_dec, o, &mut ws.err, |_, _, a| a);
    comm.sum_f32(&mut ws.err);
    ws.err
        .par_chunks_mut(o)
        .for_each(|e| e.iter_mut().zip(&p.b_dec).for_each(|(e, b)| *e += b));
    if cfg.skip {
        matmul(
            &mut ws.err,
            true,
            MatRef::new(x, b, d),
            MatRef::new(&p.w_skip, o, d).t(),
        );
    }
    let mse = subtract_target(ws, y, o);
    let variance = batch_variance(y, o);
    let active = ws.main.a.iter().filter(|a| **a > 0.0).count();
    // AuxK over every shard's dead latents
    let mut counts = [
        active as u64,
        c.dead.map_or(0, |d| d.iter().filter(|&&v| v).count()) as u64,
    ];
    comm.sum_u64(&mut counts);
    let (active, n_dead) = (counts[0] as usize, counts[1] as usize);
    let aux = match c.dead {
        Some(dead) if cfg.aux_k_coefficient > 0.0 && n_dead > 0 => {
            let ka = shard.aux_k.min(n_dead);
            ws.aux_scale = cfg.aux_k_coefficient * (n_dead as f32 / shard.aux_k as f32).min(1.0);
            select_global(ws, comm, shard, ka, dead, false);
            let mut partial = vec![0.0; b * o];
            sparse_decode(&ws.aux, &p.w_dec, o, &mut partial, |_, _, a| a);
            comm.sum_f32(&mut partial);
            ws.err_aux
                .iter_mut()
                .zip(ws.err.iter().zip(&partial))
                .for_each(|(e, (err, s))| *e = err + s);
            let sq: f64 = ws
                .err_aux
                .par_chunks(o)
                .map(|e| e.iter().map(|v| (v * v) as f64).sum::<f64>())
                .sum();
            ws.aux_scale * sq as f32 / b as f32
        }
        _ => {
            ws.aux_scale = 0.0;
            0.0
        }
    };
    Losses {
        mse,
        sparsity: 0.0,
        aux,
        total: mse + aux,
        l0: active as f32 / b as f32,
        variance,
    }
}

/// The global top `k` of every row among the latents `eligible` marks on every rank,
/// into the main (`main`) or AuxK CSR as `k` slots a row: this rank's winners with
/// their activations, the rest inert (latent 0, activation 0). Ties go to the lower
/// global index.
fn select_global(
    ws: &mut Workspace,
    comm: &dyn Collective,
    shard: &LatentShard,
    k: usize,
    eligible: &[bool],
    main: bool,
) {
    let (b, m, ranks) = (ws.batch, eligible.len(), comm.size());
    // this rank's proposals: (pre, global index) pairs, k a row, -inf where it has fewer
    let mut mine = vec![f32::NEG_INFINITY; b * k * 2];
    let pre = &ws.pre;
    mine.par_chunks_mut(k * 2)
        .enumerate()
        .for_each(|(r, slots)| {
            let row = &pre[r * m..(r + 1) * m];
            let mut ord: Vec<u32> = (0..m as u32).filter(|&f| eligible[f as usize]).collect();
            let n = k.min(ord.len());
            if n == 0 {
                return;
            }
            if n < ord.len() {
                ord.select_nth_unstable_by(n - 1, |&x, &y| {
                    row[y as usize].total_cmp(&row[x as usize])
                });
            }
            for (j, &f) in ord[..n].iter().enumerate() {
                slots[2 * j] = row[f as usize];
                // exact as f32 below 2²⁴ latents
                slots[2 * j + 1] = (shard.first + f as usize) as f32;
            }
        });
    let mut all = vec![0.0; mine.len() * ranks];
    comm.all_gather_f32(&mine, &mut all);
    let (lo, hi) = (shard.first, shard.first + m);
    let csr = if main { &mut ws.main } else { &mut ws.aux };
    csr.row_ptr.clear();
    csr.row_ptr.extend((0..=b).map(|r| r * k));
    csr.resize(b * k);
    csr.idx
        .par_chunks_mut(k)
        .zip(csr.a.par_chunks_mut(k))
        .enumerate()
        .for_each(|(r, (idx, a))| {
            let mut cand: Vec<(f32, usize)> = (0..ranks)
                .flat_map(|q| {
                    let s = &all[(q * b + r) * k * 2..][..k * 2];
                    s.chunks(2).map(|p| (p[0], p[1] as usize))
                })
                .filter(|(v, _)| *v > f32::NEG_INFINITY)
                .collect();
            cand.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            idx.iter_mut().for_each(|v| *v = 0);
            a.iter_mut().for_each(|v| *v = 0.0);
            let mut slot = 0;
            for &(v, f) in cand.iter().take(k) {
                if (lo..hi).contains(&f) {
                    idx[slot] = (f - lo) as u32;
                    a[slot] = v.max(0.0);
                    slot += 1;
                }
            }
        });
}
