//! `glassbox quickstart`: the whole job on the embedded default, in one command —
//! fetch the model and corpus, harvest activations, train a dictionary, build its
//! feature store, say where to look, and serve the dashboards. Composes library calls:
//! [`glassbox_train::train_sae`], [`glassbox_features::build_for_run`],
//! [`glassbox_server::serve`].

use crate::open::{open_model, Bars, LateBar};
use anyhow::Result;
use glassbox_sae::train::{TrainArch, TrainConfig};
use glassbox_train::SaeRunOptions;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run directory (reused when it already holds a finished run)
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Stop after building the feature store instead of serving it
    #[arg(long)]
    no_serve: bool,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Training tokens (with the default, the whole quickstart took 6 minutes on 2 cores
    /// with the model and corpus already fetched, BENCHMARKS.md; an empty cache adds the
    /// downloads)
    #[arg(long, default_value_t = 300_000)]
    tokens: usize,
    #[arg(long, default_value_t = 4096)]
    d_sae: usize,
    #[arg(long, default_value = "blocks.15.hook_resid_pre")]
    hook: String,
    /// Held-out tokens for the feature statistics
    #[arg(long, default_value_t = 40_000)]
    feature_tokens: usize,
}

pub fn run(a: Args) -> Result<()> {
    eprintln!("[1/4] fetching the default model and corpus (cached after the first run)");
    let model_path = glassbox_hub::fetch_default_model()?;
    let corpus = glassbox_hub::fetch_default_corpus()?.join("data");
    println!(
        "model  {}\ncorpus {}",
        model_path.display(),
        corpus.display()
    );
    let dir = a.out.display().to_string();
    let model = open_model(&model_path.display().to_string())?;
    if a.out.join(glassbox_train::run_dir::METRICS_FILE).is_file() {
        eprintln!("[2/4] {dir} already holds a trained dictionary: reusing it (delete the folder to retrain)");
    } else {
        eprintln!(
            "[2/4] harvesting {} and training a {}-latent TopK SAE on {} tokens",
            a.hook, a.d_sae, a.tokens
        );
        let mut train = TrainConfig::for_run(TrainArch::TopK, a.tokens, 2048);
        train.d_sae = a.d_sae;
        train.k = 32;
        let mut opts = SaeRunOptions::new(&a.hook, a.tokens, train);
        opts.corpus = Some(corpus.clone());
        opts.eval_tokens = 8192;
        // an interrupted quickstart picks up where it stopped
        opts.resume = glassbox_sae::train::checkpoint::exists(
            &a.out.join(glassbox_train::run_dir::CHECKPOINT_DIR),
        );
        let meter = glassbox_audit::ledger::Meter::start("train");
        let run = glassbox_train::train_sae(&model, &opts, &a.out, &Bars::new("topk"))?;
        let m = &run.metrics;
        let per_token =
            crate::commands::audit::forward_flops_to(&model, &a.hook, opts.context_size)
                + glassbox_audit::cost::dictionary_train_flops(m.d_in, m.d_sae, m.d_out);
        crate::commands::audit::record_stage(
            &a.out,
            meter,
            m.train_tokens as u64,
            per_token * m.train_tokens as f64,
        );
        let e = &run.metrics.eval;
        println!(
            "held-out ({} tokens): FVU {:.4}, L0 {:.1}, dead {:.1} %, CE loss recovered {:.1} %",
            e.tokens,
            e.fvu,
            e.l0,
            e.dead_fraction * 100.0,
            e.ce_recovered * 100.0
        );
    }
    if a.out.join(glassbox_features::STORE_FILE).is_file() {
        eprintln!("[3/4] reusing {dir}/{}", glassbox_features::STORE_FILE);
    } else {
        eprintln!(
            "[3/4] feature statistics over {} held-out tokens, and the MLP-neuron baseline",
            a.feature_tokens
        );
        let bar = LateBar::new("features (windows)");
        let meter = glassbox_audit::ledger::Meter::start("features");
        let report = glassbox_features::build_for_run(
            &model,
            "default",
            &a.out,
            || Some(corpus.clone()),
            Some(a.feature_tokens),
            &glassbox_features::BuildOptions::default(),
            &mut |line| eprintln!("{line}"),
            |n, total| bar.advance(n, total),
        )?;
        bar.finish();
        let a_dict = &report.analysis.hooks;
        let per_token = crate::commands::audit::forward_flops_to(&model, &a_dict.hook, 128)
            + glassbox_audit::cost::dictionary_forward_flops(a_dict.d_in, a.d_sae, a_dict.d_in);
        crate::commands::audit::record_stage(
            &a.out,
            meter,
            report.tokens,
            per_token * report.tokens as f64,
        );
        println!(
            "wrote {}: {} tokens in {} windows, {:.1} s",
            report.path.display(),
            report.tokens,
            report.windows,
            report.seconds
        );
    }
    let audit = crate::commands::audit::Args::for_run(&a.out);
    crate::commands::audit::write_report(&audit)?;
    println!("\nwhere to look:");
    println!("  {dir}/metrics.json       held-out FVU, L0, dead latents, CE loss recovered");
    println!("  {dir}/features.sqlite    every feature's statistics and contexts");
    println!(
        "  {dir}/audit.html         the audit report: coverage, cost, provenance (glassbox audit)"
    );
    println!("  glassbox features show {dir} --feature 0");
    println!("  glassbox features export --run {dir} --html {dir}/html   (static pages)");
    if a.no_serve {
        println!("  glassbox serve {dir}   (the dashboards in a browser)");
        return Ok(());
    }
    eprintln!("[4/4] serving the dashboards (Ctrl-C to stop)");
    glassbox_server::serve(
        &a.out,
        "127.0.0.1",
        a.port,
        glassbox_server::limits::Limits::default(),
    )
}
