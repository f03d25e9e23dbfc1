use crate::open::{atomic_write, encode, open_dictionary, open_model};
use anyhow::{Context, Result};
use glassbox_analysis::metric::single_token;
use glassbox_analysis::steering::{
    contrastive_direction, effect, load_pairs, load_vector, Steering,
};
use glassbox_model::{Run, SamplingOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("direction").required(true).args(["vector", "pairs", "sae"])))]
pub struct Args {
    #[arg(long)]
    model: String,
    /// safetensors file with the steering vector (one vector of d_model values)
    #[arg(long)]
    vector: Option<PathBuf>,
    /// contrastive pairs: `positive<TAB>negative` per line, or JSONL {positive, negative}
    #[arg(long)]
    pairs: Option<PathBuf>,
    /// A dictionary (SAELens or sparsify directory, or hf:ORG/REPO[/SUB/FOLDER]): steer
    /// along a feature's decoder row
    #[arg(long, requires = "feature")]
    sae: Option<PathBuf>,
    /// The dictionary feature to steer with (with --sae): `26` or `#26`
    #[arg(long, value_parser = crate::names::unit_id)]
    feature: Option<usize>,
    /// With --sae: clamp the feature's activation to this value (reconstruction error
    /// kept) instead of adding strength × its decoder row
    #[arg(long, requires = "sae", allow_hyphen_values = true)]
    clamp: Option<f64>,
    /// Hook to steer, e.g. blocks.12.hook_resid_pre (default with --sae: the dictionary's hook)
    #[arg(long)]
    hook: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    strength: f64,
    #[arg(long)]
    prompt: String,
    /// Target tokens whose log-probability change is reported (repeatable)
    #[arg(long)]
    target: Vec<String>,
    /// Steer only these prompt positions (default: every position, generated ones too)
    #[arg(long, value_delimiter = ',')]
    positions: Option<Vec<usize>>,
    #[arg(long, default_value_t = 30)]
    max_tokens: usize,
    /// Print the effect for each of these strengths instead of one continuation
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    sweep: Option<Vec<f64>>,
    /// Save the direction used (e.g. the contrastive mean difference) as safetensors
    #[arg(long)]
    save_vector: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    // the dictionary first: a bad path or a failed fetch should not wait for the model
    let mut dict_dir = None;
    let dictionary = match &a.sae {
        Some(spec) => {
            let (d, dir) = open_dictionary(spec)?;
            dict_dir = Some(dir);
            Some(std::sync::Arc::new(d))
        }
        None => None,
    };
    let model = open_model(&a.model)?;
    if let Some(dir) = &dict_dir {
        crate::open::warn_on_processing_mismatch(dir, &model);
    }
    let tok = model.tokenizer()?;
    let m = &model.transformer;
    let hook = match (&a.hook, &dictionary) {
        (Some(h), Some(d)) if d.hook_name.as_deref().is_some_and(|dh| dh != h) => anyhow::bail!(
            "--hook {h} differs from the dictionary's hook {}; a feature only means something where it was trained",
            d.hook_name.as_deref().unwrap_or("")
        ),
        (Some(h), _) => h.clone(),
        (None, Some(d)) => d.hook_name.clone().context("the dictionary names no hook; give --hook")?,
        (None, None) => anyhow::bail!("--hook is required with --vector or --pairs"),
    };
    let direction = match (&a.vector, &a.pairs, &dictionary) {
        (Some(v), _, _) => load_vector(v)?,
        (None, Some(p), _) => contrastive_direction(m, tok, &load_pairs(p)?, &hook)?,
        (None, None, Some(d)) => d.decoder_row(a.feature.context("--sae needs --feature")?)?,
        _ => anyhow::bail!("give --vector, --pairs or --sae with --feature"),
    };
    if let (Some(value), Some(d)) = (a.clamp, &dictionary) {
        return clamp(&a, &model, &hook, d.clone(), value);
    }
    if let Some(path) = &a.save_vector {
        let t = std::collections::HashMap::from([("vector".to_string(), direction.clone())]);
        atomic_write(path, |tmp| {
            candle_core::safetensors::save(&t, tmp).context("cannot write the vector")
        })?;
    }
    let prompt = encode(&model, &a.prompt)?;
    let targets: Vec<u32> = a
        .target
        .iter()
        .map(|t| single_token(tok, t))
        .collect::<Result<_, _>>()?;
    let mut steering = Steering::new(&hook, direction, a.strength)?;
    steering.positions = a.positions.clone();
    let norm = steering
        .direction
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f32>()?;
    println!("steering {hook} with a direction of norm {norm:.2}");

    if let Some(strengths) = &a.sweep {
        println!(
            "{:>10} {:>12} {}",
            "strength",
            "KL(neutral)",
            a.target
                .iter()
                .map(|t| format!("Δlogp{t:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut rows = Vec::new();
        for &s in strengths {
            let mut st = steering.clone();
            st = Steering {
                strength: s,
                ..Steering::new(&st.hook, st.direction, s)?
            };
            st.positions = a.positions.clone();
            let e = effect(m, tok, &prompt, &targets, &st)?;
            println!(
                "{:>10.3} {:>12.5} {}",
                s,
                e.kl_neutral,
                e.target_logprob_delta
                    .iter()
                    .map(|d| format!("{d:>+10.4}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            rows.push(e);
        }
        if let Some(p) = &a.json {
            atomic_write(p, |tmp| {
                Ok(std::fs::write(tmp, serde_json::to_string_pretty(&rows)?)?)
            })?;
        }
        return Ok(());
    }

    let opts = SamplingOptions {
        max_new_tokens: a.max_tokens,
        stop_tokens: tok.eos_token_id.into_iter().collect(),
        ..Default::default()
    };
    let plain = m.generate(&prompt, &opts, &mut Run::new(), |_| {})?;
    let steered = m.generate(&prompt, &opts, &mut steering.run(m)?, |_| {})?;
    let (plain, steered) = (tok.decode(&plain)?, tok.decode(&steered)?);
    println!(
        "\n--- unsteered ---\n{}{}\n--- steered (strength {}) ---\n{}{}\n",
        a.prompt, plain, a.strength, a.prompt, steered
    );
    let e = effect(m, tok, &prompt, &targets, &steering)?;
    for (t, d) in a.target.iter().zip(&e.target_logprob_delta) {
        println!("Δ log p({t:?}) at the next token: {d:+.4}");
    }
    println!(
        "KL(unsteered ‖ steered) on {} neutral texts: {:.5} nats/token",
        glassbox_analysis::steering::NEUTRAL_TEXTS.len(),
        e.kl_neutral
    );
    if let Some(p) = &a.json {
        let v = serde_json::json!({"hook": hook, "strength": a.strength, "unsteered": plain, "steered": steered, "effect": e});
        atomic_write(p, |tmp| {
            Ok(std::fs::write(tmp, serde_json::to_string_pretty(&v)?)?)
        })?;
    }
    Ok(())
}

/// Clamp mode: generate with the feature held at `value`, side by side with the plain model.
fn clamp(
    a: &Args,
    model: &glassbox_model::Model,
    hook: &str,
    d: std::sync::Arc<glassbox_sae::Dictionary>,
    value: f64,
) -> Result<()> {
    let tok = model.tokenizer()?;
    let m = &model.transformer;
    let feature = a.feature.context("--clamp needs --feature")?;
    let c = glassbox_analysis::steering::FeatureClamp::new(hook, d, feature, value)?;
    let prompt = encode(model, &a.prompt)?;
    let opts = SamplingOptions {
        max_new_tokens: a.max_tokens,
        stop_tokens: tok.eos_token_id.into_iter().collect(),
        ..Default::default()
    };
    let plain = tok.decode(&m.generate(&prompt, &opts, &mut Run::new(), |_| {})?)?;
    let clamped = tok.decode(&m.generate(&prompt, &opts, &mut c.run(m)?, |_| {})?)?;
    println!(
        "\n--- plain ---\n{}{}\n--- feature {feature} clamped to {value} at {hook} ---\n{}{}\n",
        a.prompt, plain, a.prompt, clamped
    );
    Ok(())
}
