//! Adam with bias correction over every parameter tensor, global-norm gradient
//! clipping, and the unit-norm decoder constraint. State is allocated once.

use super::params::Params;
use rayon::prelude::*;

/// Adam (Kingma & Ba 2015) over a [`Params`]: one first and one second moment per
/// parameter, shaped like it.
pub struct Adam {
    /// first-moment decay
    pub beta1: f32,
    /// second-moment decay
    pub beta2: f32,
    /// added to `√v̂` in the denominator (1e-8)
    pub eps: f32,
    /// steps taken (bias correction)
    pub t: i32,
    /// first moments (running mean of the gradients)
    pub m: Params,
    /// second moments (running mean of the squared gradients)
    pub v: Params,
}

impl Adam {
    /// Zero moments shaped like `params`, no steps taken.
    pub fn new(params: &Params, beta1: f32, beta2: f32) -> Self {
        Adam {
            beta1,
            beta2,
            eps: 1e-8,
            t: 0,
            m: params.zeros_like(),
            v: params.zeros_like(),
        }
    }

    /// One update with learning rate `lr`; gradients are multiplied by `grad_scale`
    /// first (clipping).
    pub fn update(&mut self, params: &mut Params, grads: &Params, lr: f32, grad_scale: f32) {
        self.t += 1;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        let ms = self.m.tensors_mut();
        let vs = self.v.tensors_mut();
        for (((p, g), m), v) in params
            .tensors_mut()
            .into_iter()
            .zip(grads.tensors())
            .zip(ms)
            .zip(vs)
        {
            const CHUNK: usize = 4096;
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    for i in 0..p.len() {
                        let g = g[i] * grad_scale;
                        m[i] = b1 * m[i] + (1.0 - b1) * g;
                        v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                        p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
                    }
                });
        }
    }

    /// Forgets the moments of the given latents (after resampling them).
    pub fn reset_latents(&mut self, latents: &[usize], d_in: usize, d_out: usize) {
        for state in [&mut self.m, &mut self.v] {
            for &f in latents {
                state.w_enc_t[f * d_in..(f + 1) * d_in].fill(0.0);
                state.w_dec[f * d_out..(f + 1) * d_out].fill(0.0);
                state.b_enc[f] = 0.0;
                for t in [&mut state.log_threshold, &mut state.r_mag, &mut state.b_mag] {
                    if let Some(v) = t.get_mut(f) {
                        *v = 0.0;
                    }
                }
            }
        }
    }
}

/// The global L2 norm of all gradients.
pub fn grad_norm(grads: &Params) -> f32 {
    grads
        .tensors()
        .iter()
        .map(|t| t.par_iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt() as f32
}

/// Removes from each decoder-row gradient its component along the row, so a step
/// moves the row's direction, not its length (Bricken et al. 2023).
pub fn remove_parallel_component(w_dec: &[f32], g_w_dec: &mut [f32], width: usize) {
    g_w_dec
        .par_chunks_mut(width)
        .zip(w_dec.par_chunks(width))
        .for_each(|(g, w)| {
            let ww: f32 = w.iter().map(|v| v * v).sum();
            if ww > 0.0 {
                let s = g.iter().zip(w).map(|(g, w)| g * w).sum::<f32>() / ww;
                g.iter_mut().zip(w).for_each(|(g, w)| *g -= s * w);
            }
        });
}

/// Scales every decoder row to unit norm.
pub fn normalize_rows(w_dec: &mut [f32], width: usize) {
    w_dec.par_chunks_mut(width).for_each(|row| {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if n > 0.0 {
            row.iter_mut().for_each(|v| *v /= n);
        }
    });
}
