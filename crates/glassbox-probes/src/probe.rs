//! Linear probes for a truth direction: logistic regression (L2, standardised inputs),
//! mass-mean (difference of class means, optionally covariance-corrected), and CCS
//! (unsupervised, sign fixed with a few labels). A trained probe is folded back into
//! the raw activation space: `score(x) = w·x + b`, `p(true) = σ(score)`.

use crate::linalg::{cholesky_solve, dot};
use crate::{bad, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How a probe is trained; serialised (probe files, JSON reports) under the names of
/// [`Method::NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// L2-regularised logistic regression on standardised inputs ([`train_lr`])
    Lr,
    /// the difference of the class means, calibrated ([`train_mass_mean`])
    MassMean,
    /// mass-mean with the within-class covariance (Σ + λI)⁻¹ correction
    MassMeanCov,
    /// Contrast-Consistent Search on contrast pairs, unsupervised but for its sign
    /// ([`train_ccs`])
    Ccs,
}

impl Method {
    /// Each method with the name users type (`--method`).
    pub const NAMES: [(&'static str, Method); 4] = [
        ("lr", Method::Lr),
        ("mass-mean", Method::MassMean),
        ("mass-mean-cov", Method::MassMeanCov),
        ("ccs", Method::Ccs),
    ];

    /// One of the names in [`Method::NAMES`]; anything else is
    /// [`ProbeError::BadInput`](crate::ProbeError::BadInput).
    pub fn parse(s: &str) -> Result<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == s)
            .map(|&(_, m)| m)
            .ok_or_else(|| {
                bad(format!(
                    "unknown probe method `{s}`; use lr, mass-mean, mass-mean-cov or ccs"
                ))
            })
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(n, _)| n)
    }
}

/// A linear probe in raw activation space: `score(x) = weight·x + bias`,
/// `p(true) = σ(score)`. Any input standardisation is already folded in.
#[derive(Debug, Clone)]
pub struct Probe {
    /// how it was trained
    pub method: Method,
    /// `[d]`, one per activation dimension (the hook's row width)
    pub weight: Vec<f64>,
    /// added to `weight·x`
    pub bias: f64,
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Probe {
    /// The logit `weight·x + bias` of activation row `x` (`[d]`): positive means true.
    pub fn score(&self, x: &[f32]) -> f64 {
        self.weight
            .iter()
            .zip(x)
            .map(|(w, &v)| w * v as f64)
            .sum::<f64>()
            + self.bias
    }
    /// P(true) of activation row `x`: `σ(score(x))`.
    pub fn prob(&self, x: &[f32]) -> f64 {
        sigmoid(self.score(x))
    }
    /// Unit vector of the probe's direction.
    pub fn direction(&self) -> Vec<f64> {
        let n = dot(&self.weight, &self.weight).sqrt().max(1e-300);
        self.weight.iter().map(|w| w / n).collect()
    }
}

/// Per-feature mean and standard deviation of a training set, for `z = (x − μ)/σ`.
pub struct Standardiser {
    /// μ, `[d]`
    pub mean: Vec<f64>,
    /// σ, `[d]`: the population standard deviation, floored at 1e-6 so constant
    /// features do not divide by zero
    pub std: Vec<f64>,
}

impl Standardiser {
    /// Measures μ and σ over the rows `x` (each `[d]`). Panics when `x` is empty.
    pub fn fit(x: &[&[f32]]) -> Self {
        let d = x[0].len();
        let n = x.len() as f64;
        let mut mean = vec![0f64; d];
        for r in x {
            for (m, &v) in mean.iter_mut().zip(r.iter()) {
                *m += v as f64 / n;
            }
        }
        let mut var = vec![0f64; d];
        for r in x {
            for ((s, &v), m) in var.iter_mut().zip(r.iter()).zip(&mean) {
                *s += (v as f64 - m).powi(2) / n;
            }
        }
        Standardiser {
            mean,
            std: var.into_iter().map(|v| v.sqrt().max(1e-6)).collect(),
        }
    }
    /// `(x − μ)/σ` of one row.
    pub fn apply(&self, x: &[f32]) -> Vec<f64> {
        x.iter()
            .zip(&self.mean)
            .zip(&self.std)
            .map(|((&v, m), s)| (v as f64 - m) / s)
            .collect()
    }
    /// `w·z + b` with `z = (x − μ)/σ` becomes `w'·x + b'`.
    fn fold(&self, w: &[f64], b: f64, method: Method) -> Probe {
        let weight: Vec<f64> = w.iter().zip(&self.std).map(|(w, s)| w / s).collect();
        let bias = b - weight
            .iter()
            .zip(&self.mean)
            .map(|(w, m)| w * m)
            .sum::<f64>();
        Probe {
            method,
            weight,
            bias,
        }
    }
}

fn check(x: &[&[f32]], y: &[u8]) -> Result<()> {
    if x.is_empty() || x.len() != y.len() {
        return Err(bad(format!("{} examples but {} labels", x.len(), y.len())));
    }
    let pos = y.iter().filter(|&&l| l == 1).count();
    if pos == 0 || pos == y.len() {
        return Err(bad(
            "training data has a single class; a probe needs true and false examples",
        ));
    }
    Ok(())
}

/// L2-regularised logistic regression by Newton's method (at most 25 steps) on
/// standardised inputs, folded back into raw space. `x` holds one row `[d]` per
/// example, `y` its label (1 true, 0 false); `l2` is the penalty on the standardised
/// weights (the bias is not penalised; the sweeps use 1.0). Errors: no examples, a
/// length mismatch, a single class, a singular Hessian.
pub fn train_lr(x: &[&[f32]], y: &[u8], l2: f64) -> Result<Probe> {
    check(x, y)?;
    let st = Standardiser::fit(x);
    let z: Vec<Vec<f64>> = x.iter().map(|r| st.apply(r)).collect();
    let d = z[0].len();
    let p1 = d + 1; // weights then bias
    let mut w = vec![0f64; p1];
    for _ in 0..25 {
        let mut grad = vec![0f64; p1];
        let mut hess = vec![0f64; p1 * p1];
        for (zi, &yi) in z.iter().zip(y) {
            let s = dot(&w[..d], zi) + w[d];
            let p = sigmoid(s);
            let r = p - yi as f64;
            let h = (p * (1.0 - p)).max(1e-9);
            for a in 0..p1 {
                let xa = if a < d { zi[a] } else { 1.0 };
                grad[a] += r * xa;
                for b in 0..=a {
                    let xb = if b < d { zi[b] } else { 1.0 };
                    hess[a * p1 + b] += h * xa * xb;
                }
            }
        }
        for a in 0..p1 {
            for b in 0..a {
                hess[b * p1 + a] = hess[a * p1 + b];
            }
            if a < d {
                grad[a] += l2 * w[a];
                hess[a * p1 + a] += l2;
            } else {
                hess[a * p1 + a] += 1e-6;
            }
        }
        let step = cholesky_solve(&hess, &grad, p1)
            .ok_or_else(|| bad("logistic regression: singular Hessian"))?;
        let mut largest = 0f64;
        for (wi, si) in w.iter_mut().zip(&step) {
            *wi -= si;
            largest = largest.max(si.abs());
        }
        if largest < 1e-8 {
            break;
        }
    }
    Ok(st.fold(&w[..d], w[d], Method::Lr))
}

/// A 1-D logistic fit `σ(a·s + c)` of projections `s`, so mass-mean probes give
/// calibrated probabilities and a threshold.
fn calibrate(s: &[f64], y: &[u8]) -> (f64, f64) {
    let (mut a, mut c) = (1.0f64, 0.0f64);
    for _ in 0..50 {
        let (mut ga, mut gc, mut haa, mut hac, mut hcc) = (0.0, 0.0, 1e-6, 0.0, 1e-6);
        for (&si, &yi) in s.iter().zip(y) {
            let p = sigmoid(a * si + c);
            let r = p - yi as f64;
            let h = (p * (1.0 - p)).max(1e-9);
            ga += r * si;
            gc += r;
            haa += h * si * si;
            hac += h * si;
            hcc += h;
        }
        // small ridge keeps separable data finite
        ga += 1e-3 * a;
        haa += 1e-3;
        let det = haa * hcc - hac * hac;
        if det.abs() < 1e-300 {
            break;
        }
        let (da, dc) = ((hcc * ga - hac * gc) / det, (haa * gc - hac * ga) / det);
        a -= da;
        c -= dc;
        if da.abs().max(dc.abs()) < 1e-10 {
            break;
        }
    }
    (a, c)
}

/// Mass-mean probe: the difference of the class means in raw space (with
/// `covariance`, solved against the pooled within-class covariance plus `ridge` times
/// its mean variance on the diagonal), then calibrated by a 1-D logistic fit of the
/// projections so that `prob` is a probability and 0.5 a threshold. The sweeps use
/// `ridge` 0.1. Errors: no examples, a length mismatch, a single class, a covariance
/// that is not positive definite.
pub fn train_mass_mean(x: &[&[f32]], y: &[u8], covariance: bool, ridge: f64) -> Result<Probe> {
    check(x, y)?;
    let d = x[0].len();
    let mut mu = [vec![0f64; d], vec![0f64; d]];
    let mut count = [0f64; 2];
    for (r, &l) in x.iter().zip(y) {
        count[l as usize] += 1.0;
        for (m, &v) in mu[l as usize].iter_mut().zip(r.iter()) {
            *m += v as f64;
        }
    }
    for c in 0..2 {
        mu[c].iter_mut().for_each(|m| *m /= count[c]);
    }
    let diff: Vec<f64> = mu[1].iter().zip(&mu[0]).map(|(a, b)| a - b).collect();
    let mut dir = diff.clone();
    if covariance {
        let mut cov = vec![0f64; d * d];
        for (r, &l) in x.iter().zip(y) {
            let c: Vec<f64> = r
                .iter()
                .zip(&mu[l as usize])
                .map(|(&v, m)| v as f64 - m)
                .collect();
            for i in 0..d {
                for j in 0..=i {
                    cov[i * d + j] += c[i] * c[j] / x.len() as f64;
                }
            }
        }
        let scale = (0..d).map(|i| cov[i * d + i]).sum::<f64>() / d as f64;
        for i in 0..d {
            for j in 0..i {
                cov[j * d + i] = cov[i * d + j];
            }
            cov[i * d + i] += ridge * scale.max(1e-12);
        }
        dir = cholesky_solve(&cov, &diff, d)
            .ok_or_else(|| bad("mass-mean: covariance is not positive definite"))?;
    }
    let mid: Vec<f64> = mu[0]
        .iter()
        .zip(&mu[1])
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    let proj: Vec<f64> = x
        .iter()
        .map(|r| {
            r.iter()
                .zip(&dir)
                .zip(&mid)
                .map(|((&v, w), m)| w * (v as f64 - m))
                .sum()
        })
        .collect();
    let (a, c) = calibrate(&proj, y);
    let weight: Vec<f64> = dir.iter().map(|w| w * a).collect();
    let bias = c - weight.iter().zip(&mid).map(|(w, m)| w * m).sum::<f64>();
    Ok(Probe {
        method: if covariance {
            Method::MassMeanCov
        } else {
            Method::MassMean
        },
        weight,
        bias,
    })
}

/// The CCS objective for one contrast pair: consistency `(p⁺ − (1 − p⁻))²` plus
/// confidence `min(p⁺, p⁻)²` (Burns et al. 2022).
pub fn ccs_loss(p_pos: f64, p_neg: f64) -> f64 {
    (p_pos - (1.0 - p_neg)).powi(2) + p_pos.min(p_neg).powi(2)
}

/// A CCS probe: `p(true) = ½(p⁺ + 1 − p⁻)`, with `p± = σ(θ·norm±(x±) + b)`.
pub struct CcsProbe {
    /// θ, `[d]`, on standardised activations
    pub theta: Vec<f64>,
    /// b
    pub bias: f64,
    /// standardises the "… This statement is true." completions (`norm⁺`)
    pub norm_pos: Standardiser,
    /// standardises the "… This statement is false." completions (`norm⁻`)
    pub norm_neg: Standardiser,
    /// mean CCS loss on the training pairs
    pub loss: f64,
}

impl CcsProbe {
    /// P(true) of one contrast pair, from the activation rows of its true (`pos`) and
    /// false (`neg`) completions.
    pub fn prob(&self, pos: &[f32], neg: &[f32]) -> f64 {
        let pp = sigmoid(dot(&self.theta, &self.norm_pos.apply(pos)) + self.bias);
        let pn = sigmoid(dot(&self.theta, &self.norm_neg.apply(neg)) + self.bias);
        0.5 * (pp + 1.0 - pn)
    }
    /// The probe on the "true" completion alone, in raw space (for monitoring).
    pub fn as_linear(&self) -> Probe {
        self.norm_pos.fold(&self.theta, self.bias, Method::Ccs)
    }
}

/// Trains CCS (Burns et al. 2022) on contrast pairs without labels: `pos[i]` and
/// `neg[i]` are the activation rows of pair `i`'s true and false completions
/// ([`contrast_pair`](crate::dataset::contrast_pair)), each side standardised on its
/// own. Adam (learning rate 0.01, 800 steps) from 5 restarts seeded by `seed`, the
/// lowest mean [`ccs_loss`] kept; then the sign is flipped if most of `sign_labels`
/// (`(pair index, label)`) disagree with it. Errors: fewer than two pairs, or unequal
/// `pos` and `neg`.
pub fn train_ccs(
    pos: &[&[f32]],
    neg: &[&[f32]],
    sign_labels: &[(usize, u8)],
    seed: u64,
) -> Result<CcsProbe> {
    if pos.len() != neg.len() || pos.len() < 2 {
        return Err(bad(
            "CCS needs at least two contrast pairs, each with a true and a false completion",
        ));
    }
    let (np, nn) = (Standardiser::fit(pos), Standardiser::fit(neg));
    let zp: Vec<Vec<f64>> = pos.iter().map(|r| np.apply(r)).collect();
    let zn: Vec<Vec<f64>> = neg.iter().map(|r| nn.apply(r)).collect();
    let d = zp[0].len();
    let n = zp.len() as f64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut best: Option<(f64, Vec<f64>, f64)> = None;
    for _restart in 0..5 {
        let mut th: Vec<f64> = (0..d)
            .map(|_| rng.gen_range(-1.0..1.0) / (d as f64).sqrt())
            .collect();
        let mut b = 0f64;
        let (mut m, mut v) = (vec![0f64; d + 1], vec![0f64; d + 1]);
        let (lr, b1, b2) = (1e-2, 0.9, 0.999);
        for t in 1..=800 {
            let mut g = vec![0f64; d + 1];
            for (xp, xn) in zp.iter().zip(&zn) {
                let pp = sigmoid(dot(&th, xp) + b);
                let pn = sigmoid(dot(&th, xn) + b);
                let cons = 2.0 * (pp + pn - 1.0);
                let (mut dp, mut dn) = (cons, cons);
                if pp < pn {
                    dp += 2.0 * pp;
                } else {
                    dn += 2.0 * pn;
                }
                let (gp, gn) = (dp * pp * (1.0 - pp) / n, dn * pn * (1.0 - pn) / n);
                for k in 0..d {
                    g[k] += gp * xp[k] + gn * xn[k];
                }
                g[d] += gp + gn;
            }
            for k in 0..=d {
                m[k] = b1 * m[k] + (1.0 - b1) * g[k];
                v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k];
                let step =
                    lr * (m[k] / (1.0 - b1.powi(t))) / ((v[k] / (1.0 - b2.powi(t))).sqrt() + 1e-8);
                if k < d {
                    th[k] -= step;
                } else {
                    b -= step;
                }
            }
        }
        let loss = zp
            .iter()
            .zip(&zn)
            .map(|(xp, xn)| ccs_loss(sigmoid(dot(&th, xp) + b), sigmoid(dot(&th, xn) + b)))
            .sum::<f64>()
            / n;
        if best.as_ref().is_none_or(|(l, _, _)| loss < *l) {
            best = Some((loss, th, b));
        }
    }
    let (loss, theta, bias) = best.expect("at least one restart");
    let mut probe = CcsProbe {
        theta,
        bias,
        norm_pos: np,
        norm_neg: nn,
        loss,
    };
    // CCS cannot tell true from false; a few labels choose the orientation.
    let agree = sign_labels
        .iter()
        .filter(|&&(i, l)| (probe.prob(pos[i], neg[i]) > 0.5) == (l == 1))
        .count();
    if !sign_labels.is_empty() && 2 * agree < sign_labels.len() {
        probe.theta.iter_mut().for_each(|t| *t = -*t);
        // σ(−z) = 1 − σ(z) only holds with the bias negated too
        probe.bias = -probe.bias;
    }
    Ok(probe)
}
