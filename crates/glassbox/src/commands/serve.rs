use anyhow::Result;
use std::path::PathBuf;

/// `glassbox serve DIR`: the feature dashboards of a run directory, or the attribution
/// graphs of a transcoder set, in the browser.
#[derive(clap::Args)]
pub struct Args {
    /// Run directory: features.sqlite (from `glassbox features build --run DIR`), the
    /// dictionary (cfg.json + sae_weights.safetensors) and config.toml (names the model
    /// the live prompt and steering views load on first use). Or a transcoder set
    /// (index.json, from `glassbox train-transcoders`): its graphs/*.json (from
    /// `glassbox trace`) and the feature pages of layers with a layer_XX/features.sqlite
    dir: PathBuf,
    /// Port to listen on (0: any free port)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to bind; the default keeps the server on this machine
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Instead of serving, write the list, every unit page and the comparison as static
    /// HTML into this directory (opens from disk, no server) and exit
    #[arg(long, value_name = "OUT")]
    export: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    if let Some(out) = &a.export {
        return super::features::export(&a.dir, out);
    }
    glassbox_server::serve(&a.dir, &a.host, a.port)
}
