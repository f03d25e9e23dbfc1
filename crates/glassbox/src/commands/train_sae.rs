use crate::open::{atomic_write, open_model, progress};
use anyhow::{Context, Result};
use glassbox_sae::topk_train::{forward, selections, step, Adam, TopKSae, Workspace};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::PathBuf;

/// A first, deliberately small trainer: TopK only, activations harvested into memory,
/// one pass. The full store, other architectures, AuxK and checkpoints are not here yet.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    /// A .txt file or a folder of .txt files (default: the fetched State of the Union corpus)
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[arg(long, default_value = "blocks.15.hook_resid_post")]
    hook: String,
    #[arg(long, default_value_t = 4608)]
    d_sae: usize,
    #[arg(long, default_value_t = 32)]
    k: usize,
    /// Training tokens (first positions of windows excluded)
    #[arg(long, default_value_t = 200_000)]
    tokens: usize,
    #[arg(long, default_value_t = 128)]
    context_size: usize,
    #[arg(long, default_value_t = 2048)]
    batch: usize,
    /// Adam learning rate (1e-3 measured better than SAELens' 3e-4 for short one-pass runs)
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (SAELens format + metrics.json)
    #[arg(long)]
    out: PathBuf,
    /// Also write the harvested activations (`train` shuffled, `eval`) as safetensors,
    /// for training a baseline on identical data (../shared/bench/saelens_train_on_acts.py)
    #[arg(long)]
    export_acts: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(
        a.k > 0 && a.k <= a.d_sae,
        "--k must be between 1 and --d-sae"
    );
    anyhow::ensure!(
        a.tokens >= a.batch && a.batch > 0,
        "--tokens must be at least one --batch"
    );
    anyhow::ensure!(
        a.lr.is_finite() && a.lr > 0.0,
        "--lr must be a positive number"
    );
    let model = open_model(&a.model)?;
    let corpus = match &a.corpus {
        Some(c) => c.clone(),
        None => glassbox_hub::fetch_default_corpus()?.join("data"),
    };
    let texts = glassbox_data::read_texts(&corpus)?;
    let bos = model.tokenizer()?.bos_token_id;
    let (train_w, eval_w) = glassbox_data::pack(&model, &texts, a.context_size, bos, a.seed, 0.05)?;
    let per_window = a.context_size - 1;
    let want = a.tokens.div_ceil(per_window);
    anyhow::ensure!(
        train_w.len() >= want,
        "the corpus packs into {} training windows ({} tokens); --tokens {} needs {want}",
        train_w.len(),
        train_w.len() * per_window,
        a.tokens
    );
    let eval_w = &eval_w[..eval_w.len().min(64)];
    let bar = progress(want + eval_w.len(), "harvesting activations (windows)");
    let (mut rows, d) =
        glassbox_data::harvest(&model, &train_w[..want], &a.hook, 8, |n| bar.inc(n as u64))?;
    let (eval_rows, _) = glassbox_data::harvest(&model, eval_w, &a.hook, 8, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    // shuffle tokens across windows (seeded), then train one pass
    let n = rows.len() / d;
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(a.seed));
    let shuffled: Vec<f32> = order
        .iter()
        .flat_map(|&i| rows[i * d..(i + 1) * d].iter().copied())
        .collect();
    rows = shuffled;
    if let Some(path) = &a.export_acts {
        let dev = &candle_core::Device::Cpu;
        let t = std::collections::HashMap::from([
            (
                "train".to_string(),
                candle_core::Tensor::from_slice(&rows, (n, d), dev)?,
            ),
            (
                "eval".to_string(),
                candle_core::Tensor::from_slice(&eval_rows, (eval_rows.len() / d, d), dev)?,
            ),
        ]);
        atomic_write(path, |tmp| {
            candle_core::safetensors::save(&t, tmp).context("cannot write activations")
        })?;
    }
    let mut sae = TopKSae::init(d, a.d_sae, a.k, a.seed);
    sae.init_b_dec_mean(&rows);
    let mut ws = Workspace::new(&sae, a.batch);
    let mut opt = Adam::new(&sae, a.lr);
    let steps = n / a.batch;
    let bar = progress(steps, "training TopK SAE (steps)");
    let started = std::time::Instant::now();
    let mut log = Vec::new();
    for s in 0..steps {
        let st = step(
            &mut sae,
            &rows[s * a.batch * d..(s + 1) * a.batch * d],
            &mut ws,
            &mut opt,
        );
        bar.inc(1);
        if s % 10 == 0 || s + 1 == steps {
            let tps = ((s + 1) * a.batch) as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "training TopK SAE: mse {:.2}, {:.0} tokens/s",
                st.mse, tps
            ));
            log.push(serde_json::json!({"step": s, "tokens": (s + 1) * a.batch, "mse": st.mse}));
        }
    }
    bar.finish_and_clear();
    let train_secs = started.elapsed().as_secs_f64();
    // evaluation on held-out windows: FVU, L0, dead features
    let m = eval_rows.len() / d;
    let mut mean = vec![0f64; d];
    for r in eval_rows.chunks(d) {
        for (mu, v) in mean.iter_mut().zip(r) {
            *mu += *v as f64 / m as f64;
        }
    }
    let var: f64 = eval_rows
        .chunks(d)
        .map(|r| {
            r.iter()
                .zip(&mean)
                .map(|(v, mu)| (*v as f64 - mu).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / m as f64;
    let eb = a.batch.min(m);
    let mut ews = Workspace::new(&sae, eb);
    let (mut sq, mut active, mut fired) = (0f64, 0usize, vec![false; a.d_sae]);
    let full = m / eb * eb;
    for chunk in eval_rows[..full * d].chunks(eb * d) {
        sq += forward(&sae, chunk, &mut ews) as f64 * eb as f64;
        let (idx, val) = selections(&ews);
        for (&i, &v) in idx.iter().zip(val) {
            if v > 0.0 {
                active += 1;
                fired[i as usize] = true;
            }
        }
    }
    let fvu = sq / full as f64 / var;
    let l0 = active as f64 / full as f64;
    let dead = fired.iter().filter(|&&f| !f).count() as f64 / a.d_sae as f64;
    let dict = sae.to_dictionary(Some(a.hook.clone()), Some(crate::open::model_label(&model)))?;
    glassbox_sae::format::save_saelens(&dict, &a.out)?;
    let metrics = serde_json::json!({
        "hook": a.hook, "d_in": d, "d_sae": a.d_sae, "k": a.k, "train_tokens": steps * a.batch, "lr": a.lr,
        "context_size": a.context_size, "first_position_excluded": true, "seed": a.seed,
        "train_seconds": train_secs, "train_tokens_per_s": (steps * a.batch) as f64 / train_secs,
        "eval": {"tokens": full, "fvu": fvu, "explained_variance": 1.0 - fvu, "l0": l0, "dead_fraction": dead,
                 "dead_window_tokens": full},
        "log": log,
    });
    atomic_write(&a.out.join("metrics.json"), |tmp| {
        Ok(std::fs::write(
            tmp,
            serde_json::to_string_pretty(&metrics)?,
        )?)
    })
    .context("metrics.json")?;
    println!(
        "trained TopK SAE d_sae={} k={} on {} tokens of {} in {train_secs:.1} s; held-out ({full} tokens): FVU {fvu:.4}, L0 {l0:.1}, dead {:.1} %",
        a.d_sae, a.k, steps * a.batch, a.hook, dead * 100.0
    );
    println!("saved SAELens files to {}", a.out.display());
    Ok(())
}
