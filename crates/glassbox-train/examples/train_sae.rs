//! Train a small TopK SAE on a model's residual stream with the library (what
//! `glassbox train-sae` does), printing progress notes and the held-out evaluation.
//!
//!     cargo run --release -p glassbox-train --example train_sae -- \
//!         ~/.cache/glassbox/models/SmolLM2-135M-Instruct.Q4_1.gguf CORPUS.txt runs/example

use glassbox_sae::train::{TrainArch, TrainConfig};
use glassbox_train::{train_sae, Progress, SaeRunOptions, Stage};

/// Progress as plain lines: notes, and the training's numbers every 10 steps.
struct Lines;

impl Progress for Lines {
    fn begin(&self, _stage: Stage, label: &str, total: u64, _done: u64) {
        eprintln!("{label}: {total}");
    }
    fn step(&self, l: &glassbox_train::MetricsLine) {
        eprintln!(
            "step {:>4}: FVU {:.3}, L0 {:.1}, {:.0} tokens/s",
            l.step, l.fvu, l.l0, l.tokens_per_s
        );
    }
    fn note(&self, text: &str) {
        eprintln!("{text}");
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(corpus), Some(out)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: train_sae MODEL CORPUS OUT_DIR");
    };
    let model = glassbox_hub::open_model(&model, &Default::default())?;
    let tokens = 65_536;
    let mut train = TrainConfig::for_run(TrainArch::TopK, tokens, 1024);
    train.d_sae = 2048;
    train.k = 16;
    let mut opts = SaeRunOptions::new("blocks.3.hook_resid_post", tokens, train);
    opts.corpus = Some(corpus.into());
    opts.context_size = 64;
    opts.eval_tokens = 2048;
    let run = train_sae(&model, &opts, out.as_ref(), &Lines)?;
    let e = &run.metrics.eval;
    println!(
        "{} latents on {}: held-out FVU {:.3}, L0 {:.1}, dead {:.1} %, CE loss recovered {:.1} % (run directory {})",
        run.dictionary.d_sae,
        opts.hook,
        e.fvu,
        e.l0,
        e.dead_fraction * 100.0,
        e.ce_recovered * 100.0,
        run.out.display()
    );
    Ok(())
}
