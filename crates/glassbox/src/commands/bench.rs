use crate::open::open_model;
use anyhow::Result;
use glassbox_model::{Batch, Run};
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum What {
    /// Forward-pass throughput on random tokens (median of timed runs after a warm-up)
    Forward(ForwardArgs),
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
