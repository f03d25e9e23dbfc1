//! Harvesting on the tiny fixtures: special tokens and position 0 left out, several
//! hooks from one pass, hooks past the last block, NaN detection.

use glassbox_data::{harvest, harvest_hooks, harvest_with, DataError, HarvestOptions};
use glassbox_fixtures::tiny_dir;
use glassbox_model::{load_model, Batch, HookFilter, LogitsMode, Model, Run};

fn tiny(name: &str) -> Model {
    load_model(&tiny_dir(name)).unwrap()
}

/// Deterministic windows of `len` tokens with `special` planted at a few positions
/// (including mid-window, as `pack` does between documents).
fn windows(n: usize, len: usize, special: u32) -> Vec<Vec<u32>> {
    let mut x = 12345u64;
    (0..n)
        .map(|w| {
            (0..len)
                .map(|p| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if p == 0 || (w + p) % 5 == 0 {
                        special
                    } else {
                        10 + (x >> 33) as u32 % 400
                    }
                })
                .collect()
        })
        .collect()
}

/// Rows of `hook` at the kept positions from one direct forward pass.
fn direct_rows(m: &Model, ws: &[Vec<u32>], hook: &str, exclude: &[u32]) -> Vec<f32> {
    let mut run = Run::new()
        .cache(HookFilter::parse(hook, m.config()).unwrap())
        .logits(LogitsMode::All);
    let out = m
        .transformer
        .run(&Batch::new(ws.to_vec()), &mut run)
        .unwrap();
    let a = out.cache[hook]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let width = a.len() / (ws.len() * ws[0].len());
    let mut rows = Vec::new();
    for (w, win) in ws.iter().enumerate() {
        for (p, t) in win.iter().enumerate() {
            if p > 0 && !exclude.contains(t) {
                rows.extend_from_slice(&a[(w * win.len() + p) * width..][..width]);
            }
        }
    }
    rows
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn special_tokens_and_position_zero_are_left_out() {
    let m = tiny("llama");
    assert_eq!(
        glassbox_model::RowRule::for_model(&m).excluded_tokens(),
        [1, 2]
    );
    let ws = windows(4, 12, 1);
    let planted = ws.iter().flat_map(|w| &w[1..]).filter(|&&t| t == 1).count();
    assert!(planted > 0);
    let hook = "blocks.1.hook_resid_post";
    // the default wrapper excludes the model's BOS/EOS
    let (rows, width) = harvest(&m, &ws, hook, 4, |_| {}).unwrap();
    assert_eq!(width, 64);
    assert_eq!(rows.len() / width, 4 * 11 - planted);
    let want = direct_rows(&m, &ws, hook, &[1, 2]);
    assert!(max_diff(&rows, &want) < 1e-4);

    // with nothing excluded only position 0 goes
    let opts = HarvestOptions {
        batch_windows: 3,
        rows: glassbox_model::RowRule::default(),
    };
    let mut seen = 0;
    let (rows, _) = harvest_with(&m, &ws, hook, &opts, |n| seen += n).unwrap();
    assert_eq!(seen, 4);
    assert_eq!(rows.len() / width, 4 * 11);
}

#[test]
fn several_hooks_come_from_one_pass_and_stay_aligned() {
    let m = tiny("gpt2");
    let ws = windows(3, 10, 7);
    let hooks = [
        "hook_embed".to_string(),
        "blocks.0.mlp.hook_post".to_string(),
        "blocks.1.attn.hook_z".to_string(),
        "ln_final.hook_normalized".to_string(),
    ];
    let opts = HarvestOptions {
        batch_windows: 2,
        rows: glassbox_model::RowRule::new([7]),
    };
    let h = harvest_hooks(&m, &ws, &hooks, &opts, |_| {}).unwrap();
    assert_eq!(h.widths, [64, 256, 64, 64]);
    for (i, hook) in hooks.iter().enumerate() {
        assert_eq!(h.rows[i].len(), h.n_rows * h.widths[i]);
        let want = direct_rows(&m, &ws, hook, &[7]);
        assert!(max_diff(&h.rows[i], &want) < 1e-4, "{hook}");
    }
}

#[test]
fn patterns_unknown_hooks_and_attention_patterns_are_refused() {
    let m = tiny("gpt2");
    let ws = windows(1, 4, 7);
    let opts = HarvestOptions {
        batch_windows: 1,
        rows: glassbox_model::RowRule::default(),
    };
    let err = |hooks: &[&str]| {
        let hooks: Vec<String> = hooks.iter().map(|s| s.to_string()).collect();
        harvest_hooks(&m, &ws, &hooks, &opts, |_| {})
            .unwrap_err()
            .to_string()
    };
    let e = err(&["blocks.0.hook_resid_pst"]);
    assert!(e.contains("blocks.0.hook_resid_post"), "{e}");
    let e = err(&["blocks.*.hook_resid_post"]);
    assert!(e.contains("pattern"), "{e}");
    let e = err(&["blocks.0.attn.hook_pattern"]);
    assert!(e.contains("attention pattern"), "{e}");
    let e = err(&["hook_embed", "hook_embed"]);
    assert!(e.contains("twice"), "{e}");
    let e = err(&[]);
    assert!(e.contains("no hook"), "{e}");
}

/// A copy of tiny-gpt2 whose embedding of token 5 is infinite.
pub fn broken_gpt2(dir: &std::path::Path) -> Model {
    let src = tiny_dir("gpt2");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut t =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let wte = &t["transformer.wte.weight"];
    let mut v = wte.to_vec2::<f32>().unwrap();
    v[5][3] = f32::INFINITY;
    let fixed = candle_core::Tensor::new(v, &candle_core::Device::Cpu).unwrap();
    t.insert("transformer.wte.weight".into(), fixed);
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    load_model(dir).unwrap()
}

#[test]
fn non_finite_activations_are_an_error_naming_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let m = broken_gpt2(dir.path());
    let mut ws = windows(3, 6, 7);
    ws[2][4] = 5;
    let opts = HarvestOptions {
        batch_windows: 2,
        rows: glassbox_model::RowRule::default(),
    };
    let e = harvest_hooks(&m, &ws, &["hook_embed".to_string()], &opts, |_| {}).unwrap_err();
    assert!(matches!(e, DataError::NonFinite { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("`hook_embed`") && msg.contains("windows 2..3"),
        "{msg}"
    );
    // the token is excluded: no row, no error
    let opts = HarvestOptions {
        batch_windows: 2,
        rows: glassbox_model::RowRule::new([5]),
    };
    assert!(harvest_hooks(&m, &ws, &["hook_embed".to_string()], &opts, |_| {}).is_ok());
}
