//! Hooks, interventions, padding, stop_at_layer, gradients and the KV cache, on the
//! tiny fixtures (no download needed).

use candle_core::{DType, Device, Tensor};
use glassbox_fixtures::*;
use glassbox_model::{
    load_model, Batch, Edit, HookFilter, Intervention, KvCache, LogitsMode, Model, PaddingSide, Run,
};

const FAMILIES: [&str; 12] = [
    "llama",
    "qwen2",
    "gemma2",
    "gpt2",
    "gpt_neox",
    "llama3",
    "mistral",
    "qwen3",
    "gemma3",
    "phi3",
    "olmo2",
    "llama-bf16",
];

fn tiny(name: &str) -> Model {
    load_model(&fixtures().join(format!("tiny-{name}"))).unwrap()
}

/// A norm's scale hook in `layer`: the pre-norm's, or OLMo 2's post-attention norm's.
fn norm_scale(m: &Model, layer: usize) -> String {
    let pre = format!("blocks.{layer}.ln1.hook_scale");
    if glassbox_model::HookFilter::parse(&pre, m.config()).is_ok() {
        pre
    } else {
        format!("blocks.{layer}.ln1_post.hook_scale")
    }
}

fn reference_tokens(name: &str) -> Vec<Vec<u32>> {
    let r = load_reference(&fixtures().join(format!("tiny-{name}/reference.safetensors")));
    Batch::from_tensor(&r["input_ids"]).unwrap().tokens
}

fn filter(m: &Model, spec: &str) -> HookFilter {
    HookFilter::parse(spec, m.config()).unwrap()
}

#[test]
fn left_and_right_padding_match_unpadded_runs() {
    for name in FAMILIES {
        let m = tiny(name);
        let toks = reference_tokens(name);
        let a = toks[0][..16].to_vec();
        let b = toks[1][..10].to_vec();
        let spec = "blocks.*.hook_resid_post";
        let single = |t: &[u32]| {
            m.transformer
                .run(&Batch::single(t), &mut Run::new().cache(filter(&m, spec)))
                .unwrap()
        };
        let (ra, rb) = (single(&a), single(&b));
        for side in [PaddingSide::Left, PaddingSide::Right] {
            let batch = Batch::padded(&[a.clone(), b.clone()], 0, side);
            let out = m
                .transformer
                .run(&batch, &mut Run::new().cache(filter(&m, spec)))
                .unwrap();
            let logits = out.logits.as_ref().unwrap();
            let offset = if side == PaddingSide::Left { 6 } else { 0 };
            let got_a = logits.get(0).unwrap();
            let got_b = logits.get(1).unwrap().narrow(0, offset, 10).unwrap();
            let want_a = ra.logits.as_ref().unwrap().get(0).unwrap();
            let want_b = rb.logits.as_ref().unwrap().get(0).unwrap();
            assert!(
                rel_err(&got_a, &want_a) < 1e-5,
                "{name} {side:?}: unpadded row changed"
            );
            assert!(
                rel_err(&got_b, &want_b) < 1e-5,
                "{name} {side:?}: padded row differs from its unpadded run"
            );
            let key = format!("blocks.{}.hook_resid_post", m.config().n_layers - 1);
            let got = out.cache[&key]
                .get(1)
                .unwrap()
                .narrow(0, offset, 10)
                .unwrap();
            assert!(rel_err(&got, &rb.cache[&key].get(0).unwrap()) < 1e-5);
        }
    }
}

#[test]
fn explicit_position_ids_are_used() {
    let m = tiny("llama");
    let t = reference_tokens("llama")[0].clone();
    let base = m
        .transformer
        .run(&Batch::single(&t), &mut Run::new())
        .unwrap();
    let mut same = Batch::single(&t);
    same.position_ids = Some(vec![(0..t.len() as u32).collect()]);
    let out = m.transformer.run(&same, &mut Run::new()).unwrap();
    assert_eq!(
        max_abs_diff(out.logits().unwrap(), base.logits().unwrap()),
        0.0
    );
    let mut shifted = Batch::single(&t);
    shifted.position_ids = Some(vec![(5..5 + t.len() as u32).collect()]);
    let out = m.transformer.run(&shifted, &mut Run::new()).unwrap();
    // Rotary attention depends only on relative positions: a uniform shift is invisible…
    assert!(rel_err(out.logits().unwrap(), base.logits().unwrap()) < 1e-4);
    // …but the rotated queries themselves change.
    let q = |b: &Batch| {
        m.transformer
            .run(
                b,
                &mut Run::new().cache(filter(&m, "blocks.0.attn.hook_rot_q")),
            )
            .unwrap()
            .cache["blocks.0.attn.hook_rot_q"]
            .clone()
    };
    assert!(max_abs_diff(&q(&shifted), &q(&Batch::single(&t))) > 1e-3);
}

#[test]
fn stop_at_layer_returns_the_residual_entering_that_block() {
    for name in FAMILIES {
        let m = tiny(name);
        let t = reference_tokens(name)[0].clone();
        let full = m
            .transformer
            .run(
                &Batch::single(&t),
                &mut Run::new().cache(filter(&m, "blocks.1.hook_resid_pre")),
            )
            .unwrap();
        let out = m
            .transformer
            .run(&Batch::single(&t), &mut Run::new().stop_at_layer(1))
            .unwrap();
        assert!(
            out.logits.is_none(),
            "{name}: stop_at_layer must skip the unembedding"
        );
        assert_eq!(
            max_abs_diff(&out.residual, &full.cache["blocks.1.hook_resid_pre"]),
            0.0
        );
        assert!(m
            .transformer
            .run(&Batch::single(&t), &mut Run::new().stop_at_layer(99))
            .is_err());
    }
}

#[test]
fn hooks_read_and_replace_activations() {
    let m = tiny("llama");
    let t = reference_tokens("llama")[0].clone();
    let base = m
        .transformer
        .run(&Batch::single(&t), &mut Run::new())
        .unwrap();
    let mut seen = Vec::new();
    let out = m
        .transformer
        .run(
            &Batch::single(&t),
            &mut Run::new().hook(filter(&m, "blocks.*.hook_resid_post"), |name, x| {
                seen.push(name.to_string());
                Ok(x)
            }),
        )
        .unwrap();
    assert_eq!(
        seen,
        ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    );
    assert_eq!(
        max_abs_diff(out.logits().unwrap(), base.logits().unwrap()),
        0.0
    );
    let out = m
        .transformer
        .run(
            &Batch::single(&t),
            &mut Run::new().hook(filter(&m, "blocks.1.hook_resid_post"), |_, x| {
                Ok(x.zeros_like()?)
            }),
        )
        .unwrap();
    // Zero residual → the final norm sees zeros → every logit equals the same constant.
    let l = out.logits().unwrap();
    assert!(max_abs_diff(l, &l.zeros_like().unwrap()) < 1e-6);
}

#[test]
fn interventions_edit_only_what_they_select() {
    let m = tiny("llama");
    let t = reference_tokens("llama")[0].clone();
    let hook = "blocks.0.attn.hook_z";
    let run_with = |iv: Option<Intervention>| {
        let mut r = Run::new().cache(filter(&m, hook));
        if let Some(iv) = iv {
            r = r.intervene(filter(&m, hook), iv);
        }
        m.transformer.run(&Batch::single(&t), &mut r).unwrap()
    };
    let base = run_with(None);
    let z0 = &base.cache[hook];
    // zero-ablate head 2 at positions 3 and 5
    let out = run_with(Some(
        Intervention::new(Edit::ZeroAblate)
            .at_heads(vec![2])
            .at_positions(vec![3, 5]),
    ));
    let z = &out.cache[hook];
    for p in 0..t.len() {
        for h in 0..4 {
            let got = z.get(0).unwrap().get(p).unwrap().get(h).unwrap();
            let want = z0.get(0).unwrap().get(p).unwrap().get(h).unwrap();
            let d = max_abs_diff(&got, &want);
            if h == 2 && (p == 3 || p == 5) {
                assert_eq!(max_abs_diff(&got, &got.zeros_like().unwrap()), 0.0);
            } else {
                assert_eq!(d, 0.0, "head {h} position {p} changed");
            }
        }
    }
    // scale by 1 and add a zero vector change nothing
    for edit in [
        Edit::Scale(1.0),
        Edit::Add(Tensor::zeros(16, DType::F32, &Device::Cpu).unwrap()),
    ] {
        let out = run_with(Some(Intervention::new(edit)));
        assert_eq!(
            max_abs_diff(out.logits().unwrap(), base.logits().unwrap()),
            0.0
        );
    }
    // scale by 2 doubles the activation
    let out = run_with(Some(Intervention::new(Edit::Scale(2.0))));
    assert!(max_abs_diff(&out.cache[hook], &(z0 * 2.0).unwrap()) < 1e-6);
    // mean ablation over batch and positions makes every position equal
    let out = run_with(Some(Intervention::new(Edit::MeanAblate(None))));
    let z = out.cache[hook].get(0).unwrap();
    assert!(max_abs_diff(&z.get(0).unwrap(), &z.get(7).unwrap()) < 1e-6);
    assert!(max_abs_diff(&z.get(0).unwrap(), &z0.get(0).unwrap().mean(0).unwrap()) < 1e-6);
}

#[test]
fn patching_every_position_reproduces_the_source_run() {
    for name in FAMILIES {
        let m = tiny(name);
        let toks = reference_tokens(name);
        let (clean, corrupt) = (toks[0].clone(), toks[1].clone());
        let hook = "blocks.1.hook_resid_pre";
        let clean_run = m
            .transformer
            .run(
                &Batch::single(&clean),
                &mut Run::new().cache(filter(&m, hook)),
            )
            .unwrap();
        let patch = Intervention::new(Edit::Replace(clean_run.cache[hook].clone()));
        let patched = m
            .transformer
            .run(
                &Batch::single(&corrupt),
                &mut Run::new().intervene(filter(&m, hook), patch),
            )
            .unwrap();
        // Everything downstream of the patched residual is a function of it alone.
        assert_eq!(
            max_abs_diff(patched.logits().unwrap(), clean_run.logits().unwrap()),
            0.0,
            "{name}"
        );
        // Patching a run with its own cache changes nothing.
        let own = Intervention::new(Edit::Replace(clean_run.cache[hook].clone()))
            .at_positions(vec![2, 4]);
        let same = m
            .transformer
            .run(
                &Batch::single(&clean),
                &mut Run::new().intervene(filter(&m, hook), own),
            )
            .unwrap();
        assert_eq!(
            max_abs_diff(same.logits().unwrap(), clean_run.logits().unwrap()),
            0.0
        );
    }
}

#[test]
fn differentiable_pass_matches_the_fast_pass() {
    for name in FAMILIES {
        let m = tiny(name);
        let t = reference_tokens(name)[0].clone();
        let fast = m
            .transformer
            .run(&Batch::single(&t), &mut Run::new())
            .unwrap();
        let diff = m
            .transformer
            .run(
                &Batch::single(&t),
                &mut Run::new().grads(filter(&m, "hook_embed")),
            )
            .unwrap();
        assert!(
            rel_err(diff.logits().unwrap(), fast.logits().unwrap()) < 1e-5,
            "{name}"
        );
    }
}

/// d(logit)/d(activation) from backprop against central finite differences made by
/// adding ±ε at single coordinates through an intervention.
#[test]
fn gradients_match_finite_differences() {
    for name in FAMILIES {
        let m = tiny(name);
        let t = reference_tokens(name)[0][..8].to_vec();
        let (pos, tok) = (7usize, 11usize);
        let metric_of =
            |logits: &Tensor| logits.get(0).unwrap().get(pos).unwrap().get(tok).unwrap();
        for hook in [
            "blocks.0.hook_resid_post",
            "blocks.1.attn.hook_pattern",
            "blocks.0.mlp.hook_post",
            &norm_scale(&m, 1),
        ] {
            let out = m
                .transformer
                .run(
                    &Batch::single(&t),
                    &mut Run::new().grads(filter(&m, hook)).cache(filter(&m, hook)),
                )
                .unwrap();
            let grads = out.gradients(&metric_of(out.logits().unwrap())).unwrap();
            let g = &grads[hook];
            let shape = out.cache[hook].dims().to_vec();
            assert_eq!(g.dims(), shape.as_slice());
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            let gmax = g.iter().fold(0f32, |a, &b| a.max(b.abs()));
            assert!(gmax > 0.0, "{name} {hook}: gradient is all zero");
            // probe the largest-gradient coordinate and two others
            let top = g
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap()
                .0;
            for idx in [top, g.len() / 3, g.len() - 1] {
                let eps = 1e-2f64;
                let bump = |sign: f64| {
                    let mut v = vec![0f32; g.len()];
                    v[idx] = (sign * eps) as f32;
                    let delta = Tensor::from_vec(v, shape.as_slice(), &Device::Cpu).unwrap();
                    let o = m
                        .transformer
                        .run(
                            &Batch::single(&t),
                            &mut Run::new()
                                .intervene(filter(&m, hook), Intervention::new(Edit::Add(delta))),
                        )
                        .unwrap();
                    metric_of(o.logits().unwrap()).to_scalar::<f32>().unwrap() as f64
                };
                let fd = (bump(1.0) - bump(-1.0)) / (2.0 * eps);
                let tol = 2e-2 * gmax as f64 + 1e-3;
                assert!(
                    (fd - g[idx] as f64).abs() < tol,
                    "{name} {hook}[{idx}]: backprop {} vs finite difference {fd}",
                    g[idx]
                );
            }
        }
    }
}

#[test]
fn kv_cache_generation_matches_full_recomputation() {
    for name in FAMILIES {
        let m = tiny(name);
        // longer than gemma2's sliding window (8) so the window is exercised
        let prompt = reference_tokens(name)[0][..12].to_vec();
        let opts = glassbox_model::SamplingOptions {
            max_new_tokens: 10,
            ..Default::default()
        };
        let generated = m
            .transformer
            .generate(&prompt, &opts, &mut Run::new(), |_| {})
            .unwrap();
        let mut seq = prompt.clone();
        for &want in &generated {
            let o = m
                .transformer
                .run(
                    &Batch::single(&seq),
                    &mut Run::new().logits(LogitsMode::Last),
                )
                .unwrap();
            let row: Vec<f32> = o
                .logits()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32;
            assert_eq!(
                best,
                want,
                "{name}: cached generation diverged at length {}",
                seq.len()
            );
            seq.push(want);
        }
        // the cached logits themselves agree with a full pass
        let mut kv = KvCache::new(m.config());
        m.transformer
            .run_cached(&Batch::single(&seq[..12]), &mut Run::new(), &mut kv)
            .unwrap();
        let step = m
            .transformer
            .run_cached(&Batch::single(&seq[12..14]), &mut Run::new(), &mut kv)
            .unwrap();
        let full = m
            .transformer
            .run(&Batch::single(&seq[..14]), &mut Run::new())
            .unwrap();
        let want = full.logits().unwrap().narrow(1, 12, 2).unwrap();
        assert!(
            rel_err(step.logits().unwrap(), &want) < 1e-5,
            "{name}: cached logits differ"
        );
    }
}

/// Continuous batching: sequences prefilled alone, joined into one cache, decoded a
/// token at a time together, one leaving early — each row's logits are those of the
/// sequence decoded alone (f32 summation order only).
#[test]
// `step` indexes each sequence's own history and decides when row 1 leaves
#[allow(clippy::needless_range_loop)]
fn joined_kv_caches_decode_each_sequence_as_alone() {
    for name in FAMILIES {
        let m = tiny(name);
        let t = &m.transformer;
        let refs = reference_tokens(name);
        // unequal lengths; the longest beyond gemma2's sliding window (8)
        let prompts = [
            refs[0][..12].to_vec(),
            refs[1][..5].to_vec(),
            refs[0][3..10].to_vec(),
        ];
        let last_row = |o: &glassbox_model::RunOutput, r: usize| -> Vec<f32> {
            let l = o.logits().unwrap();
            let s = l.dim(1).unwrap();
            l.get(r).unwrap().get(s - 1).unwrap().to_vec1().unwrap()
        };
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0 as u32
        };
        // alone: prompt, then 6 greedy steps; the logits of every step
        let alone: Vec<Vec<Vec<f32>>> = prompts
            .iter()
            .map(|p| {
                let mut kv = KvCache::new(m.config());
                let mut run = Run::new().logits(LogitsMode::Last);
                let mut rows = vec![last_row(
                    &t.run_cached(&Batch::single(p), &mut run, &mut kv).unwrap(),
                    0,
                )];
                for _ in 0..6 {
                    let next = argmax(rows.last().unwrap());
                    let o = t
                        .run_cached(&Batch::single(&[next]), &mut run, &mut kv)
                        .unwrap();
                    rows.push(last_row(&o, 0));
                }
                rows
            })
            .collect();
        // together: prefill each alone, join, decode; row 1 leaves after 3 steps
        let mut caches = Vec::new();
        let mut next = Vec::new();
        for p in &prompts {
            let mut kv = KvCache::new(m.config());
            let o = t
                .run_cached(
                    &Batch::single(p),
                    &mut Run::new().logits(LogitsMode::Last),
                    &mut kv,
                )
                .unwrap();
            next.push(argmax(&last_row(&o, 0)));
            caches.push(kv);
        }
        let mut kv = KvCache::concat(caches).unwrap();
        assert_eq!(kv.real_lens(), vec![12, 5, 7]);
        let mut live: Vec<usize> = vec![0, 1, 2];
        for step in 1..=6 {
            if step == 4 {
                kv.retain(&[true, false, true]).unwrap();
                live.remove(1);
                next.remove(1);
                assert_eq!(
                    kv.len(),
                    12 + 3,
                    "{name}: padding of the remaining rows only"
                );
            }
            let batch = Batch::new(next.iter().map(|&x| vec![x]).collect());
            let o = t
                .run_cached(&batch, &mut Run::new().logits(LogitsMode::Last), &mut kv)
                .unwrap();
            for (r, &seq) in live.iter().enumerate() {
                let got = last_row(&o, r);
                let want = &alone[seq][step];
                let err = got
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(err < 1e-4, "{name}: row {seq} step {step} differs by {err}");
                next[r] = argmax(&got);
            }
        }
    }
}

#[test]
fn hooks_stay_active_while_generating() {
    let m = tiny("llama");
    let prompt = reference_tokens("llama")[0][..6].to_vec();
    let opts = glassbox_model::SamplingOptions {
        max_new_tokens: 5,
        ..Default::default()
    };
    let mut calls = 0;
    let plain = m
        .transformer
        .generate(&prompt, &opts, &mut Run::new(), |_| {})
        .unwrap();
    let mut run = Run::new().hook(filter(&m, "blocks.1.hook_resid_post"), |_, x| {
        calls += 1;
        Ok((x * 0.0)?)
    });
    let steered = m
        .transformer
        .generate(&prompt, &opts, &mut run, |_| {})
        .unwrap();
    drop(run);
    assert_eq!(calls, 5, "the hook must run once per generated token");
    assert_ne!(plain, steered);
}

/// The fused kernels run only where no hook looks inside them; every mix of fused and
/// composed pieces must give the same logits.
#[test]
fn fused_and_composed_paths_agree_whatever_is_hooked() {
    for name in FAMILIES {
        let m = tiny(name);
        let toks = reference_tokens(name);
        let batch = Batch::padded(
            &[toks[0].clone(), toks[1][..11].to_vec()],
            0,
            PaddingSide::Left,
        );
        let base = m.transformer.run(&batch, &mut Run::new()).unwrap();
        let mut specs = vec![
            "blocks.0.attn.hook_pattern",
            "blocks.1.attn.hook_attn_scores",
            "blocks.0.attn.hook_q",
            "blocks.1.attn.hook_v",
            "blocks.0.attn.hook_z",
            "blocks.1.mlp.hook_pre",
            "blocks.0.mlp.hook_post",
        ];
        let scale = norm_scale(&m, 0);
        specs.push(&scale);
        if m.config().rotary_dim.is_some() {
            specs.push("blocks.1.attn.hook_rot_k");
        }
        for spec in specs {
            let out = m
                .transformer
                .run(&batch, &mut Run::new().cache(filter(&m, spec)))
                .unwrap();
            let err = rel_err(out.logits().unwrap(), base.logits().unwrap());
            assert!(
                err < 1e-5,
                "{name}: caching {spec} changed the logits by {err:.2e}"
            );
        }
    }
}

#[test]
fn start_at_layer_continues_from_a_cached_residual() {
    for name in FAMILIES {
        let m = tiny(name);
        let t = reference_tokens(name)[0].clone();
        let full = m
            .transformer
            .run(
                &Batch::single(&t),
                &mut Run::new().cache(filter(&m, "blocks.1.hook_resid_pre")),
            )
            .unwrap();
        let resid = full.cache["blocks.1.hook_resid_pre"].clone();
        let out = m
            .transformer
            .run(&Batch::single(&t), &mut Run::new().start_at_layer(1, resid))
            .unwrap();
        assert_eq!(
            max_abs_diff(out.logits().unwrap(), full.logits().unwrap()),
            0.0,
            "{name}"
        );
        let bad = Tensor::zeros((1, 3, 64), DType::F32, &Device::Cpu).unwrap();
        assert!(m
            .transformer
            .run(&Batch::single(&t), &mut Run::new().start_at_layer(1, bad))
            .is_err());
    }
}
