use crate::open::open_model;
use anyhow::Result;
use glassbox_model::{Batch, Run};
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum What {
    /// Forward-pass throughput on random tokens (median of timed runs after a warm-up)
    Forward(ForwardArgs),
    /// TopK SAE training-step throughput on random Gaussian inputs (forward, backward,
    /// Adam; median of 5 steps after a warm-up), as ../shared/bench/saelens_train_step.py
    SaeStep(SaeStepArgs),
}

#[derive(clap::Args)]
pub struct SaeStepArgs {
    #[arg(long, default_value_t = 576)]
    d_in: usize,
    #[arg(long, default_value_t = 16384)]
    d_sae: usize,
    #[arg(long, default_value_t = 32)]
    k: usize,
    #[arg(long, default_value_t = 4096)]
    batch: usize,
}

fn sae_step(a: SaeStepArgs) -> Result<()> {
    use glassbox_sae::topk_train::{step, Adam, TopKSae, Workspace};
    anyhow::ensure!(
        a.k > 0 && a.k <= a.d_sae,
        "--k must be between 1 and --d-sae"
    );
    anyhow::ensure!(
        a.batch > 0 && a.d_in > 0,
        "--batch and --d-in must be positive"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x: Vec<f32> = (0..a.batch * a.d_in)
        .map(|_| {
            // Box–Muller, like torch.randn
            let (u, v): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen_range(0.0..1.0));
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
        })
        .collect();
    let mut sae = TopKSae::init(a.d_in, a.d_sae, a.k, 0);
    let mut ws = Workspace::new(&sae, a.batch);
    let mut opt = Adam::new(&sae, 1e-4);
    step(&mut sae, &x, &mut ws, &mut opt);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        step(&mut sae, &x, &mut ws, &mut opt);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "glassbox topk d_in={} d_sae={} k={} batch={}: {:.0} tokens/s",
        a.d_in,
        a.d_sae,
        a.k,
        a.batch,
        a.batch as f64 / times[2]
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
}

pub fn run(what: What) -> Result<()> {
    match what {
        What::Forward(a) => forward(a),
        What::SaeStep(a) => sae_step(a),
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
    let make_run = || match a.stop_at_layer {
        Some(l) => Run::new().stop_at_layer(l),
        None => Run::new(),
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
        a.stop_at_layer.map(|l| format!(" stop_at_layer={l}")).unwrap_or_default(),
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
