//! The training kernels for every architecture: gradients against finite differences
//! (sparse and dense kernels, SAEs and transcoders with a skip connection, AuxK), the
//! two kernels agreeing with each other, normalisation folding on save, and resuming
//! from a checkpoint reaching the same parameters as an uninterrupted run.

use glassbox_sae::train::{checkpoint, Losses, Params, TrainArch, TrainConfig, Trainer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

fn config(arch: TrainArch) -> TrainConfig {
    TrainConfig {
        arch,
        d_in: 8,
        d_sae: 24,
        k: 3,
        batch: 6,
        seed: 1,
        aux_k: Some(4),
        aux_k_coefficient: 0.5,
        jumprelu_bandwidth: 0.05,
        sparsity_coefficient: 0.3,
        ..TrainConfig::default()
    }
}

/// Non-trivial values in every parameter so every path is exercised.
fn perturb(p: &mut Params, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for t in p.tensors_mut() {
        for v in t.iter_mut() {
            *v += rng.gen_range(-0.1f32..0.1);
        }
    }
    for v in p.log_threshold.iter_mut() {
        *v = rng.gen_range(0.05f32..0.4).ln();
    }
}

/// Analytic gradients against central finite differences of `objective(losses)`, over
/// the elements `include(tensor, element)` selects; returns (compared, disagreeing,
/// messages).
fn compare(
    t: &mut Trainer,
    x: &[f32],
    y: Option<&[f32]>,
    dead: Option<&[bool]>,
    objective: impl Fn(&Losses) -> f32,
    include: impl Fn(usize, usize) -> bool,
) -> (usize, usize, Vec<String>) {
    let lambda = t.cfg.sparsity_coefficient;
    t.loss_and_gradients(x, y, lambda, dead);
    let grads = t.gradients().clone();
    let eps = 1e-3f32;
    let (mut checked, mut bad, mut msgs) = (0, 0, Vec::new());
    for ti in 0..8 {
        let analytic = grads.tensors()[ti].clone();
        let gmax = analytic.iter().fold(0f32, |a, v| a.max(v.abs()));
        let candidates: Vec<usize> = (0..analytic.len()).filter(|&i| include(ti, i)).collect();
        for &i in candidates.iter().step_by((candidates.len() / 9).max(1)) {
            let orig = t.params.tensors()[ti][i];
            t.params.tensors_mut()[ti][i] = orig + eps;
            let up = objective(&t.loss(x, y, lambda, dead)) as f64;
            t.params.tensors_mut()[ti][i] = orig - eps;
            let down = objective(&t.loss(x, y, lambda, dead)) as f64;
            t.params.tensors_mut()[ti][i] = orig;
            let fd = (up - down) / (2.0 * eps as f64);
            checked += 1;
            if (fd - analytic[i] as f64).abs() > 2e-2 * gmax as f64 + 2e-3 {
                bad += 1;
                msgs.push(format!(
                    "tensor {ti}[{i}]: analytic {} vs fd {fd}",
                    analytic[i]
                ));
            }
        }
    }
    (checked, bad, msgs)
}

fn setup(arch: TrainArch, transcoder: bool, dense: bool) -> (Trainer, Vec<f32>, Option<Vec<f32>>) {
    let mut cfg = config(arch);
    if transcoder {
        cfg.d_out = Some(5);
        cfg.skip = true;
    }
    cfg.dense_above = if dense { 0.0 } else { 1.0 };
    let mut t = Trainer::new(cfg.clone(), 10).unwrap();
    perturb(&mut t.params, 7);
    let x = random(cfg.batch * cfg.d_in, 2, 1.0);
    let y = transcoder.then(|| random(cfg.batch * cfg.d_out(), 3, 1.0));
    (t, x, y)
}

fn assert_agree(what: &str, (checked, bad, msgs): (usize, usize, Vec<String>)) {
    assert!(checked >= 10, "{what}: only {checked} gradients compared");
    // selection boundaries (TopK, JumpReLU's threshold) may flip under a perturbation
    assert!(
        bad * 20 <= checked,
        "{what}: {bad}/{checked} gradients disagree:\n{}",
        msgs.join("\n")
    );
}

/// The main path (reconstruction + sparsity). JumpReLU's log_threshold (tensor 4) has a
/// straight-through pseudo-gradient, checked separately; gated's auxiliary loss uses a
/// detached decoder, so its decoder gradients are compared with the loss without it.
fn check_arch(arch: TrainArch, transcoder: bool, dense: bool) {
    let what = format!("{arch:?} transcoder={transcoder} dense={dense}");
    let (mut t, x, y) = setup(arch, transcoder, dense);
    let gated = arch == TrainArch::Gated;
    let r = compare(
        &mut t,
        &x,
        y.as_deref(),
        None,
        |l| l.total,
        |ti, _| ti != 4 && !(gated && (ti == 2 || ti == 3)),
    );
    assert_agree(&what, r);
    if gated {
        let r = compare(
            &mut t,
            &x,
            y.as_deref(),
            None,
            |l| l.mse + l.sparsity,
            |ti, _| ti == 2,
        );
        assert_agree(&format!("{what} (decoder)"), r);
    }
}

/// AuxK: perturbing a dead latent that no token selected leaves the main
/// reconstruction (the residual AuxK fits) unchanged, so finite differences of the
/// total loss isolate the auxiliary term.
fn check_aux_k(arch: TrainArch, transcoder: bool) {
    let (mut t, x, y) = setup(arch, transcoder, false);
    let (d, o) = (t.cfg.d_in, t.cfg.d_out());
    let dead: Vec<bool> = (0..t.cfg.d_sae).map(|f| f % 3 == 0).collect();
    let l = t.loss(&x, y.as_deref(), 0.0, Some(&dead));
    assert!(l.aux > 0.0, "AuxK loss should be active with dead latents");
    let mut selected = vec![false; t.cfg.d_sae];
    for r in 0..t.cfg.batch {
        let (idx, _) = t.row_selection(r).unwrap();
        idx.iter().for_each(|&f| selected[f as usize] = true);
    }
    let free = |f: usize| dead[f] && !selected[f];
    assert!(
        (0..t.cfg.d_sae).any(free),
        "no unselected dead latent to test"
    );
    let r = compare(
        &mut t,
        &x,
        y.as_deref(),
        Some(&dead),
        |l| l.total,
        |ti, i| match ti {
            0 => free(i / d),
            1 => free(i),
            2 => free(i / o),
            _ => false,
        },
    );
    assert_agree(&format!("{arch:?} AuxK"), r);
}

#[test]
fn topk_gradients_match_finite_differences_with_aux_k() {
    check_arch(TrainArch::TopK, false, false);
    check_arch(TrainArch::TopK, true, false);
    check_aux_k(TrainArch::TopK, false);
    check_aux_k(TrainArch::TopK, true);
}

#[test]
fn batch_topk_gradients_match_finite_differences() {
    check_arch(TrainArch::BatchTopK, false, false);
    check_arch(TrainArch::BatchTopK, true, false);
    check_aux_k(TrainArch::BatchTopK, false);
}

#[test]
fn standard_gradients_match_finite_differences_sparse_and_dense() {
    for dense in [false, true] {
        check_arch(TrainArch::Standard, false, dense);
        check_arch(TrainArch::Standard, true, dense);
    }
}

#[test]
fn jumprelu_gradients_match_finite_differences_sparse_and_dense() {
    for dense in [false, true] {
        check_arch(TrainArch::JumpReLU, false, dense);
        check_arch(TrainArch::JumpReLU, true, dense);
    }
}

#[test]
fn gated_gradients_match_finite_differences_sparse_and_dense() {
    for dense in [false, true] {
        check_arch(TrainArch::Gated, false, dense);
        check_arch(TrainArch::Gated, true, dense);
    }
}

#[test]
fn dense_and_sparse_kernels_give_the_same_gradients() {
    for arch in [TrainArch::Standard, TrainArch::JumpReLU, TrainArch::Gated] {
        let mut grads = Vec::new();
        for dense_above in [0.0, 1.0] {
            let cfg = TrainConfig {
                dense_above,
                ..config(arch)
            };
            let mut t = Trainer::new(cfg.clone(), 10).unwrap();
            perturb(&mut t.params, 7);
            let x = random(cfg.batch * cfg.d_in, 2, 1.0);
            let l = t.loss_and_gradients(&x, None, cfg.sparsity_coefficient, None);
            grads.push((l.total, t.gradients().clone()));
        }
        let (a, b) = (&grads[0], &grads[1]);
        assert!(
            (a.0 - b.0).abs() < 1e-5 * a.0.abs().max(1.0),
            "{arch:?} losses differ"
        );
        for (ti, (ga, gb)) in a.1.tensors().iter().zip(b.1.tensors()).enumerate() {
            for (i, (u, v)) in ga.iter().zip(gb.iter()).enumerate() {
                assert!(
                    (u - v).abs() < 1e-4 * (1.0 + u.abs()),
                    "{arch:?} tensor {ti}[{i}]: dense {u} vs sparse {v}"
                );
            }
        }
    }
}

#[test]
fn jumprelu_threshold_gradient_is_the_straight_through_estimate() {
    // one latent, one token just above its threshold: the L0 term pushes the threshold
    // up (d/dθ = −λ/ε < 0 ⇒ gradient on log θ negative means descent raises it? no:
    // descent moves against the gradient, so a negative gradient raises θ)
    let mut cfg = config(TrainArch::JumpReLU);
    cfg.d_sae = 1;
    cfg.d_in = 2;
    cfg.batch = 1;
    let mut t = Trainer::new(cfg.clone(), 10).unwrap();
    t.params.w_enc_t = vec![1.0, 0.0];
    t.params.b_enc = vec![0.0];
    t.params.w_dec = vec![0.0, 0.0];
    t.params.b_dec = vec![0.0, 0.0];
    let theta = 0.5f32;
    t.params.log_threshold = vec![theta.ln()];
    let x = vec![theta + 0.01, 0.0];
    let lambda = 2.0;
    t.loss_and_gradients(&x, None, lambda, None);
    // W_dec = 0 ⇒ no reconstruction term; L0 term: −λ/ε per token near θ, times θ
    let want = -lambda / cfg.jumprelu_bandwidth * theta;
    let got = t.gradients().log_threshold[0];
    assert!((got - want).abs() < 1e-3 * want.abs(), "{got} vs {want}");
}

fn sparse_data(b: usize, d: usize, seed: u64) -> Vec<f32> {
    let atoms = random(48 * d, 99, 1.0);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = vec![0f32; b * d];
    for r in 0..b {
        for _ in 0..3 {
            let a = rng.gen_range(0..48);
            let c = rng.gen_range(0.5f32..2.0);
            for i in 0..d {
                x[r * d + i] += c * atoms[a * d + i];
            }
        }
    }
    x
}

fn train_on_sparse_data(arch: TrainArch, sparsity: f32) -> (f32, f32, f32) {
    let d = 16;
    let cfg = TrainConfig {
        arch,
        d_in: d,
        d_sae: 96,
        k: 4,
        batch: 128,
        lr: 3e-3,
        sparsity_coefficient: sparsity,
        jumprelu_bandwidth: 0.05,
        // log θ moves by about lr per step: start near the activations' scale
        jumprelu_init_threshold: 0.1,
        dead_window_tokens: 2_000,
        ..TrainConfig::default()
    };
    let steps = 400;
    let mut t = Trainer::new(cfg.clone(), steps).unwrap();
    t.prepare(&sparse_data(1024, d, 0), None);
    let first = t.step(&sparse_data(128, d, 1), None).unwrap();
    let mut last = first;
    for s in 1..steps {
        last = t.step(&sparse_data(128, d, s as u64 + 1), None).unwrap();
    }
    eprintln!(
        "{arch:?} λ={sparsity}: FVU {} → {}, L0 {}",
        first.fvu, last.fvu, last.losses.l0
    );
    (first.fvu, last.fvu, last.losses.l0)
}

#[test]
fn every_architecture_learns_sparse_data() {
    for (arch, sparsity, max_l0) in [
        (TrainArch::TopK, 0.0, 4.0),
        (TrainArch::BatchTopK, 0.0, 4.5),
        (TrainArch::Standard, 2.0, 16.0),
        (TrainArch::JumpReLU, 3.0, 40.0),
        (TrainArch::Gated, 2.0, 40.0),
    ] {
        let (first, last, l0) = train_on_sparse_data(arch, sparsity);
        assert!(
            last < 0.5 * first && last < 0.4,
            "{arch:?}: FVU {first} → {last}"
        );
        assert!(l0 <= max_l0, "{arch:?}: L0 {l0} is not sparse");
    }
    // the sparsity penalty is what makes ReLU-family dictionaries sparse
    for arch in [TrainArch::Standard, TrainArch::JumpReLU, TrainArch::Gated] {
        let (_, _, l0_free) = train_on_sparse_data(arch, 0.0);
        let (_, _, l0) = train_on_sparse_data(
            arch,
            if arch == TrainArch::JumpReLU {
                3.0
            } else {
                2.0
            },
        );
        assert!(
            l0 < 0.8 * l0_free,
            "{arch:?}: L0 {l0} with the penalty vs {l0_free} without"
        );
    }
}

#[test]
fn saved_dictionary_reads_raw_activations_with_normalisation_folded() {
    use candle_core::{Device, Tensor};
    for arch in [
        TrainArch::TopK,
        TrainArch::BatchTopK,
        TrainArch::Standard,
        TrainArch::JumpReLU,
        TrainArch::Gated,
    ] {
        let mut cfg = TrainConfig {
            arch,
            d_in: 16,
            d_sae: 64,
            k: 4,
            batch: 64,
            jumprelu_bandwidth: 0.05,
            ..TrainConfig::default()
        };
        cfg.dense_above = 1.0;
        let mut t = Trainer::new(cfg.clone(), 50).unwrap();
        // activations with a large norm, as a residual stream has
        let raw: Vec<f32> = sparse_data(64, 16, 5).iter().map(|v| v * 37.0).collect();
        t.prepare(&raw, None);
        assert!(
            (t.scale_in - 1.0).abs() > 0.5,
            "normalisation should rescale"
        );
        for s in 0..20 {
            t.step(
                &sparse_data(64, 16, 10 + s)
                    .iter()
                    .map(|v| v * 37.0)
                    .collect::<Vec<_>>(),
                None,
            )
            .unwrap();
        }
        let losses = t.evaluate(&raw, None).unwrap();
        let dict = t.to_dictionary(Some("h".into()), None, None).unwrap();
        let xt = Tensor::from_slice(&raw, (64, 16), &Device::Cpu).unwrap();
        let out = dict.decode(&dict.encode(&xt).unwrap(), Some(&xt)).unwrap();
        let mse_raw = (out - &xt)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            / 64.0;
        // the trainer's MSE is in normalised units: × 1/scale² in raw units
        let want = losses.mse / (t.scale_in * t.scale_in);
        if arch == TrainArch::BatchTopK {
            // inference uses the running threshold, not the batch selection
            assert!(mse_raw.is_finite());
            continue;
        }
        assert!(
            (mse_raw - want).abs() < 1e-3 * want.max(1e-3),
            "{arch:?}: dictionary MSE {mse_raw} vs trainer {want}"
        );
    }
}

#[test]
fn resuming_from_a_checkpoint_matches_an_uninterrupted_run() {
    for arch in [TrainArch::TopK, TrainArch::JumpReLU] {
        let cfg = TrainConfig {
            arch,
            d_in: 16,
            d_sae: 64,
            k: 4,
            batch: 32,
            dead_window_tokens: 64,
            jumprelu_bandwidth: 0.05,
            sparsity_coefficient: 0.01,
            ..TrainConfig::default()
        };
        let batch = |s: u64| sparse_data(32, 16, 1000 + s);
        let mut straight = Trainer::new(cfg.clone(), 30).unwrap();
        straight.prepare(&sparse_data(256, 16, 0), None);
        for s in 0..30 {
            straight.step(&batch(s), None).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let mut first = Trainer::new(cfg.clone(), 30).unwrap();
        first.prepare(&sparse_data(256, 16, 0), None);
        for s in 0..12 {
            first.step(&batch(s), None).unwrap();
        }
        checkpoint::save(&first, dir.path(), serde_json::json!({"rows": 12 * 32})).unwrap();
        drop(first);
        let (mut resumed, extra) = checkpoint::load(dir.path()).unwrap();
        assert_eq!(extra["rows"], 12 * 32);
        assert_eq!(resumed.step, 12);
        for s in 12..30 {
            resumed.step(&batch(s), None).unwrap();
        }
        assert_eq!(
            resumed.params, straight.params,
            "{arch:?}: resumed run differs"
        );
        assert_eq!(resumed.since_fired, straight.since_fired);
    }
}

#[test]
fn a_non_finite_batch_stops_before_the_update() {
    let cfg = config(TrainArch::TopK);
    let mut t = Trainer::new(cfg.clone(), 10).unwrap();
    let mut x = random(cfg.batch * cfg.d_in, 2, 1.0);
    t.step(&x, None).unwrap();
    let before = t.params.clone();
    x[5] = f32::NAN;
    let err = t.step(&x, None).unwrap_err().to_string();
    assert!(err.contains("step 1") && err.contains("NaN"), "{err}");
    assert_eq!(t.params, before, "parameters changed after a NaN loss");
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let bad = |c: TrainConfig, want: &str| {
        let e = Trainer::new(c, 10)
            .err()
            .expect("should be refused")
            .to_string();
        assert!(e.contains(want), "{e}");
    };
    bad(
        TrainConfig {
            k: 0,
            ..config(TrainArch::TopK)
        },
        "k must be",
    );
    bad(
        TrainConfig {
            lr: f32::NAN,
            ..config(TrainArch::TopK)
        },
        "lr",
    );
    bad(
        TrainConfig {
            skip: true,
            ..config(TrainArch::Standard)
        },
        "transcoder",
    );
    bad(
        TrainConfig {
            d_sae: 0,
            ..config(TrainArch::Standard)
        },
        "positive",
    );
}

/// A checkpoint write that fails (the disk fills, the process dies) leaves the
/// previous checkpoint usable.
#[test]
fn a_failed_checkpoint_write_keeps_the_previous_checkpoint() {
    let cfg = TrainConfig {
        d_in: 16,
        d_sae: 32,
        k: 4,
        batch: 16,
        ..TrainConfig::default()
    };
    // a full disk while writing the new weights, or the checkpoint.json naming them
    for failing in ["checkpoint-000000002.safetensors", "checkpoint.json"] {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Trainer::new(cfg.clone(), 10).unwrap();
        t.step(&sparse_data(16, 16, 1), None).unwrap();
        checkpoint::save(&t, dir.path(), serde_json::json!({"rows": 16})).unwrap();
        let saved = t.params.clone();
        t.step(&sparse_data(16, 16, 2), None).unwrap();
        glassbox_atomic::testing::fail_next_write_of(&dir.path().join(failing));
        let err = checkpoint::save(&t, dir.path(), serde_json::json!({"rows": 32})).unwrap_err();
        assert!(err.to_string().contains(failing), "{err}");
        let (back, extra) = checkpoint::load(dir.path()).unwrap();
        assert_eq!(back.step, 1);
        assert_eq!(extra["rows"], 16);
        assert_eq!(back.params, saved);
    }
}

/// Resampling (ReLU family): a latent that never fires is re-initialised along a
/// poorly reconstructed input, with fresh Adam moments, and then fires.
#[test]
fn dead_latents_are_resampled_and_fire_again() {
    let cfg = TrainConfig {
        arch: TrainArch::Standard,
        d_in: 16,
        d_sae: 32,
        batch: 64,
        sparsity_coefficient: 0.1,
        dead_window_tokens: 64,
        resample_every_steps: 2,
        normalize: glassbox_sae::train::Normalize::None,
        b_dec_init: glassbox_sae::train::BDecInit::Zeros,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(cfg, 100).unwrap();
    t.params.b_enc[5] = -1e6; // latent 5 can never fire
    let before = t.params.w_enc_t[5 * 16..6 * 16].to_vec();
    let r1 = t.step(&sparse_data(64, 16, 1), None).unwrap();
    assert_eq!(r1.resampled, 0);
    assert!(t.since_fired[5] >= 64);
    let r2 = t.step(&sparse_data(64, 16, 2), None).unwrap();
    assert!(r2.resampled >= 1, "no latent resampled");
    assert_eq!(t.since_fired[5], 0);
    assert_eq!(t.params.b_enc[5], 0.0);
    assert_ne!(&t.params.w_enc_t[5 * 16..6 * 16], &before[..]);
    assert!(t.opt.m.w_enc_t[5 * 16..6 * 16].iter().all(|v| *v == 0.0));
    let r3 = t.step(&sparse_data(64, 16, 3), None).unwrap();
    assert!(r3.losses.l0 > 0.0);
    assert_eq!(
        t.since_fired[5], 0,
        "the resampled latent should fire on inputs like the one it was set from"
    );
}
