//! Cache a prompt's residual stream and read it with the logit lens: what the model
//! would predict if it stopped after each block (the final norm and the unembedding
//! applied to that block's output).
//!
//!     cargo run --release -p glassbox-model --example logit_lens -- \
//!         ~/.cache/glassbox/models/SmolLM2-135M-Instruct.Q4_1.gguf "The capital of France is"

use glassbox_model::{load_model, Batch, HookFilter, Run};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(prompt)) = (args.next(), args.next()) else {
        return Err("usage: logit_lens MODEL PROMPT".into());
    };
    let model = load_model(path.as_ref())?;
    let cfg = model.config();
    let tok = model.tokenizer()?;
    let ids = tok.encode_prompt(&prompt)?;
    println!("prompt {prompt:?}: {}", tok.prompt_summary(&ids));
    let batch = Batch::single(&ids);
    let out = model.transformer.run(
        &batch,
        &mut Run::new().cache(HookFilter::parse("blocks.*.hook_resid_post", cfg)?),
    )?;
    let last = ids.len() - 1;
    for l in 0..cfg.n_layers {
        let resid = &out.cache[&format!("blocks.{l}.hook_resid_post")];
        // start after the last block: only the final norm and the unembedding run
        let lens = model.transformer.run(
            &batch,
            &mut Run::new().start_at_layer(cfg.n_layers, resid.clone()),
        )?;
        let row: Vec<f32> = lens.logits()?.get(0)?.get(last)?.to_vec1()?;
        let (best, logit) = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .ok_or("empty logits")?;
        println!(
            "after block {l:>2}: {:<14} (logit {logit:.2})",
            format!("{:?}", tok.token_text(best as u32))
        );
    }
    Ok(())
}
