//! Patching, attribution patching, steering and ablation on the tiny fixtures.

use candle_core::{Device, Tensor};
use glassbox_analysis::ablation::{ablate, Unit};
use glassbox_analysis::patching::{PatchProblem, PatchSite};
use glassbox_analysis::steering::Steering;
use glassbox_fixtures::{max_abs_diff, tiny_dir};
use glassbox_model::{
    load_model, Batch, Edit, HookFilter, Intervention, Model, Run, SamplingOptions,
};

fn tiny(name: &str) -> Model {
    load_model(&tiny_dir(name)).unwrap()
}

fn tokens(m: &Model) -> (Vec<u32>, Vec<u32>) {
    let r = candle_core::safetensors::load(m.source.join("reference.safetensors"), &Device::Cpu)
        .unwrap();
    let b = Batch::from_tensor(&r["input_ids"]).unwrap().tokens;
    (b[0][..10].to_vec(), b[1][..10].to_vec())
}

fn problem<'a>(m: &'a Model, clean: Vec<u32>, corrupt: Vec<u32>) -> PatchProblem<'a> {
    PatchProblem {
        model: &m.transformer,
        clean,
        corrupt,
        answer: 7,
        wrong: 100,
        context: Vec::new(),
    }
}

#[test]
fn patching_a_run_with_its_own_cache_changes_nothing() {
    for name in ["llama", "gpt2", "gemma2"] {
        let m = tiny(name);
        let (clean, _) = tokens(&m);
        let f = HookFilter::parse(
            "blocks.*.hook_resid_pre,blocks.*.attn.hook_z,blocks.*.hook_mlp_out",
            m.config(),
        )
        .unwrap();
        let base = m
            .transformer
            .run(&Batch::single(&clean), &mut Run::new().cache(f))
            .unwrap();
        let mut run = Run::new();
        for (hook, act) in &base.cache {
            run = run.intervene(
                HookFilter::parse(hook, m.config()).unwrap(),
                Intervention::new(Edit::Replace(act.clone())),
            );
        }
        let out = m.transformer.run(&Batch::single(&clean), &mut run).unwrap();
        assert_eq!(
            max_abs_diff(out.logits().unwrap(), base.logits().unwrap()),
            0.0,
            "{name}"
        );
    }
}

#[test]
fn patching_every_position_of_a_layer_with_the_corrupt_cache_gives_the_corrupt_logits() {
    for name in ["llama", "qwen2", "gpt_neox"] {
        let m = tiny(name);
        let (clean, corrupt) = tokens(&m);
        for layer in 0..m.config().n_layers {
            let hook = format!("blocks.{layer}.hook_resid_pre");
            let f = HookFilter::parse(&hook, m.config()).unwrap();
            let c = m
                .transformer
                .run(&Batch::single(&corrupt), &mut Run::new().cache(f.clone()))
                .unwrap();
            let patched = m
                .transformer
                .run(
                    &Batch::single(&clean),
                    &mut Run::new()
                        .intervene(f, Intervention::new(Edit::Replace(c.cache[&hook].clone()))),
                )
                .unwrap();
            assert_eq!(
                max_abs_diff(patched.logits().unwrap(), c.logits().unwrap()),
                0.0,
                "{name} layer {layer}"
            );
        }
    }
}

#[test]
fn batched_exact_patching_equals_one_run_per_cell() {
    let m = tiny("llama");
    let (clean, corrupt) = tokens(&m);
    let p = problem(&m, clean.clone(), corrupt.clone());
    for site in [PatchSite::ResidPre, PatchSite::AttnHead, PatchSite::MlpOut] {
        let r = p.exact(site).unwrap();
        assert_eq!(r.grid.len(), 2);
        let (lc, lr) = (r.logit_diff_clean, r.logit_diff_corrupt);
        let layer = 1;
        let hook = site.hook(layer);
        let f = HookFilter::parse(&hook, m.config()).unwrap();
        let cache = m
            .transformer
            .run(&Batch::single(&clean), &mut Run::new().cache(f.clone()))
            .unwrap()
            .cache;
        let cell = 3;
        let iv = match site {
            PatchSite::AttnHead => {
                Intervention::new(Edit::Replace(cache[&hook].clone())).at_heads(vec![cell])
            }
            _ => Intervention::new(Edit::Replace(cache[&hook].clone())).at_positions(vec![cell]),
        };
        let out = m
            .transformer
            .run(&Batch::single(&corrupt), &mut Run::new().intervene(f, iv))
            .unwrap();
        let d =
            glassbox_analysis::metric::logit_diff_last(out.logits().unwrap(), 7, 100).unwrap()[0];
        let want = (d - lr) / (lc - lr);
        assert!(
            (r.grid[layer][cell] - want).abs() < 1e-4,
            "{site:?}: {} vs {want}",
            r.grid[layer][cell]
        );
    }
}

/// With the final norm's scale frozen, the logits are linear in the last block's MLP
/// output, so the first-order estimate must equal exact patching there.
#[test]
fn attribution_equals_exact_patching_where_the_metric_is_linear() {
    let m = tiny("llama");
    let (clean, corrupt) = tokens(&m);
    let scale_hook = HookFilter::parse("ln_final.hook_scale", m.config()).unwrap();
    let frozen = m
        .transformer
        .run(
            &Batch::single(&clean),
            &mut Run::new()
                .cache(scale_hook.clone())
                .logits(glassbox_model::LogitsMode::Last),
        )
        .unwrap()
        .cache["ln_final.hook_scale"]
        .clone();
    let mut p = problem(&m, clean, corrupt);
    p.context = vec![(scale_hook, Intervention::new(Edit::Replace(frozen)))];
    let exact = p.exact(PatchSite::MlpOut).unwrap();
    let attr = p.attribution(PatchSite::MlpOut).unwrap();
    let last = m.config().n_layers - 1;
    assert!((exact.logit_diff_clean - attr.logit_diff_clean).abs() < 1e-4);
    let nonzero = exact.grid[last].iter().filter(|v| v.abs() > 1e-3).count();
    assert!(
        nonzero >= 1,
        "the last position must matter: {:?}",
        exact.grid[last]
    );
    for (e, a) in exact.grid[last].iter().zip(&attr.grid[last]) {
        assert!((e - a).abs() < 1e-3, "exact {e} vs attribution {a}");
    }
    // and in general (nonlinear sites) the two grids still agree in shape and broadly in value
    let r = glassbox_analysis::patching::grid_correlation(
        &p.exact(PatchSite::ResidPre).unwrap().grid,
        &p.attribution(PatchSite::ResidPre).unwrap().grid,
    );
    assert!(r.is_finite());
}

#[test]
fn steering_with_strength_zero_changes_nothing_and_nonzero_does() {
    let m = tiny("llama");
    let (prompt, _) = tokens(&m);
    let dir = Tensor::randn(0f32, 1.0, 64, &Device::Cpu).unwrap();
    let base = m
        .transformer
        .run(&Batch::single(&prompt), &mut Run::new())
        .unwrap();
    let zero = Steering::new("blocks.1.hook_resid_pre", dir.clone(), 0.0).unwrap();
    let out = m
        .transformer
        .run(
            &Batch::single(&prompt),
            &mut zero.run(&m.transformer).unwrap(),
        )
        .unwrap();
    assert_eq!(
        max_abs_diff(out.logits().unwrap(), base.logits().unwrap()),
        0.0
    );
    let opts = SamplingOptions {
        max_new_tokens: 6,
        ..Default::default()
    };
    let plain = m
        .transformer
        .generate(&prompt, &opts, &mut Run::new(), |_| {})
        .unwrap();
    let same = m
        .transformer
        .generate(
            &prompt,
            &opts,
            &mut zero.run(&m.transformer).unwrap(),
            |_| {},
        )
        .unwrap();
    assert_eq!(plain, same);
    let strong = Steering::new("blocks.1.hook_resid_pre", dir.clone(), 50.0).unwrap();
    let out = m
        .transformer
        .run(
            &Batch::single(&prompt),
            &mut strong.run(&m.transformer).unwrap(),
        )
        .unwrap();
    assert!(max_abs_diff(out.logits().unwrap(), base.logits().unwrap()) > 1e-2);
    // restricted to position 2: earlier positions are untouched (causal model)
    let mut at2 = strong.clone();
    at2.positions = Some(vec![2]);
    let out = m
        .transformer
        .run(
            &Batch::single(&prompt),
            &mut at2.run(&m.transformer).unwrap(),
        )
        .unwrap();
    let l = out.logits().unwrap().narrow(1, 0, 2).unwrap();
    assert_eq!(
        max_abs_diff(&l, &base.logits().unwrap().narrow(1, 0, 2).unwrap()),
        0.0
    );
    assert!(max_abs_diff(out.logits().unwrap(), base.logits().unwrap()) > 1e-2);
}

#[test]
fn ablation_reports_loss_and_kl_for_heads_and_neurons() {
    let m = tiny("gpt2");
    let (a, b) = tokens(&m);
    let units = Unit::parse_list("0.1,1.2", true, &m.transformer).unwrap();
    let r = ablate(&m.transformer, &[a.clone(), b.clone()], &units, false).unwrap();
    assert!(r.kl > 0.0 && r.max_abs_logit_change > 0.0);
    assert!(r.loss_clean.is_finite() && r.loss_ablated.is_finite());
    // mean ablation replaces by the prompt-set mean, not zero: a different effect
    let mean = ablate(&m.transformer, &[a.clone(), b.clone()], &units, true).unwrap();
    assert_eq!(mean.mode, "mean");
    assert!(mean.kl > 0.0 && (mean.kl - r.kl).abs() > 1e-6);
    let neurons = Unit::parse_list("0.5,1.200", false, &m.transformer).unwrap();
    let n = ablate(&m.transformer, std::slice::from_ref(&a), &neurons, false).unwrap();
    assert!(n.kl > 0.0, "zeroing two GELU neurons must move the output");
    assert!(Unit::parse_list("5.1", true, &m.transformer)
        .unwrap_err()
        .to_string()
        .contains("layer 5 does not exist"));
    assert!(Unit::parse_list("0.9", true, &m.transformer)
        .unwrap_err()
        .to_string()
        .contains("4 heads"));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let m = tiny("llama");
    let (clean, corrupt) = tokens(&m);
    let p = problem(&m, clean, corrupt[..7].to_vec());
    let msg = p.exact(PatchSite::ResidPre).unwrap_err().to_string();
    assert!(
        msg.contains("clean has 10") && msg.contains("corrupted has 7"),
        "{msg}"
    );
    let dir = Tensor::ones(64, candle_core::DType::F32, &Device::Cpu).unwrap();
    for s in [f64::NAN, f64::INFINITY] {
        let msg = Steering::new("blocks.0.hook_resid_pre", dir.clone(), s)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("finite"), "{msg}");
    }
    let wrong_width = Steering::new(
        "blocks.0.hook_resid_pre",
        Tensor::ones(10, candle_core::DType::F32, &Device::Cpu).unwrap(),
        1.0,
    )
    .unwrap();
    let msg = m
        .transformer
        .run(
            &Batch::single(&[1, 2, 3]),
            &mut wrong_width.run(&m.transformer).unwrap(),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("10 entries"), "{msg}");
    // a feature given to the head/neuron ablation: an error, not a panic
    let msg = ablate(
        &m.transformer,
        &[vec![1, 2, 3]],
        &[Unit::Feature { index: 3 }],
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("ablate_features"), "{msg}");
}

fn tiny_sae(kind: &str) -> std::sync::Arc<glassbox_sae::Dictionary> {
    std::sync::Arc::new(
        glassbox_sae::format::load(
            &glassbox_fixtures::fixtures().join(format!("saelens/sae-{kind}")),
        )
        .unwrap(),
    )
}

/// The SAELens fixtures were trained for tiny-llama's `blocks.0.hook_resid_post`.
#[test]
fn clamping_a_feature_moves_the_activation_only_along_its_decoder_row() {
    use glassbox_analysis::steering::FeatureClamp;
    let m = tiny("llama");
    let (prompt, _) = tokens(&m);
    let hook = "blocks.0.hook_resid_post";
    let d = tiny_sae("standard");
    let f = HookFilter::parse(hook, m.config()).unwrap();
    let base = m
        .transformer
        .run(&Batch::single(&prompt), &mut Run::new().cache(f.clone()))
        .unwrap();
    let x = base.cache[hook].clone();
    let acts = d.encode(&x).unwrap();
    // the most active feature at position 3
    let row: Vec<f32> = acts.get(0).unwrap().get(3).unwrap().to_vec1().unwrap();
    let feature = row
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    let value = 5.0;
    let clamp = FeatureClamp::new(hook, d.clone(), feature, value).unwrap();
    // cache the edited activation downstream of the clamp hook
    let mut run = clamp.run(&m.transformer).unwrap().cache(f.clone());
    let out = m
        .transformer
        .run(&Batch::single(&prompt), &mut run)
        .unwrap();
    let current = acts.narrow(2, feature, 1).unwrap();
    let want = (&x
        + ((current * -1.0).unwrap() + value)
            .unwrap()
            .broadcast_mul(&d.decoder_row(feature).unwrap())
            .unwrap())
    .unwrap();
    assert!(max_abs_diff(&out.cache[hook], &want) < 1e-4);
    assert!(max_abs_diff(out.logits().unwrap(), base.logits().unwrap()) > 1e-3);
    // a feature silent on this prompt, clamped to 0, changes nothing (top-8 of 256: most are silent)
    let sparse = tiny_sae("topk");
    let sparse_acts = sparse.encode(&x).unwrap();
    let silent = (0..sparse.d_sae)
        .find(|&i| {
            sparse_acts
                .narrow(2, i, 1)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                == 0.0
        })
        .expect("a silent feature");
    let off = FeatureClamp::new(hook, sparse, silent, 0.0).unwrap();
    let out = m
        .transformer
        .run(
            &Batch::single(&prompt),
            &mut off.run(&m.transformer).unwrap(),
        )
        .unwrap();
    assert_eq!(
        max_abs_diff(out.logits().unwrap(), base.logits().unwrap()),
        0.0
    );
    // bad input
    assert!(FeatureClamp::new(hook, d.clone(), 256, 1.0)
        .err()
        .unwrap()
        .to_string()
        .contains("256 features"));
    assert!(FeatureClamp::new(hook, d.clone(), 1, f64::NAN)
        .err()
        .unwrap()
        .to_string()
        .contains("finite"));
    // steering along a decoder row with strength 0 is a no-op
    let s = Steering::new(hook, d.decoder_row(feature).unwrap(), 0.0).unwrap();
    let out = m
        .transformer
        .run(&Batch::single(&prompt), &mut s.run(&m.transformer).unwrap())
        .unwrap();
    assert_eq!(
        max_abs_diff(out.logits().unwrap(), base.logits().unwrap()),
        0.0
    );
}

#[test]
fn ablating_dictionary_features() {
    use glassbox_analysis::ablation::ablate_features;
    let m = tiny("llama");
    let (a, b) = tokens(&m);
    let hook = "blocks.0.hook_resid_post";
    let d = tiny_sae("topk");
    let f = HookFilter::parse(hook, m.config()).unwrap();
    let x = m
        .transformer
        .run(&Batch::single(&a), &mut Run::new().cache(f))
        .unwrap()
        .cache[hook]
        .clone();
    let acts = d
        .encode(&x)
        .unwrap()
        .sum((0, 1))
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let active = acts
        .iter()
        .enumerate()
        .max_by(|x, y| x.1.total_cmp(y.1))
        .unwrap()
        .0;
    let r = ablate_features(
        &m.transformer,
        &[a.clone(), b.clone()],
        d.clone(),
        hook,
        &[active],
        false,
    )
    .unwrap();
    assert!(
        r.kl > 0.0,
        "zeroing the most active feature must move the output"
    );
    let mean = ablate_features(
        &m.transformer,
        &[a.clone(), b.clone()],
        d.clone(),
        hook,
        &[active],
        true,
    )
    .unwrap();
    assert!((mean.kl - r.kl).abs() > 1e-7);
    let msg = ablate_features(&m.transformer, &[a], d, hook, &[999], false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("feature 999 does not exist"), "{msg}");
}
