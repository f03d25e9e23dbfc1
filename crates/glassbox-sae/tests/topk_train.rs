//! The hand-written TopK step: gradients against finite differences, and training
//! that actually reduces the reconstruction error.

use glassbox_sae::topk_train::{forward, gradients, grads, step, Adam, TopKSae, Workspace};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn data(b: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..b * d).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

#[test]
fn gradients_match_finite_differences() {
    let (d, m, k, b) = (8, 24, 3, 6);
    let mut sae = TopKSae::init(d, m, k, 1);
    // non-trivial biases so every path is exercised
    sae.b_dec
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = 0.05 * i as f32);
    sae.b_enc
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = 0.01 * (i % 5) as f32);
    let x = data(b, d, 2);
    let mut ws = Workspace::new(&sae, b);
    forward(&sae, &x, &mut ws);
    gradients(&sae, &mut ws);
    let (ge, gbe, gd, gbd) = grads(&ws);
    let (ge, gbe, gd, gbd) = (ge.to_vec(), gbe.to_vec(), gd.to_vec(), gbd.to_vec());
    let eps = 1e-3f32;
    let mut checked = 0;
    for (group, analytic) in [(0, &ge), (1, &gbe), (2, &gd), (3, &gbd)] {
        let gmax = analytic.iter().fold(0f32, |a, v| a.max(v.abs()));
        for i in (0..analytic.len()).step_by((analytic.len() / 7).max(1)) {
            let param = |s: &mut TopKSae| -> *mut f32 {
                match group {
                    0 => &mut s.w_enc_t[i],
                    1 => &mut s.b_enc[i],
                    2 => &mut s.w_dec[i],
                    _ => &mut s.b_dec[i],
                }
            };
            let orig = unsafe { *param(&mut sae) };
            unsafe { *param(&mut sae) = orig + eps };
            let up = forward(&sae, &x, &mut ws) as f64;
            unsafe { *param(&mut sae) = orig - eps };
            let down = forward(&sae, &x, &mut ws) as f64;
            unsafe { *param(&mut sae) = orig };
            let fd = (up - down) / (2.0 * eps as f64);
            let tol = 1e-2 * gmax as f64 + 1e-3;
            assert!(
                (fd - analytic[i] as f64).abs() < tol,
                "group {group} [{i}]: analytic {} vs finite difference {fd}",
                analytic[i]
            );
            checked += 1;
        }
    }
    assert!(checked > 20);
}

#[test]
fn training_reduces_the_error_on_sparse_data() {
    // data made of 4 active atoms out of 32, the setting TopK is for
    let (d, m_true, k, b) = (16, 32, 4, 256);
    let mut rng = StdRng::seed_from_u64(3);
    let atoms: Vec<f32> = (0..m_true * d)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let batch = |rng: &mut StdRng| -> Vec<f32> {
        let mut x = vec![0f32; b * d];
        for r in 0..b {
            for _ in 0..k {
                let a = rng.gen_range(0..m_true);
                let c = rng.gen_range(0.5f32..2.0);
                for i in 0..d {
                    x[r * d + i] += c * atoms[a * d + i];
                }
            }
        }
        x
    };
    let mut sae = TopKSae::init(d, 64, k, 4);
    let mut ws = Workspace::new(&sae, b);
    let mut opt = Adam::new(&sae, 3e-3);
    let eval = batch(&mut rng);
    let before = forward(&sae, &eval, &mut ws);
    for _ in 0..600 {
        let x = batch(&mut rng);
        step(&mut sae, &x, &mut ws, &mut opt);
    }
    let after = forward(&sae, &eval, &mut ws);
    let var: f32 = {
        let mean: Vec<f32> = (0..d)
            .map(|i| (0..b).map(|r| eval[r * d + i]).sum::<f32>() / b as f32)
            .collect();
        (0..b)
            .map(|r| {
                (0..d)
                    .map(|i| (eval[r * d + i] - mean[i]).powi(2))
                    .sum::<f32>()
            })
            .sum::<f32>()
            / b as f32
    };
    assert!(after < 0.25 * before, "mse {before} → {after}");
    assert!(
        after / var < 0.3,
        "fraction of variance unexplained {}",
        after / var
    );
}

#[test]
fn a_trained_sae_exports_as_a_dictionary_that_encodes_the_same() {
    use glassbox_sae::topk_train::selections;
    let (d, m, k, b) = (8, 24, 3, 6);
    let sae = TopKSae::init(d, m, k, 7);
    let x = data(b, d, 8);
    let mut ws = Workspace::new(&sae, b);
    let mse = forward(&sae, &x, &mut ws);
    let dict = sae
        .to_dictionary(Some("blocks.0.hook_resid_post".into()), None)
        .unwrap();
    let xt = candle_core::Tensor::from_slice(&x, (b, d), &candle_core::Device::Cpu).unwrap();
    let f: Vec<Vec<f32>> = dict.encode(&xt).unwrap().to_vec2().unwrap();
    let (idx, val) = selections(&ws);
    for r in 0..b {
        for j in 0..k {
            assert!((f[r][idx[r * k + j] as usize] - val[r * k + j]).abs() < 1e-5);
        }
    }
    let out = dict.decode(&dict.encode(&xt).unwrap(), None).unwrap();
    let err: f32 = (out - &xt)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        / b as f32;
    assert!((err - mse).abs() < 1e-4 * mse.max(1.0), "{err} vs {mse}");
}
