use crate::open::{atomic_write, open_dictionary};
use anyhow::{Context, Result};
use glassbox_analysis::sae_eval::apply_dictionary;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum What {
    /// Encode and decode vectors: reads `x` [n, d_in], writes `feature_acts` [n, d_sae] and `sae_out` [n, d_out]
    Apply(ApplyArgs),
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// The dictionary: a SAELens or sparsify directory, or hf:ORG/REPO[/SUB/FOLDER]
    #[arg(long)]
    sae: PathBuf,
    /// safetensors file holding `x` [n, d_in]
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors file
    #[arg(long)]
    out: PathBuf,
}

pub fn run(what: What) -> Result<()> {
    match what {
        What::Apply(a) => apply(a),
    }
}

fn apply(a: ApplyArgs) -> Result<()> {
    let (dict, _) = open_dictionary(&a.sae)?;
    let tensors = candle_core::safetensors::load(&a.input, &candle_core::Device::Cpu)
        .with_context(|| format!("cannot read {} as safetensors", a.input.display()))?;
    let x = match tensors.get("x") {
        Some(x) => x,
        None => {
            let mut names: Vec<&str> = tensors.keys().map(String::as_str).collect();
            names.sort_unstable();
            anyhow::bail!(
                "{} has no tensor `x`; it holds: {}",
                a.input.display(),
                if names.is_empty() {
                    "nothing".to_string()
                } else {
                    names.join(", ")
                }
            );
        }
    };
    let (f, out) = apply_dictionary(&dict, x)
        .with_context(|| format!("tensor `x` of {}", a.input.display()))?;
    let l0 = f
        .gt(0.0)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?
        / (f.elem_count() / dict.d_sae).max(1) as f32;
    let (f_dims, out_dims) = (f.dims().to_vec(), out.dims().to_vec());
    let t = std::collections::HashMap::from([
        ("feature_acts".to_string(), f),
        ("sae_out".to_string(), out),
    ]);
    atomic_write(&a.out, |tmp| {
        candle_core::safetensors::save(&t, tmp).context("cannot write the outputs")
    })?;
    println!(
        "wrote feature_acts {f_dims:?} and sae_out {out_dims:?} ({} dictionary, mean L0 {l0:.2}) to {}",
        dict.architecture.name(),
        a.out.display()
    );
    Ok(())
}
