//! A hand-written TopK SAE training step. Only the encoder is a dense GEMM; selection,
//! decoding, the loss and both backward passes touch k of d_sae features per token,
//! and the weight gradients are gathered per feature, so threads never contend.
//! Buffers live in a `Workspace` allocated once: no allocation in the hot loop.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// Parameters, SAELens layout except the encoder, stored transposed so a feature's
/// encoder weights are one contiguous row.
pub struct TopKSae {
    pub d_in: usize,
    pub d_sae: usize,
    pub k: usize,
    /// `[d_sae, d_in]` = `W_encᵀ`
    pub w_enc_t: Vec<f32>,
    pub b_enc: Vec<f32>,
    /// `[d_sae, d_in]`
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
}

impl TopKSae {
    /// Decoder rows drawn at random and scaled to unit norm, encoder = decoderᵀ (the
    /// usual TopK initialisation), zero biases.
    pub fn init(d_in: usize, d_sae: usize, k: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut w_dec: Vec<f32> = (0..d_sae * d_in)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        for row in w_dec.chunks_mut(d_in) {
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|v| *v /= n);
        }
        TopKSae {
            d_in,
            d_sae,
            k,
            w_enc_t: w_dec.clone(),
            b_enc: vec![0.0; d_sae],
            w_dec,
            b_dec: vec![0.0; d_in],
        }
    }
}

/// Every buffer a step needs, for a fixed batch size.
pub struct Workspace {
    batch: usize,
    sae_in: Vec<f32>,
    pre: Vec<f32>,
    idx: Vec<u32>,
    val: Vec<f32>,
    dpre: Vec<f32>,
    /// reconstruction error, then d(loss)/d(reconstruction)
    err: Vec<f32>,
    /// d(loss)/d(sae_in) through the encoder
    dsae_in: Vec<f32>,
    order: Vec<Vec<u32>>,
    g_w_enc_t: Vec<f32>,
    g_b_enc: Vec<f32>,
    g_w_dec: Vec<f32>,
    g_b_dec: Vec<f32>,
    /// per feature: (row, slot) of every selection, grouped
    by_feature: Vec<(u32, u32)>,
    offsets: Vec<usize>,
}

impl Workspace {
    pub fn new(sae: &TopKSae, batch: usize) -> Self {
        let (d, m, k) = (sae.d_in, sae.d_sae, sae.k);
        Workspace {
            batch,
            sae_in: vec![0.0; batch * d],
            pre: vec![0.0; batch * m],
            idx: vec![0; batch * k],
            val: vec![0.0; batch * k],
            dpre: vec![0.0; batch * k],
            err: vec![0.0; batch * d],
            dsae_in: vec![0.0; batch * d],
            order: (0..rayon::current_num_threads().max(1))
                .map(|_| (0..m as u32).collect())
                .collect(),
            g_w_enc_t: vec![0.0; m * d],
            g_b_enc: vec![0.0; m],
            g_w_dec: vec![0.0; m * d],
            g_b_dec: vec![0.0; d],
            by_feature: vec![(0, 0); batch * k],
            offsets: vec![0; m + 1],
        }
    }
}

/// Adam with bias correction, state allocated once.
pub struct Adam {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    t: i32,
    m: [Vec<f32>; 4],
    v: [Vec<f32>; 4],
}

impl Adam {
    pub fn new(sae: &TopKSae, lr: f32) -> Self {
        let sizes = [
            sae.w_enc_t.len(),
            sae.b_enc.len(),
            sae.w_dec.len(),
            sae.b_dec.len(),
        ];
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            m: sizes.map(|n| vec![0.0; n]),
            v: sizes.map(|n| vec![0.0; n]),
        }
    }
}

/// One step's Adam constants (bias corrections included).
#[derive(Clone, Copy)]
struct AdamStep {
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    c1: f32,
    c2: f32,
}

fn adam_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], a: AdamStep) {
    const CHUNK: usize = 4096;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for i in 0..p.len() {
                m[i] = a.b1 * m[i] + (1.0 - a.b1) * g[i];
                v[i] = a.b2 * v[i] + (1.0 - a.b2) * g[i] * g[i];
                p[i] -= a.lr * (m[i] / a.c1) / ((v[i] / a.c2).sqrt() + a.eps);
            }
        });
}

#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// mean over tokens of ‖x̂ − x‖²
    pub mse: f32,
}

/// Forward pass and loss only (no update): fills the workspace's activations.
pub fn forward(sae: &TopKSae, x: &[f32], ws: &mut Workspace) -> f32 {
    let (d, m, k, b) = (sae.d_in, sae.d_sae, sae.k, ws.batch);
    assert_eq!(x.len(), b * d, "batch must be [batch, d_in]");
    ws.sae_in
        .par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(s, x)| {
            for i in 0..d {
                s[i] = x[i] - sae.b_dec[i];
            }
        });
    ws.pre
        .par_chunks_mut(m)
        .for_each(|row| row.copy_from_slice(&sae.b_enc));
    // SAFETY: pre is b×m, sae_in is b×d, w_enc_t is m×d read as its transpose.
    unsafe {
        gemm::gemm(
            b,
            m,
            d,
            ws.pre.as_mut_ptr(),
            1,
            m as isize,
            true,
            ws.sae_in.as_ptr(),
            1,
            d as isize,
            sae.w_enc_t.as_ptr(),
            d as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
    // top-k per row, then ReLU; reconstruction error
    let chunk = b.div_ceil(ws.order.len());
    let (pre, idx, val, err, order) = (
        &ws.pre,
        &mut ws.idx,
        &mut ws.val,
        &mut ws.err,
        &mut ws.order,
    );
    let sq: f32 = order
        .par_iter_mut()
        .zip(idx.par_chunks_mut(chunk * k))
        .zip(val.par_chunks_mut(chunk * k))
        .zip(err.par_chunks_mut(chunk * d))
        .enumerate()
        .map(|(c, (((ord, idx), val), err))| {
            let mut sum = 0f32;
            for (r, e) in err.chunks_mut(d).enumerate() {
                let row = &pre[(c * chunk + r) * m..(c * chunk + r + 1) * m];
                ord.iter_mut().enumerate().for_each(|(i, o)| *o = i as u32);
                ord.select_nth_unstable_by(k - 1, |&a, &bb| {
                    row[bb as usize].total_cmp(&row[a as usize])
                });
                e.copy_from_slice(&sae.b_dec);
                for j in 0..k {
                    let f = ord[j] as usize;
                    let v = row[f].max(0.0);
                    idx[r * k + j] = f as u32;
                    val[r * k + j] = v;
                    if v > 0.0 {
                        let w = &sae.w_dec[f * d..(f + 1) * d];
                        for i in 0..d {
                            e[i] += v * w[i];
                        }
                    }
                }
                let xr = &x[(c * chunk + r) * d..(c * chunk + r + 1) * d];
                for i in 0..d {
                    e[i] -= xr[i];
                    sum += e[i] * e[i];
                }
            }
            sum
        })
        .sum();
    sq / b as f32
}

/// One training step on `x` `[batch, d_in]`: MSE loss, backward, Adam.
pub fn step(sae: &mut TopKSae, x: &[f32], ws: &mut Workspace, opt: &mut Adam) -> StepStats {
    let mse = forward(sae, x, ws);
    gradients(sae, ws);
    opt.t += 1;
    let a = AdamStep {
        lr: opt.lr,
        b1: opt.beta1,
        b2: opt.beta2,
        eps: opt.eps,
        c1: 1.0 - opt.beta1.powi(opt.t),
        c2: 1.0 - opt.beta2.powi(opt.t),
    };
    let [m0, m1, m2, m3] = &mut opt.m;
    let [v0, v1, v2, v3] = &mut opt.v;
    adam_update(&mut sae.w_enc_t, &ws.g_w_enc_t, m0, v0, a);
    adam_update(&mut sae.b_enc, &ws.g_b_enc, m1, v1, a);
    adam_update(&mut sae.w_dec, &ws.g_w_dec, m2, v2, a);
    adam_update(&mut sae.b_dec, &ws.g_b_dec, m3, v3, a);
    StepStats { mse }
}

/// Gradients of the mean ‖x̂ − x‖² into the workspace (after `forward`).
pub fn gradients(sae: &TopKSae, ws: &mut Workspace) {
    let (d, m, k, b) = (sae.d_in, sae.d_sae, sae.k, ws.batch);
    debug_assert_eq!(ws.offsets.len(), m + 1);
    let scale = 2.0 / b as f32;
    // d loss / d x̂ = 2 (x̂ − x) / batch; d loss / d pre_j = (g · W_dec[f_j]) · [pre_j > 0]
    ws.err
        .par_chunks_mut(d)
        .zip(ws.dpre.par_chunks_mut(k))
        .zip(ws.idx.par_chunks(k).zip(ws.val.par_chunks(k)))
        .for_each(|((g, dp), (idx, val))| {
            g.iter_mut().for_each(|v| *v *= scale);
            for j in 0..k {
                let f = idx[j] as usize;
                dp[j] = if val[j] > 0.0 {
                    g.iter()
                        .zip(&sae.w_dec[f * d..(f + 1) * d])
                        .map(|(a, w)| a * w)
                        .sum()
                } else {
                    0.0
                };
            }
        });
    // group selections by feature (counting sort) so each feature's gradient row has one writer
    ws.offsets.iter_mut().for_each(|o| *o = 0);
    for &f in &ws.idx {
        ws.offsets[f as usize + 1] += 1;
    }
    for f in 0..m {
        ws.offsets[f + 1] += ws.offsets[f];
    }
    let mut fill = ws.offsets.clone();
    for (slot, &f) in ws.idx.iter().enumerate() {
        ws.by_feature[fill[f as usize]] = ((slot / k) as u32, (slot % k) as u32);
        fill[f as usize] += 1;
    }
    let (offsets, by_feature, val, dpre, err, sae_in) = (
        &ws.offsets,
        &ws.by_feature,
        &ws.val,
        &ws.dpre,
        &ws.err,
        &ws.sae_in,
    );
    ws.g_w_dec
        .par_chunks_mut(d)
        .zip(ws.g_w_enc_t.par_chunks_mut(d))
        .zip(ws.g_b_enc.par_iter_mut())
        .enumerate()
        .for_each(|(f, ((gd, ge), gb))| {
            gd.iter_mut().for_each(|v| *v = 0.0);
            ge.iter_mut().for_each(|v| *v = 0.0);
            *gb = 0.0;
            for &(r, j) in &by_feature[offsets[f]..offsets[f + 1]] {
                let (r, slot) = (r as usize, r as usize * k + j as usize);
                let (v, dp) = (val[slot], dpre[slot]);
                let g = &err[r * d..(r + 1) * d];
                let s = &sae_in[r * d..(r + 1) * d];
                for i in 0..d {
                    gd[i] += v * g[i];
                    ge[i] += dp * s[i];
                }
                *gb += dp;
            }
        });
    // b_dec: + Σ g (decoder) − Σ d loss/d sae_in (it is subtracted at the encoder input)
    ws.dsae_in
        .par_chunks_mut(d)
        .enumerate()
        .for_each(|(r, ds)| {
            ds.copy_from_slice(&err[r * d..(r + 1) * d]);
            for j in 0..k {
                let dp = dpre[r * k + j];
                if dp != 0.0 {
                    let f = ws.idx[r * k + j] as usize;
                    for (o, w) in ds.iter_mut().zip(&sae.w_enc_t[f * d..(f + 1) * d]) {
                        *o -= dp * w;
                    }
                }
            }
        });
    ws.g_b_dec.iter_mut().for_each(|v| *v = 0.0);
    for row in ws.dsae_in.chunks(d) {
        for (g, v) in ws.g_b_dec.iter_mut().zip(row) {
            *g += v;
        }
    }
}

/// Gradient buffers after `gradients`, for tests: (W_encᵀ, b_enc, W_dec, b_dec).
pub fn grads(ws: &Workspace) -> (&[f32], &[f32], &[f32], &[f32]) {
    (&ws.g_w_enc_t, &ws.g_b_enc, &ws.g_w_dec, &ws.g_b_dec)
}

/// The last forward's selections: feature ids and their (post-ReLU) values, `k` per row.
pub fn selections(ws: &Workspace) -> (&[u32], &[f32]) {
    (&ws.idx, &ws.val)
}

impl TopKSae {
    /// `b_dec` at the data mean (SAELens' `b_dec_init_method = "mean"`).
    pub fn init_b_dec_mean(&mut self, rows: &[f32]) {
        let n = (rows.len() / self.d_in).max(1) as f32;
        self.b_dec.iter_mut().for_each(|b| *b = 0.0);
        for r in rows.chunks(self.d_in) {
            for (b, v) in self.b_dec.iter_mut().zip(r) {
                *b += v / n;
            }
        }
    }

    /// As a SAELens-layout dictionary (for saving and for encode/decode elsewhere).
    pub fn to_dictionary(
        &self,
        hook_name: Option<String>,
        model_name: Option<String>,
    ) -> candle_core::Result<crate::Dictionary> {
        use candle_core::{Device, Tensor};
        let dev = &Device::Cpu;
        Ok(crate::Dictionary {
            architecture: crate::Architecture::TopK,
            d_in: self.d_in,
            d_sae: self.d_sae,
            d_out: self.d_in,
            k: Some(self.k),
            apply_b_dec_to_input: true,
            w_enc: Tensor::from_slice(&self.w_enc_t, (self.d_sae, self.d_in), dev)?
                .t()?
                .contiguous()?,
            b_enc: Some(Tensor::from_slice(&self.b_enc, self.d_sae, dev)?),
            w_dec: Tensor::from_slice(&self.w_dec, (self.d_sae, self.d_in), dev)?,
            b_dec: Tensor::from_slice(&self.b_dec, self.d_in, dev)?,
            threshold: None,
            b_gate: None,
            r_mag: None,
            b_mag: None,
            w_skip: None,
            hook_name,
            hook_name_out: None,
            model_name,
            extra_cfg: Default::default(),
        })
    }
}
