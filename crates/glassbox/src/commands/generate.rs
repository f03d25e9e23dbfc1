use crate::open::{encode, open_model};
use anyhow::Result;
use glassbox_model::chat::render_user_prompt;
use glassbox_model::{Run, SamplingOptions};
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template
    #[arg(long)]
    chat: bool,
}

pub fn run(args: Args) -> Result<()> {
    let model = open_model(&args.model)?;
    let tok = model.tokenizer()?;
    let text = if args.chat {
        render_user_prompt(tok, &args.prompt)?
    } else {
        args.prompt.clone()
    };
    let ids = encode(&model, &text)?;
    let stop_tokens = tok.stop_tokens();
    let opts = SamplingOptions {
        max_new_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop_tokens: stop_tokens.clone(),
    };
    if !args.chat {
        print!("{}", args.prompt);
    }
    let mut generated = Vec::new();
    let mut shown = 0;
    let mut stdout = std::io::stdout();
    model
        .transformer
        .generate(&ids, &opts, &mut Run::new(), |t| {
            if stop_tokens.contains(&t) {
                return;
            }
            // Decode the whole continuation so multi-byte characters print whole.
            generated.push(t);
            if let Ok(s) = tok.decode(&generated) {
                if s.len() > shown && s.is_char_boundary(shown) {
                    let _ = write!(stdout, "{}", &s[shown..]);
                    let _ = stdout.flush();
                    shown = s.len();
                }
            }
        })?;
    println!();
    Ok(())
}
