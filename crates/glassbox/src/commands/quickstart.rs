use crate::open::open_model;
use anyhow::Result;
use glassbox_model::logits::top_k;
use glassbox_model::{Batch, HookFilter, Run};

#[derive(clap::Args)]
pub struct Args {
    /// Prompt to show the model working on
    #[arg(
        long,
        default_value = "When Mary and John went to the store, John gave a drink to"
    )]
    prompt: String,
}

pub fn run(args: Args) -> Result<()> {
    eprintln!("[1/3] fetching the default model and corpus (cached after the first run)");
    let model_path = glassbox_hub::fetch_default_model()?;
    let corpus = glassbox_hub::fetch_default_corpus()?;
    println!(
        "model  {}\ncorpus {}",
        model_path.display(),
        corpus.join("data").display()
    );

    eprintln!("[2/3] loading {}", model_path.display());
    let model = open_model(&model_path.to_string_lossy())?;
    let c = model.config();
    println!(
        "{}: {} layers, d_model {}, {} heads ({} KV), d_mlp {}, vocab {}",
        c.architecture.name(),
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.d_mlp,
        c.d_vocab
    );

    eprintln!("[3/3] running the prompt with a cache of the residual stream");
    let tok = model.tokenizer()?;
    let ids = tok.encode(&args.prompt)?;
    let filter = HookFilter::parse("blocks.*.hook_resid_post", c)?;
    let out = model
        .transformer
        .run(&Batch::single(&ids), &mut Run::new().cache(filter))?;
    let logits = out.logits()?.squeeze(0)?;
    let last: Vec<f32> = logits.get(ids.len() - 1)?.to_vec1()?;
    println!("\nprompt: {:?}\nnext-token predictions:", args.prompt);
    for t in top_k(&last, 5) {
        println!(
            "  {:<14} logit {:>7.3}  p {:>5.1}%",
            format!("{:?}", tok.token_text(t.id)),
            t.logit,
            t.prob * 100.0
        );
    }
    println!("\nresidual-stream norm at the last token, by layer (blocks.L.hook_resid_post):");
    let mut norms = Vec::new();
    for l in 0..c.n_layers {
        let r = &out.cache[&format!("blocks.{l}.hook_resid_post")];
        let v = r
            .squeeze(0)?
            .get(ids.len() - 1)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()?;
        norms.push(v);
    }
    let max = norms.iter().copied().fold(0f32, f32::max).max(1e-6);
    for (l, n) in norms.iter().enumerate() {
        let bar = "█".repeat(((n / max) * 40.0).round() as usize);
        println!("  {l:>2} {n:>9.1} {bar}");
    }
    println!("\nnext: glassbox inspect --model default   (every hook point)");
    println!("      glassbox cache --model default --prompt \"…\" --hooks 'blocks.*.hook_resid_post' --out acts.safetensors");
    Ok(())
}
