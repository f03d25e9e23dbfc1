use crate::open::{encode_quiet, open_model};
use anyhow::Result;
use glassbox_model::logits::top_k;
use glassbox_model::{Batch, LogitsMode, Run};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    /// How many candidates to show
    #[arg(long, default_value_t = 10)]
    top: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = open_model(&args.model)?;
    let ids = encode_quiet(&model, &args.prompt)?;
    let out = model.transformer.run(
        &Batch::single(&ids),
        &mut Run::new().logits(LogitsMode::Last),
    )?;
    let row: Vec<f32> = out.logits()?.flatten_all()?.to_vec1()?;
    let tok = model.tokenizer()?;
    let top = top_k(&row, args.top);
    if args.json {
        let v = serde_json::json!({
            "prompt": args.prompt,
            "input_ids": ids,
            "bos": tok.bos_status(&ids),
            "top": top.iter().map(|t| serde_json::json!({
                "token": tok.token_text(t.id), "id": t.id, "logit": t.logit, "prob": t.prob
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("prompt: {:?} ({})", args.prompt, tok.prompt_summary(&ids));
    println!(
        "{:>4}  {:<20} {:>7} {:>9} {:>8}",
        "rank", "token", "id", "logit", "prob"
    );
    for (i, t) in top.iter().enumerate() {
        println!(
            "{:>4}  {} {:>7} {:>9.4} {:>7.2}%",
            i + 1,
            crate::display::token_cell(&tok.token_text(t.id), 20),
            t.id,
            t.logit,
            t.prob * 100.0
        );
    }
    Ok(())
}
