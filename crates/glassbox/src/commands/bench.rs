use crate::open::open_model;
use anyhow::Result;
use glassbox_model::{Batch, Run};
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum What {
    /// Forward-pass throughput on random tokens (median of timed runs after a warm-up)
    Forward(ForwardArgs),
    /// Dictionary training-step throughput on random Gaussian inputs (forward, backward,
    /// Adam; median of 5 steps after a warm-up), as ../shared/bench/saelens_train_step.py
    #[command(alias = "sae-step")]
    Sae(SaeArgs),
    /// Batched decoding (the model server's inner loop without HTTP): B sequences with a
    /// 16-token prompt each, joined into one KV cache, then one forward per new token
    Decode(DecodeArgs),
}

#[derive(clap::Args)]
pub struct DecodeArgs {
    #[arg(long)]
    model: String,
    /// Batch sizes to time, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    batch: Vec<usize>,
    /// New tokens per sequence
    #[arg(long, default_value_t = 64)]
    tokens: usize,
}

fn decode(a: DecodeArgs) -> Result<()> {
    use glassbox_model::{KvCache, LogitsMode};
    anyhow::ensure!(
        a.tokens > 0 && a.batch.iter().all(|&b| b > 0),
        "--batch and --tokens must be positive"
    );
    let model = open_model(&a.model)?;
    let t = &model.transformer;
    let vocab = model.config().d_vocab as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    for &b in &a.batch {
        let start = Instant::now();
        let mut parts = Vec::new();
        for _ in 0..b {
            let prompt: Vec<u32> = (0..16).map(|_| rng.gen_range(0..vocab)).collect();
            let mut kv = KvCache::new(model.config());
            t.run_cached(
                &Batch::single(&prompt),
                &mut Run::new().logits(LogitsMode::Last),
                &mut kv,
            )?;
            parts.push(kv);
        }
        let prefill = start.elapsed().as_secs_f64();
        let mut kv = KvCache::concat(parts)?;
        let mut steps = Vec::new();
        for _ in 0..a.tokens {
            let next: Vec<Vec<u32>> = (0..b).map(|_| vec![rng.gen_range(0..vocab)]).collect();
            let s = Instant::now();
            t.run_cached(
                &Batch::new(next),
                &mut Run::new().logits(LogitsMode::Last),
                &mut kv,
            )?;
            steps.push(s.elapsed().as_secs_f64());
        }
        let total: f64 = steps.iter().sum();
        steps.sort_by(f64::total_cmp);
        println!(
            "glassbox decode batch={b}: {:.1} tokens/s ({} steps, median step {:.3} s; {b} prefills {:.2} s)",
            (b * a.tokens) as f64 / total,
            a.tokens,
            steps[steps.len() / 2],
            prefill
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct SaeArgs {
    /// topk | batchtopk | standard | jumprelu | gated
    #[arg(long, default_value = "topk")]
    arch: String,
    #[arg(long, default_value_t = 576)]
    d_in: usize,
    #[arg(long, default_value_t = 16384)]
    d_sae: usize,
    #[arg(long, default_value_t = 32)]
    k: usize,
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// L1 coefficient for standard (SAELens' bench uses 5)
    #[arg(long, default_value_t = 5.0)]
    sparsity_coefficient: f32,
    /// ReLU-family: density above which the dense kernels run
    #[arg(long)]
    dense_above: Option<f32>,
    /// ReLU-family: shift the encoder bias so this many latents fire per token, as in a
    /// trained dictionary (at initialisation half of them fire)
    #[arg(long)]
    l0: Option<f32>,
}

fn sae(a: SaeArgs) -> Result<()> {
    use glassbox_sae::train::{Normalize, TrainArch, TrainConfig, Trainer};
    let arch = TrainArch::parse(&a.arch).ok_or_else(|| {
        anyhow::anyhow!(
            "--arch `{}` is not one of: topk, batchtopk, standard, jumprelu, gated",
            a.arch
        )
    })?;
    let mut cfg = TrainConfig {
        arch,
        d_in: a.d_in,
        d_sae: a.d_sae,
        k: a.k,
        batch: a.batch,
        lr: 1e-4,
        sparsity_coefficient: a.sparsity_coefficient,
        normalize: Normalize::None,
        ..TrainConfig::default()
    };
    if let Some(d) = a.dense_above {
        cfg.dense_above = d;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x: Vec<f32> = (0..a.batch * a.d_in)
        .map(|_| {
            // Box–Muller, like torch.randn
            let (u, v): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen_range(0.0..1.0));
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
        })
        .collect();
    let mut t = Trainer::new(cfg, 1_000_000)?;
    if let Some(l0) = a.l0 {
        anyhow::ensure!(
            l0 > 0.0 && (l0 as usize) < a.d_sae && !arch.uses_k(),
            "--l0 is for ReLU-family architectures, between 0 and --d-sae"
        );
        // the bias that leaves `l0` of `d_sae` pre-activations positive
        let mut pre = vec![0f32; a.batch * a.d_sae];
        glassbox_sae::train::encoder_gemm(
            &mut pre,
            &x,
            &t.params.w_enc_t,
            a.batch,
            a.d_in,
            a.d_sae,
        );
        let rank = ((l0 / a.d_sae as f32) * pre.len() as f32) as usize;
        let (_, q, _) = pre.select_nth_unstable_by(rank, |u, v| v.total_cmp(u));
        let q = *q;
        t.params.b_enc.iter_mut().for_each(|b| *b = -q);
    }
    let first = t.step(&x, None)?;
    let mut times = Vec::new();
    let mut dense = false;
    for _ in 0..5 {
        let start = Instant::now();
        dense |= t.step(&x, None)?.dense_kernels;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    // the floor of any step: the encoder's dense GEMM, timed alone
    let w: Vec<f32> = (0..a.d_sae * a.d_in)
        .map(|i| (i % 7) as f32 * 0.01)
        .collect();
    let mut out = vec![0f32; a.batch * a.d_sae];
    let mut gemm_times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        glassbox_sae::train::encoder_gemm(&mut out, &x, &w, a.batch, a.d_in, a.d_sae);
        gemm_times.push(start.elapsed().as_secs_f64());
    }
    gemm_times.sort_by(f64::total_cmp);
    let g = gemm_times[1];
    let gflops = 2.0 * (a.batch * a.d_in * a.d_sae) as f64 / g / 1e9;
    println!(
        "glassbox {} d_in={} d_sae={} k={} batch={}{}: {:.0} tokens/s",
        a.arch,
        a.d_in,
        a.d_sae,
        a.k,
        a.batch,
        a.l0.map(|_| format!(" L0={:.0}", first.losses.l0))
            .unwrap_or_default(),
        a.batch as f64 / times[2]
    );
    println!(
        "  step {:.3} s{}; one encoder GEMM {:.3} s ({gflops:.0} GFLOP/s) = {:.0} % of the step",
        times[2],
        if dense { " (dense ReLU kernels)" } else { "" },
        g,
        100.0 * g / times[2]
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct ForwardArgs {
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Stop after this many blocks (no unembedding), as an activation harvest would
    #[arg(long)]
    stop_at_layer: Option<usize>,
    /// Also cache these hooks (comma-separated globs), as `run_with_cache` does: the Rust
    /// side of the Python package's benchmark
    #[arg(long)]
    cache: Option<String>,
}

pub fn run(what: What) -> Result<()> {
    match what {
        What::Forward(a) => forward(a),
        What::Sae(a) => sae(a),
        What::Decode(a) => decode(a),
    }
}

fn forward(a: ForwardArgs) -> Result<()> {
    anyhow::ensure!(
        a.runs > 0 && a.batch > 0 && a.seq > 0,
        "--runs, --batch and --seq must be positive"
    );
    let model = open_model(&a.model)?;
    let vocab = model.config().d_vocab as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let tokens: Vec<Vec<u32>> = (0..a.batch)
        .map(|_| (0..a.seq).map(|_| rng.gen_range(0..vocab)).collect())
        .collect();
    let batch = Batch::new(tokens);
    let cache = a
        .cache
        .as_deref()
        .map(|spec| glassbox_model::HookFilter::parse(spec, model.config()))
        .transpose()?;
    let make_run = || {
        let run = match a.stop_at_layer {
            Some(l) => Run::new().stop_at_layer(l),
            None => Run::new(),
        };
        match &cache {
            Some(f) => run.cache(f.clone()),
            None => run,
        }
    };
    model.transformer.run(
        &Batch::single(&batch.tokens[0][..8.min(a.seq)]),
        &mut make_run(),
    )?;
    model.transformer.run(&batch, &mut make_run())?;
    let mut times = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        let t = Instant::now();
        model.transformer.run(&batch, &mut make_run())?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let tps = (a.batch * a.seq) as f64 / median;
    let threads = std::env::var("RAYON_NUM_THREADS")
        .unwrap_or_else(|_| rayon::current_num_threads().to_string());
    println!(
        "glassbox forward batch={} seq={} threads={}{}: {:.0} tokens/s (median of {}: {:.3} s; peak RSS {} MiB)",
        a.batch,
        a.seq,
        threads,
        a.stop_at_layer.map(|l| format!(" stop_at_layer={l}")).unwrap_or_default()
            + &a.cache.as_deref().map(|c| format!(" cache={c}")).unwrap_or_default(),
        tps,
        a.runs,
        median,
        peak_rss_mib().map_or("?".into(), |m| m.to_string())
    );
    Ok(())
}

/// VmHWM from /proc (Linux).
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}
