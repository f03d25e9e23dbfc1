use crate::open::{encode_quiet, open_dictionary, open_model};
use anyhow::{Context, Result};
use glassbox_analysis::ablation::{ablate, Unit};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("units").required(true).args(["heads", "neurons", "features"])))]
#[command(group(clap::ArgGroup::new("text").required(true).args(["prompt", "prompts"])))]
pub struct Args {
    #[arg(long)]
    model: String,
    /// A prompt (repeatable)
    #[arg(long)]
    prompt: Vec<String>,
    /// A text file with one prompt per line
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Attention heads as LAYER.HEAD, comma-separated (e.g. 9.6,10.0)
    #[arg(long)]
    heads: Option<String>,
    /// MLP neurons (mlp.hook_post) as LAYER.INDEX, comma-separated
    #[arg(long)]
    neurons: Option<String>,
    /// Dictionary features, comma-separated (with --sae)
    #[arg(long, value_delimiter = ',', requires = "sae", value_parser = crate::names::unit_id)]
    features: Option<Vec<usize>>,
    /// The dictionary the features belong to (ablated at its hook, reconstruction error
    /// kept): a SAELens or sparsify directory, or hf:ORG/REPO[/SUB/FOLDER]
    #[arg(long)]
    sae: Option<PathBuf>,
    /// Mean ablation over the prompt set instead of zero ablation
    #[arg(long)]
    mean: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    // the dictionary first: a bad path or a failed fetch should not wait for the model
    let mut dict_dir = None;
    let dictionary = match (&a.features, &a.sae) {
        (Some(_), Some(spec)) => {
            let (d, dir) = open_dictionary(spec)?;
            dict_dir = Some(dir);
            Some(std::sync::Arc::new(d))
        }
        _ => None,
    };
    let model = open_model(&a.model)?;
    if let Some(dir) = &dict_dir {
        crate::open::warn_on_processing_mismatch(dir, &model);
    }
    let mut texts = a.prompt.clone();
    if let Some(p) = &a.prompts {
        let t =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        texts.extend(t.lines().filter(|l| !l.trim().is_empty()).map(String::from));
    }
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| encode_quiet(&model, t))
        .collect::<Result<_>>()?;
    if let (Some(features), Some(d)) = (&a.features, dictionary) {
        let hook = d
            .hook_name
            .clone()
            .context("the dictionary names no hook")?;
        let r = glassbox_analysis::ablation::ablate_features(
            &model.transformer,
            &prompts,
            d,
            &hook,
            features,
            a.mean,
        )?;
        return report(&r, a.json);
    }
    let units = match (&a.heads, &a.neurons) {
        (Some(h), _) => Unit::parse_list(h, true, &model.transformer)?,
        (None, Some(n)) => Unit::parse_list(n, false, &model.transformer)?,
        _ => anyhow::bail!("give --heads or --neurons"),
    };
    let r = ablate(&model.transformer, &prompts, &units, a.mean)?;
    report(&r, a.json)
}

fn report(r: &glassbox_analysis::ablation::AblationReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "{} ablation of {} unit(s) over {} prompt(s)",
        r.mode,
        r.units.len(),
        r.prompts
    );
    println!(
        "next-token loss: {:.4} → {:.4} ({:+.4})",
        r.loss_clean,
        r.loss_ablated,
        r.loss_ablated - r.loss_clean
    );
    println!(
        "KL(clean ‖ ablated): {:.5} nats/token; largest logit change {:.3}",
        r.kl, r.max_abs_logit_change
    );
    Ok(())
}
