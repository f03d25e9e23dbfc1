//! Every probe recovers a planted truth direction from synthetic activations.

use glassbox_probes::linalg::cosine;
use glassbox_probes::metrics::{accuracy, auroc};
use glassbox_probes::probe::{ccs_loss, train_ccs, train_lr, train_mass_mean};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const D: usize = 32;

fn gaussian(rng: &mut StdRng) -> f64 {
    // Box–Muller
    let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen_range(0.0..1.0));
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn planted(seed: u64, n: usize) -> (Vec<f64>, Vec<Vec<f32>>, Vec<u8>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut u: Vec<f64> = (0..D).map(|_| gaussian(&mut rng)).collect();
    let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
    u.iter_mut().for_each(|x| *x /= norm);
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for i in 0..n {
        let y = (i % 2) as u8;
        let s = if y == 1 { 1.5 } else { -1.5 };
        xs.push(
            (0..D)
                .map(|k| (gaussian(&mut rng) + s * u[k] + 3.0) as f32)
                .collect(),
        );
        ys.push(y);
    }
    (u, xs, ys)
}

fn refs(x: &[Vec<f32>]) -> Vec<&[f32]> {
    x.iter().map(Vec::as_slice).collect()
}

#[test]
fn logistic_regression_and_mass_mean_recover_the_direction() {
    let (u, x, y) = planted(1, 1400);
    let (xt, yt) = (&x[..1000], &y[..1000]);
    let (xe, ye) = (&x[1000..], &y[1000..]);
    for probe in [
        train_lr(&refs(xt), yt, 1.0).unwrap(),
        train_mass_mean(&refs(xt), yt, false, 0.0).unwrap(),
        train_mass_mean(&refs(xt), yt, true, 1e-3).unwrap(),
    ] {
        let cos = cosine(&probe.direction(), &u);
        assert!(cos > 0.9, "{:?}: cosine {cos}", probe.method);
        let scores: Vec<f64> = xe.iter().map(|r| probe.prob(r)).collect();
        // the Bayes accuracy for separation ±1.5 in unit noise is Φ(1.5) ≈ 0.93
        let acc = accuracy(&scores, ye, 0.5);
        assert!(acc > 0.88, "{:?}: held-out accuracy {acc}", probe.method);
        assert!(auroc(&scores, ye).unwrap() > 0.95);
    }
}

#[test]
fn ccs_recovers_the_direction_without_labels_and_is_deterministic() {
    let mut rng = StdRng::seed_from_u64(5);
    let (u, base, y) = planted(2, 600);
    // contrast pairs: the "true" completion moves along +u when the statement is true
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for (b, &l) in base.iter().zip(&y) {
        let s = if l == 1 { 1.0 } else { -1.0 };
        pos.push(
            b.iter()
                .zip(&u)
                .map(|(&v, &uk)| v + (s * 1.5 * uk + 0.3 * gaussian(&mut rng)) as f32)
                .collect::<Vec<f32>>(),
        );
        neg.push(
            b.iter()
                .zip(&u)
                .map(|(&v, &uk)| v - (s * 1.5 * uk + 0.3 * gaussian(&mut rng)) as f32)
                .collect::<Vec<f32>>(),
        );
    }
    let labels: Vec<(usize, u8)> = (0..8).map(|i| (i, y[i])).collect();
    let probe = train_ccs(&refs(&pos[..500]), &refs(&neg[..500]), &labels, 0).unwrap();
    let cos = cosine(&probe.as_linear().direction(), &u);
    assert!(
        cos > 0.9,
        "cosine {cos} (raw-space direction of the true completion)"
    );
    let scores: Vec<f64> = (500..600).map(|i| probe.prob(&pos[i], &neg[i])).collect();
    let acc = accuracy(&scores, &y[500..], 0.5);
    assert!(
        acc > 0.9,
        "held-out accuracy {acc} (sign fixed by 8 labels)"
    );
    assert!(probe.loss < 0.2, "loss {}", probe.loss);
    let again = train_ccs(&refs(&pos[..500]), &refs(&neg[..500]), &labels, 0).unwrap();
    assert_eq!(probe.theta, again.theta, "same seed, same probe");
}

#[test]
fn ccs_loss_is_consistency_plus_confidence() {
    assert!((ccs_loss(0.8, 0.2) - 0.04).abs() < 1e-12);
    assert!((ccs_loss(0.5, 0.5) - 0.25).abs() < 1e-12);
    assert!((ccs_loss(1.0, 0.0) - 0.0).abs() < 1e-12);
    assert!((ccs_loss(0.9, 0.9) - (0.64 + 0.81)).abs() < 1e-12);
}

#[test]
fn single_class_training_data_is_refused() {
    let (_, x, _) = planted(3, 10);
    let y = vec![1u8; 10];
    let e = train_lr(&refs(&x), &y, 1.0).unwrap_err().to_string();
    assert!(e.contains("single class"), "{e}");
    assert!(train_mass_mean(&refs(&x), &y, false, 0.0).is_err());
}
