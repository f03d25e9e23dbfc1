use crate::open::{atomic_write, encode, open_model};
use anyhow::{bail, Context, Result};
use glassbox_model::{Batch, HookFilter, Run};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "tokens_file"])))]
pub struct Args {
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: Option<String>,
    /// safetensors file with an int64 `input_ids` [batch, seq]
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// Comma-separated hook names; `*` matches anything (e.g. `blocks.*.hook_resid_post`)
    #[arg(long)]
    hooks: String,
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let model = open_model(&args.model)?;
    let batch = match (&args.prompt, &args.tokens_file) {
        (Some(p), _) => Batch::single(&encode(&model, p)?),
        (None, Some(f)) => Batch::from_tokens_file(f)
            .with_context(|| format!("cannot read {} as a tokens file", f.display()))?,
        (None, None) => bail!("give --prompt or --tokens-file"),
    };
    let filter = HookFilter::parse(&args.hooks, model.config())?;
    let out = model
        .transformer
        .run(&batch, &mut Run::new().cache(filter))?;
    let mut tensors: HashMap<String, candle_core::Tensor> = out.cache.into_iter().collect();
    tensors.insert("logits".into(), out.logits.context("no logits")?);
    let ids: Vec<i64> = batch.tokens.iter().flatten().map(|&t| t as i64).collect();
    tensors.insert(
        "input_ids".into(),
        candle_core::Tensor::from_vec(
            ids,
            (batch.batch_size(), batch.seq_len()),
            &candle_core::Device::Cpu,
        )?,
    );
    let n = tensors.len();
    atomic_write(&args.out, |tmp| {
        candle_core::safetensors::save(&tensors, tmp).context("cannot write safetensors")
    })?;
    println!(
        "wrote {} tensors ({} activations + logits + input_ids) to {}",
        n,
        n - 2,
        args.out.display()
    );
    Ok(())
}
