//! `glassbox quickstart`: the whole job on the embedded default, in one command —
//! fetch the model and corpus, harvest activations, train a dictionary, build its
//! feature store, say where to look, and serve the dashboards.

use crate::commands::{features, serve, train_sae};
use anyhow::{Context, Result};
use clap::{Args as ClapArgs, FromArgMatches};
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

/// Parses a subcommand's arguments as its own command line would.
fn parse<T: ClapArgs + FromArgMatches>(name: &'static str, args: &[String]) -> Result<T> {
    let cmd = T::augment_args(clap::Command::new(name));
    let m = cmd
        .try_get_matches_from(std::iter::once(name.to_string()).chain(args.iter().cloned()))
        .with_context(|| format!("internal: bad {name} arguments"))?;
    Ok(T::from_arg_matches(&m)?)
}

pub fn run(a: Args) -> Result<()> {
    eprintln!("[1/4] fetching the default model and corpus (cached after the first run)");
    let model = glassbox_hub::fetch_default_model()?;
    let corpus = glassbox_hub::fetch_default_corpus()?.join("data");
    println!("model  {}\ncorpus {}", model.display(), corpus.display());
    let dir = a.out.display().to_string();
    if a.out.join("metrics.json").is_file() {
        eprintln!("[2/4] {dir} already holds a trained dictionary: reusing it (delete the folder to retrain)");
    } else {
        eprintln!(
            "[2/4] harvesting {} and training a {}-latent TopK SAE on {} tokens",
            a.hook, a.d_sae, a.tokens
        );
        let resume = a.out.join("checkpoint/checkpoint.json").is_file();
        let mut args: Vec<String> = [
            "--model",
            &model.display().to_string(),
            "--hook",
            &a.hook,
            "--arch",
            "topk",
            "--d-sae",
            &a.d_sae.to_string(),
            "--k",
            "32",
            "--tokens",
            &a.tokens.to_string(),
            "--batch",
            "2048",
            "--eval-tokens",
            "8192",
            "--out",
            &dir,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if resume {
            args.push("--resume".into());
        }
        train_sae::run(parse("train-sae", &args)?)?;
    }
    if a.out.join(glassbox_features::STORE_FILE).is_file() {
        eprintln!("[3/4] reusing {dir}/{}", glassbox_features::STORE_FILE);
    } else {
        eprintln!(
            "[3/4] feature statistics over {} held-out tokens, and the MLP-neuron baseline",
            a.feature_tokens
        );
        let args: Vec<String> = [
            "build",
            "--run",
            &dir,
            "--tokens",
            &a.feature_tokens.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        features::run(parse_features(&args)?)?;
    }
    println!("\nwhere to look:");
    println!("  {dir}/metrics.json       held-out FVU, L0, dead latents, CE loss recovered");
    println!("  {dir}/features.sqlite    every feature's statistics and contexts");
    println!("  glassbox features show {dir} --feature 0");
    println!("  glassbox features export --run {dir} --html {dir}/html   (static pages)");
    if a.no_serve {
        println!("  glassbox serve {dir}   (the dashboards in a browser)");
        return Ok(());
    }
    eprintln!("[4/4] serving the dashboards (Ctrl-C to stop)");
    serve::run(parse("serve", &[dir, "--port".into(), a.port.to_string()])?)
}

fn parse_features(args: &[String]) -> Result<features::What> {
    use clap::Subcommand;
    let cmd = features::What::augment_subcommands(clap::Command::new("features"));
    let m = cmd
        .try_get_matches_from(std::iter::once("features".to_string()).chain(args.iter().cloned()))
        .context("internal: bad features arguments")?;
    Ok(features::What::from_arg_matches(&m)?)
}
