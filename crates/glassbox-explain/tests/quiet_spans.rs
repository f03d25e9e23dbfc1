//! Non-activating contexts are verified zero: on the tiny llama fixture with the TopK
//! SAE SAELens wrote for it, every span offered for a feature has that feature at zero
//! on every token, and every such span is offered (checked one window at a time
//! against the batched pass).

use candle_core::Tensor;
use glassbox_explain::negatives::QuietSpans;
use glassbox_model::{Batch, HookFilter, LogitsMode, Run};

#[test]
fn quiet_spans_are_exactly_the_spans_where_a_feature_is_zero() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures");
    let model = glassbox_model::load_model(format!("{fixtures}/tiny-llama").as_ref()).unwrap();
    let dict = glassbox_sae::format::load(format!("{fixtures}/saelens/sae-topk").as_ref()).unwrap();
    let hook = "blocks.0.hook_resid_post";
    let windows: Vec<Vec<u32>> = (0..11u32)
        .map(|w| {
            std::iter::once(1)
                .chain((1..16).map(|p| 3 + (w * 31 + p * 7) % 200))
                .collect()
        })
        .collect();
    let span = 4;
    let quiet = QuietSpans::find(
        &model.transformer,
        &dict,
        hook,
        &windows,
        span,
        &|t| format!(" t{t}"),
        |_| {},
    )
    .unwrap();
    // positions 1..16 of each window: 3 whole spans of 4
    assert_eq!(quiet.len(), windows.len() * 3);

    // the same activations, one window at a time
    let mut zero_spans = vec![Vec::new(); dict.d_sae];
    for w in &windows {
        let mut run = Run::new()
            .cache(HookFilter::new(vec![hook.into()], &model.transformer.config).unwrap())
            .stop_at_layer(1)
            .logits(LogitsMode::None);
        let out = model
            .transformer
            .run(&Batch::new(vec![w.clone()]), &mut run)
            .unwrap();
        let x: Tensor = out.cache[hook].reshape((w.len(), dict.d_in)).unwrap();
        let f: Vec<Vec<f32>> = dict.encode(&x).unwrap().to_vec2().unwrap();
        for s in 0..3 {
            let text: String = (1 + s * span..1 + (s + 1) * span)
                .map(|p| format!(" t{}", w[p]))
                .collect();
            for (feature, spans) in zero_spans.iter_mut().enumerate() {
                if (1 + s * span..1 + (s + 1) * span).all(|p| f[p][feature] == 0.0) {
                    spans.push(text.clone());
                }
            }
        }
    }
    let mut some_quiet_some_not = 0;
    for (feature, expected) in zero_spans.iter().enumerate() {
        let got = quiet.for_feature(feature as u32, usize::MAX, 5);
        let mut texts: Vec<String> = got.iter().map(|c| c.text()).collect();
        let mut expected = expected.clone();
        texts.sort();
        expected.sort();
        assert_eq!(texts, expected, "feature {feature}");
        assert!(got.iter().all(|c| c.acts.iter().all(|&a| a == 0.0)));
        some_quiet_some_not += usize::from(!expected.is_empty() && expected.len() < quiet.len());
    }
    assert!(some_quiet_some_not > 10, "the check tells spans apart");
    // a seed picks which, `n` how many
    let a = quiet.for_feature(3, 2, 1);
    assert!(a.len() <= 2);
    assert_eq!(a, quiet.for_feature(3, 2, 1));
    assert!(quiet.for_feature(dict.d_sae as u32, 5, 0).is_empty());
}
