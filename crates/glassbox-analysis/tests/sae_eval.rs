//! Dictionary evaluation on the tiny llama fixture, with dictionaries built here whose
//! answers are known: an exact one, an all-zero one, a random one checked against a
//! brute-force count, and transcoders.

use candle_core::{Device, Tensor};
use glassbox_analysis::sae_eval::{apply_dictionary, evaluate, EvalOptions, SaeEval};
use glassbox_fixtures::tiny_dir;
use glassbox_model::{load_model, Batch, HookFilter, Model, Run};
use glassbox_sae::{Architecture, Dictionary};

const D: usize = 64; // tiny-llama's d_model

fn tiny() -> Model {
    load_model(&tiny_dir("llama")).unwrap()
}

/// Deterministic pseudo-random numbers in [0, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `n` windows of `len` tokens, each starting with BOS (1).
fn windows(n: usize, len: usize) -> Vec<Vec<u32>> {
    let mut r = Lcg(7);
    (0..n)
        .map(|_| {
            std::iter::once(1)
                .chain((1..len).map(|_| 3 + (r.next() * 500.0) as u32))
                .collect()
        })
        .collect()
}

fn t2(v: Vec<f32>, rows: usize, cols: usize) -> Tensor {
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn t1(v: Vec<f32>) -> Tensor {
    let n = v.len();
    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
}

/// A standard (ReLU) dictionary with the given weights.
fn dictionary(
    w_enc: Tensor,
    b_enc: Tensor,
    w_dec: Tensor,
    hook: Option<&str>,
    hook_out: Option<&str>,
) -> Dictionary {
    let (d_in, d_sae) = w_enc.dims2().unwrap();
    let d_out = w_dec.dim(1).unwrap();
    Dictionary {
        architecture: Architecture::Standard,
        d_in,
        d_sae,
        d_out,
        k: None,
        apply_b_dec_to_input: true,
        w_enc,
        b_enc: Some(b_enc),
        w_dec,
        b_dec: t1(vec![0.0; d_out]),
        threshold: None,
        b_gate: None,
        r_mag: None,
        b_mag: None,
        w_skip: None,
        hook_name: hook.map(String::from),
        hook_name_out: hook_out.map(String::from),
        model_name: None,
        extra_cfg: serde_json::Map::new(),
    }
}

/// d_sae = 2·d: W_enc = [I, −I], W_dec = [I; −I], so relu(x) − relu(−x) = x exactly.
fn identity(hook: &str, hook_out: Option<&str>) -> Dictionary {
    let mut enc = vec![0f32; D * 2 * D];
    let mut dec = vec![0f32; 2 * D * D];
    for i in 0..D {
        enc[i * 2 * D + i] = 1.0;
        enc[i * 2 * D + D + i] = -1.0;
        dec[i * D + i] = 1.0;
        dec[(D + i) * D + i] = -1.0;
    }
    dictionary(
        t2(enc, D, 2 * D),
        t1(vec![0.0; 2 * D]),
        t2(dec, 2 * D, D),
        Some(hook),
        hook_out,
    )
}

fn eval(m: &Model, d: &Dictionary) -> SaeEval {
    let w = windows(6, 16);
    let mut seen = 0;
    let r = evaluate(
        &m.transformer,
        d,
        &w,
        &EvalOptions {
            batch_windows: 4, // two batches: the running sums must merge
            ..EvalOptions::default()
        },
        |n| seen += n,
    )
    .unwrap();
    assert_eq!(seen, 6, "progress reports every window");
    assert_eq!((r.windows, r.context_size, r.tokens), (6, 16, 6 * 15));
    assert_eq!(r.window_tokens, r.tokens);
    assert!(r.first_position_excluded && !r.first_position_spliced);
    assert_eq!(r.ce_tokens, 6 * 14);
    assert_eq!(
        r.density_histogram.counts.iter().sum::<u64>(),
        d.d_sae as u64
    );
    r
}

/// Activations of `hook` at positions ≥ 1 of the evaluation windows, as rows.
fn activations(m: &Model, hook: &str) -> Vec<Vec<f32>> {
    let w = windows(6, 16);
    let f = HookFilter::parse(hook, m.config()).unwrap();
    let out = m
        .transformer
        .run(&Batch::new(w), &mut Run::new().cache(f))
        .unwrap();
    let a = out.cache[hook].to_vec3::<f32>().unwrap();
    a.into_iter()
        .flat_map(|win| win.into_iter().skip(1))
        .collect()
}

/// Σ_d Var(x_d) over rows, two-pass.
fn total_variance(x: &[Vec<f32>]) -> f64 {
    let n = x.len() as f64;
    (0..x[0].len())
        .map(|j| {
            let mean = x.iter().map(|r| r[j] as f64).sum::<f64>() / n;
            x.iter().map(|r| (r[j] as f64 - mean).powi(2)).sum::<f64>() / n
        })
        .sum()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

#[test]
fn an_exact_dictionary_recovers_everything() {
    let m = tiny();
    // layer 1: the spliced pass resumes from the clean residual at block 1; hook_z is
    // per head ([batch, pos, 4, 16]), read with its heads flattened to 64
    for hook in [
        "blocks.0.hook_resid_post",
        "blocks.1.hook_mlp_out",
        "blocks.1.attn.hook_z",
    ] {
        exact(&m, hook);
    }
}

fn exact(m: &Model, hook: &str) {
    let r = eval(m, &identity(hook, None));
    assert!(!r.transcoder);
    assert!(r.fvu.abs() < 1e-9, "{hook}: FVU {}", r.fvu);
    assert!((r.explained_variance - 1.0).abs() < 1e-9);
    assert!((r.cosine - 1.0).abs() < 1e-6, "cosine {}", r.cosine);
    assert!(
        (r.ce_recovered - 1.0).abs() < 1e-6,
        "{hook}: CE rec {}",
        r.ce_recovered
    );
    assert!(
        (r.kl_recovered - 1.0).abs() < 1e-6,
        "{hook}: KL rec {}",
        r.kl_recovered
    );
    assert!(r.kl_spliced.abs() < 1e-6, "{hook}: KL {}", r.kl_spliced);
    // a random model: zeroing changes the loss (either way), which the ratios need
    assert!(
        (r.ce_zero_ablated - r.ce_clean).abs() > 1e-3,
        "zeroing the residual stream must change the loss: {} vs {}",
        r.ce_zero_ablated,
        r.ce_clean
    );
    assert!(r.kl_zero_ablated > 0.0);
    // each coordinate fires on one of its two features (exact zeros fire on neither)
    assert!(r.l0 > 0.9 * D as f64 && r.l0 <= D as f64, "L0 {}", r.l0);
}

#[test]
fn an_all_zero_decoder_recovers_nothing() {
    let m = tiny();
    let mut d = identity("blocks.1.hook_resid_pre", None);
    d.w_dec = d.w_dec.zeros_like().unwrap();
    let r = eval(&m, &d);
    // the reconstruction is b_dec = 0: spliced and zero-ablated passes are the same
    assert!(r.ce_recovered.abs() < 1e-9, "CE rec {}", r.ce_recovered);
    assert!(r.kl_recovered.abs() < 1e-9, "KL rec {}", r.kl_recovered);
    assert!((r.ce_zero_ablated - r.ce_clean).abs() > 1e-3);
    // FVU of predicting 0 = E‖x‖² / Σ Var(x_d)
    let x = activations(&m, "blocks.1.hook_resid_pre");
    let sq = x
        .iter()
        .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>())
        .sum::<f64>()
        / x.len() as f64;
    assert!(close(r.fvu, sq / total_variance(&x), 1e-6), "{}", r.fvu);
    assert_eq!(r.cosine, 0.0);
}

#[test]
fn sparsity_and_reconstruction_match_a_brute_force_count() {
    let m = tiny();
    let hook = "blocks.1.hook_resid_post";
    let d_sae = 96;
    let mut rng = Lcg(11);
    let w_enc: Vec<f32> = (0..D * d_sae).map(|_| rng.next() - 0.5).collect();
    let w_dec: Vec<f32> = (0..d_sae * D).map(|_| (rng.next() - 0.5) * 0.2).collect();
    // 0..8 never fire, 8..16 always fire, the rest somewhere between
    let b_enc: Vec<f32> = (0..d_sae)
        .map(|i| match i {
            0..8 => -1e6,
            8..16 => 1e6,
            _ => (rng.next() - 0.8) * 8.0,
        })
        .collect();
    let d = dictionary(
        t2(w_enc.clone(), D, d_sae),
        t1(b_enc.clone()),
        t2(w_dec.clone(), d_sae, D),
        Some(hook),
        None,
    );
    let r = eval(&m, &d);
    let x = activations(&m, hook);
    let n = x.len();
    let (mut active, mut fired) = (0usize, vec![0usize; d_sae]);
    let (mut sq, mut cos) = (0f64, 0f64);
    for row in &x {
        let f: Vec<f64> = (0..d_sae)
            .map(|j| {
                let pre = (0..D)
                    .map(|i| row[i] as f64 * w_enc[i * d_sae + j] as f64)
                    .sum::<f64>()
                    + b_enc[j] as f64;
                pre.max(0.0)
            })
            .collect();
        for (j, &v) in f.iter().enumerate() {
            if v > 0.0 {
                active += 1;
                fired[j] += 1;
            }
        }
        let xh: Vec<f64> = (0..D)
            .map(|i| (0..d_sae).map(|j| f[j] * w_dec[j * D + i] as f64).sum())
            .collect();
        sq += row
            .iter()
            .zip(&xh)
            .map(|(&a, b)| (a as f64 - b).powi(2))
            .sum::<f64>();
        let dot: f64 = row.iter().zip(&xh).map(|(&a, b)| a as f64 * b).sum();
        let na = row.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
        let nb = xh.iter().map(|b| b * b).sum::<f64>().sqrt();
        cos += dot / (na * nb);
    }
    let l0 = active as f64 / n as f64;
    let dead = fired.iter().filter(|&&c| c == 0).count() as f64 / d_sae as f64;
    let dense = fired.iter().filter(|&&c| c as f64 / n as f64 > 0.1).count() as f64 / d_sae as f64;
    assert_eq!(r.tokens, n as u64);
    assert!(close(r.l0, l0, 1e-9), "L0 {} vs brute force {l0}", r.l0);
    assert_eq!(r.dead_fraction, dead);
    assert_eq!(r.dense_fraction, dense);
    assert!(dead >= 8.0 / d_sae as f64 && dense >= 8.0 / d_sae as f64);
    assert!(
        dead < 0.5 && l0 > 8.0,
        "the random features should mostly fire sometimes"
    );
    let counts: Vec<u64> = fired.iter().map(|&c| c as u64).collect();
    assert_eq!(r.firing_counts, counts);
    let fvu = sq / n as f64 / total_variance(&x);
    assert!(
        close(r.fvu, fvu, 1e-4),
        "FVU {} vs brute force {fvu}",
        r.fvu
    );
    assert!(close(r.cosine, cos / n as f64, 1e-4));
    // clean loss: every prediction from positions 1..15 of each window
    let w = windows(6, 16);
    let logits = m
        .transformer
        .run(&Batch::new(w.clone()), &mut Run::new())
        .unwrap()
        .logits
        .unwrap();
    let lp = glassbox_analysis::metric::log_softmax(&logits)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let (mut ce, mut count) = (0f64, 0);
    for (win, lp) in w.iter().zip(&lp) {
        for p in 1..win.len() - 1 {
            ce -= lp[p][win[p + 1] as usize] as f64;
            count += 1;
        }
    }
    assert_eq!(r.ce_tokens, count);
    assert!(close(r.ce_clean, ce / count as f64, 1e-5), "{}", r.ce_clean);
    // dead features land in the first density bin, always-firing ones in the last
    let h = &r.density_histogram.counts;
    assert_eq!(h.len(), 20);
    assert_eq!(h[0], fired.iter().filter(|&&c| c == 0).count() as u64);
    assert!(h[19] >= 8);
}

#[test]
fn transcoders_are_judged_at_their_output_hook() {
    let m = tiny();
    // blocks.1.hook_resid_pre is blocks.0.hook_resid_post: an identity map between them
    // is an exact transcoder (its output hook runs before its input hook)
    let d = identity("blocks.1.hook_resid_pre", Some("blocks.0.hook_resid_post"));
    assert!(d.is_transcoder());
    let r = eval(&m, &d);
    assert!(r.transcoder);
    assert_eq!(r.hook_out, "blocks.0.hook_resid_post");
    assert!(r.fvu.abs() < 1e-9 && (r.ce_recovered - 1.0).abs() < 1e-6);

    // an MLP transcoder predicting nothing: spliced = zero-ablated hook_mlp_out, and the
    // FVU is measured against the true MLP output
    let mut d = identity(
        "blocks.0.ln2.hook_normalized",
        Some("blocks.0.hook_mlp_out"),
    );
    d.w_dec = d.w_dec.zeros_like().unwrap();
    let r = eval(&m, &d);
    assert!(r.ce_recovered.abs() < 1e-9 && r.kl_recovered.abs() < 1e-9);
    assert!((r.ce_zero_ablated - r.ce_clean).abs() > 1e-3);
    let x = activations(&m, "blocks.0.hook_mlp_out");
    let sq = x
        .iter()
        .map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>())
        .sum::<f64>()
        / x.len() as f64;
    assert!(close(r.fvu, sq / total_variance(&x), 1e-6));
}

#[test]
fn wrong_width_and_missing_hook_are_refused() {
    let m = tiny();
    let w = windows(2, 8);
    let narrow = dictionary(
        t2(vec![0.0; 32 * 8], 32, 8),
        t1(vec![0.0; 8]),
        t2(vec![0.0; 8 * 32], 8, 32),
        Some("blocks.0.hook_resid_post"),
        None,
    );
    let e = evaluate(&m.transformer, &narrow, &w, &EvalOptions::default(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("32") && e.contains("64") && e.contains("blocks.0.hook_resid_post"),
        "{e}"
    );
    // the MLP's hidden width is 176: a 64-wide dictionary does not fit there either
    let e = evaluate(
        &m.transformer,
        &identity("blocks.0.mlp.hook_post", None),
        &w,
        &EvalOptions::default(),
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("176") && e.contains("64"), "{e}");

    let mut anonymous = identity("x", None);
    anonymous.hook_name = None;
    let e = evaluate(
        &m.transformer,
        &anonymous,
        &w,
        &EvalOptions::default(),
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--hook"), "{e}");
    // ... and --hook fixes it
    let opts = EvalOptions {
        hook: Some("blocks.0.hook_resid_post".into()),
        ..EvalOptions::default()
    };
    assert!(evaluate(&m.transformer, &anonymous, &w, &opts, |_| {}).is_ok());

    let e = evaluate(
        &m.transformer,
        &identity("blocks.0.hook_resid_psot", None),
        &w,
        &EvalOptions::default(),
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("did you mean"), "{e}");
}

#[test]
fn applying_a_dictionary_checks_its_input() {
    let d = identity("blocks.0.hook_resid_post", None);
    let x = t2((0..3 * D).map(|i| i as f32 - 90.0).collect(), 3, D);
    let (f, out) = apply_dictionary(&d, &x).unwrap();
    assert_eq!(f.dims(), [3, 2 * D]);
    assert_eq!(glassbox_fixtures::max_abs_diff(&out, &x), 0.0);
    let e = apply_dictionary(&d, &t2(vec![0.0; 3 * 10], 3, 10))
        .unwrap_err()
        .to_string();
    assert!(e.contains("10") && e.contains("64"), "{e}");
    let mut v = vec![0.0; 2 * D];
    v[D + 5] = f32::NAN;
    let e = apply_dictionary(&d, &t2(v, 2, D)).unwrap_err().to_string();
    assert!(e.contains("NaN") && e.contains("row 1, column 5"), "{e}");
}

/// Evaluation counts the tokens training does (issue: eval-sae's FVU 0.082 against
/// train-sae's 0.039 for one dictionary): with a BOS inside packed windows, the rows
/// evaluated are exactly the rows the training harvest keeps, so the FVU computed on
/// the harvested rows equals the evaluation's, and the BOS is neither scored nor spliced.
#[test]
fn evaluation_uses_the_training_row_rule() {
    let m = tiny();
    let hook = "blocks.1.hook_resid_post";
    let rule = glassbox_model::RowRule::for_model(&m);
    assert!(
        rule.excluded_tokens().contains(&1),
        "the fixture's BOS is 1"
    );
    let mut w = windows(6, 16);
    for win in &mut w {
        win[7] = 1; // a document boundary, as `pack` joins documents
    }
    let d_sae = 32;
    let mut rng = Lcg(5);
    let w_enc: Vec<f32> = (0..D * d_sae).map(|_| rng.next() - 0.5).collect();
    let w_dec: Vec<f32> = (0..d_sae * D).map(|_| (rng.next() - 0.5) * 0.2).collect();
    let d = dictionary(
        t2(w_enc, D, d_sae),
        t1(vec![0.1; d_sae]),
        t2(w_dec, d_sae, D),
        Some(hook),
        None,
    );
    let opts = EvalOptions {
        batch_windows: 4,
        rows: rule.clone(),
        ..EvalOptions::default()
    };
    let r = evaluate(&m.transformer, &d, &w, &opts, |_| {}).unwrap();
    // positions 1..15 of each window but the BOS at 7; CE: those with a next token
    assert_eq!((r.tokens, r.tokens_excluded), (6 * 14, 6 * 2));
    assert_eq!(r.ce_tokens, 6 * 13);
    assert_eq!(r.excluded_token_ids, rule.excluded_tokens());
    let harvest = glassbox_data::HarvestOptions {
        batch_windows: 8,
        rows: rule,
    };
    let (rows, width) = glassbox_data::harvest_with(&m, &w, hook, &harvest, |_| {}).unwrap();
    assert_eq!(rows.len() / width, r.tokens as usize, "the training rows");
    let x: Vec<Vec<f32>> = rows.chunks(width).map(<[f32]>::to_vec).collect();
    let xt = t2(rows.clone(), x.len(), width);
    let (_, xh) = apply_dictionary(&d, &xt).unwrap();
    let xh: Vec<f32> = xh.flatten_all().unwrap().to_vec1().unwrap();
    let sq: f64 = rows
        .iter()
        .zip(&xh)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let fvu = sq / x.len() as f64 / total_variance(&x);
    assert!(
        close(r.fvu, fvu, 1e-4),
        "eval FVU {} vs training rows {fvu}",
        r.fvu
    );
    // an exact dictionary changes nothing, whatever is (not) spliced at the BOS
    let e = evaluate(&m.transformer, &identity(hook, None), &w, &opts, |_| {}).unwrap();
    assert!(e.kl_spliced.abs() < 1e-9 && (e.ce_spliced - e.ce_clean).abs() < 1e-9);
}
