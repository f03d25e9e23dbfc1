//! Splicing a set of transcoders into the tiny llama at once: a set that predicts
//! nothing equals zero-ablating the MLPs, and a single transcoder agrees with the
//! one-dictionary evaluation.

use candle_core::{Device, Tensor};
use glassbox_analysis::sae_eval::{evaluate, EvalOptions};
use glassbox_analysis::transcoders::splice_all;
use glassbox_fixtures::tiny_dir;
use glassbox_model::{load_model, RowRule};
use glassbox_sae::{Architecture, Dictionary};

fn windows(n: usize, len: usize) -> Vec<Vec<u32>> {
    let mut x = 11u64;
    (0..n)
        .map(|_| {
            std::iter::once(1)
                .chain((1..len).map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    3 + (x >> 33) as u32 % 500
                }))
                .collect()
        })
        .collect()
}

fn transcoder(layer: usize, d: usize, m: usize, scale: f32, seed: u64) -> Dictionary {
    let mut x = seed;
    let mut rnd = |n: usize, s: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * s
            })
            .collect()
    };
    let dev = &Device::Cpu;
    Dictionary {
        architecture: Architecture::Standard,
        d_in: d,
        d_sae: m,
        d_out: d,
        k: None,
        apply_b_dec_to_input: false,
        w_enc: Tensor::from_vec(rnd(d * m, 1.0), (d, m), dev).unwrap(),
        b_enc: Some(Tensor::from_vec(rnd(m, 0.1), m, dev).unwrap()),
        w_dec: Tensor::from_vec(rnd(m * d, scale), (m, d), dev).unwrap(),
        b_dec: Tensor::zeros(d, candle_core::DType::F32, dev).unwrap(),
        threshold: None,
        b_gate: None,
        r_mag: None,
        b_mag: None,
        w_skip: None,
        hook_name: Some(format!("blocks.{layer}.ln2.hook_normalized")),
        hook_name_out: Some(format!("blocks.{layer}.hook_mlp_out")),
        model_name: None,
        extra_cfg: Default::default(),
    }
}

#[test]
fn transcoders_that_predict_nothing_equal_zero_ablation() {
    let m = load_model(&tiny_dir("llama")).unwrap();
    let set = vec![transcoder(0, 64, 32, 0.0, 1), transcoder(1, 64, 32, 0.0, 2)];
    let r = splice_all(
        &m.transformer,
        &set,
        &windows(3, 12),
        &RowRule::default(),
        2,
        |_| {},
    )
    .unwrap();
    assert_eq!(r.transcoders, 2);
    assert!((r.ce_spliced - r.ce_zero_ablated).abs() < 1e-6, "{r:?}");
    assert!(r.ce_recovered.abs() < 1e-6 && r.kl_recovered.abs() < 1e-6);
    assert!(r.ce_zero_ablated > r.ce_clean);
}

#[test]
fn one_transcoder_spliced_agrees_with_the_single_dictionary_evaluation() {
    let m = load_model(&tiny_dir("llama")).unwrap();
    let d = transcoder(1, 64, 32, 0.2, 3);
    // a BOS inside each window (packed documents): both leave it out, by the same rule
    let mut w = windows(3, 12);
    for win in &mut w {
        win[5] = 1;
    }
    let rule = RowRule::for_model(&m);
    let all = splice_all(
        &m.transformer,
        std::slice::from_ref(&d),
        &w,
        &rule,
        2,
        |_| {},
    )
    .unwrap();
    let opts = EvalOptions {
        rows: rule,
        ..EvalOptions::default()
    };
    let one = evaluate(&m.transformer, &d, &w, &opts, |_| {}).unwrap();
    assert_eq!(all.ce_tokens, one.ce_tokens);
    assert_eq!(one.tokens, 3 * 10);
    assert!(
        (all.ce_spliced - one.ce_spliced).abs() < 1e-5,
        "{} vs {}",
        all.ce_spliced,
        one.ce_spliced
    );
    assert!((all.ce_clean - one.ce_clean).abs() < 1e-6);
    assert!((all.ce_zero_ablated - one.ce_zero_ablated).abs() < 1e-5);
}

#[test]
fn a_set_without_output_hooks_is_refused() {
    let m = load_model(&tiny_dir("llama")).unwrap();
    let mut d = transcoder(0, 64, 32, 0.1, 4);
    d.hook_name_out = None;
    let e = splice_all(
        &m.transformer,
        &[d],
        &windows(2, 8),
        &RowRule::default(),
        2,
        |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("hook_name_out"), "{e}");
}
