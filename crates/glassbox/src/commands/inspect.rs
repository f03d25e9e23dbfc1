use crate::open::open_model;
use anyhow::Result;
use glassbox_model::hook_points;

#[derive(clap::Args)]
pub struct Args {
    /// HF directory, .gguf file, HF repo id, or `default`
    #[arg(long)]
    model: String,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = open_model(&args.model)?;
    let c = model.config();
    let hooks = hook_points(c);
    if args.json {
        let v = serde_json::json!({ "source": model.source, "config": c, "hook_points": hooks });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model         {}", model.source.display());
    println!("architecture  {}", c.architecture.name());
    println!("layers        {}", c.n_layers);
    println!("d_model       {}", c.d_model);
    println!(
        "heads         {} query / {} key-value, d_head {}",
        c.n_heads, c.n_kv_heads, c.d_head
    );
    println!(
        "d_mlp         {} ({}, {:?})",
        c.d_mlp,
        if c.gated_mlp { "gated" } else { "plain" },
        c.activation
    );
    println!("vocab         {}", c.d_vocab);
    println!("context       {}", c.n_ctx);
    println!("norm          {:?} (eps {:e})", c.norm, c.norm_eps);
    match c.rotary_dim {
        Some(r) => println!(
            "positions     rotary on {r} of {} dims, theta {}",
            c.d_head, c.rope_theta
        ),
        None => println!("positions     learned"),
    }
    if c.parallel_residual {
        println!("residual      parallel attention + MLP");
    }
    if let Some(w) = c.sliding_window {
        let n = c.sliding_layers.iter().filter(|&&s| s).count();
        println!("sliding       window {w} on {n} of {} layers", c.n_layers);
    }
    if let Some(s) = c.attn_softcap {
        println!("softcap       attention {s}, final {:?}", c.final_softcap);
    }
    println!("tied embed    {}", c.tied_embeddings);
    println!(
        "tokenizer     {}",
        if model.tokenizer.is_some() {
            "yes"
        } else {
            "none (token ids only)"
        }
    );
    println!("\n{} hook points:", hooks.len());
    let width = hooks.iter().map(|h| h.name.len()).max().unwrap_or(0);
    for h in &hooks {
        println!("  {:width$}  [{}]", h.name, h.shape_strings().join(", "));
    }
    Ok(())
}
