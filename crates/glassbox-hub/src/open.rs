//! The one way to open a model, for the CLI, the dashboard server and the Python
//! package: find it (a path, a packaged model such as `default`, a HF repo id), load it,
//! and process its weights as asked.

use glassbox_model::{apply_tl_processing, load_model, Model, ModelError, TlProcessing};

/// How [`open_model`] opens a model.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// TransformerLens' weight processing (`TlProcessing::none()`: as stored).
    pub processing: TlProcessing,
    /// Never download: only paths, fetched packaged models and the HF cache. For specs
    /// read from files (a run's config, a graph's metadata), which must not make a
    /// server fetch gigabytes.
    pub offline: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            processing: TlProcessing::none(),
            offline: false,
        }
    }
}

/// Why a model could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// the spec names no local path, fetched packaged model or reachable HF repo
    /// ([`crate::resolve_model`], or [`crate::resolve_model_offline`] when offline)
    #[error("cannot find the model `{spec}`: {source}")]
    NotFound {
        /// the spec as given
        spec: String,
        /// why it could not be resolved (not fetched, not cached, offline, ...)
        #[source]
        source: Box<crate::HubError>,
    },
    /// the path was found but is not a model glassbox loads
    /// ([`glassbox_model::load_model`])
    #[error("cannot open the model `{spec}`: {source}")]
    Load {
        /// the spec as given
        spec: String,
        /// the loader's error (a missing or corrupt file, an unsupported architecture)
        #[source]
        source: Box<ModelError>,
    },
    /// the model loaded but [`OpenOptions::processing`] could not be applied to it
    /// ([`glassbox_model::apply_tl_processing`])
    #[error("cannot process the model `{spec}`: {source}")]
    Process {
        /// the spec as given
        spec: String,
        /// why the weight processing failed
        #[source]
        source: Box<ModelError>,
    },
}

/// Opens the model `spec` names: a HF directory, a `.gguf` file, a HF repo id
/// (downloaded unless `opts.offline`, which only reads the HF cache), or a packaged
/// model's name (`default`, `gemma3-270m`), which must already be fetched: otherwise
/// [`OpenError::NotFound`] names the `glassbox fetch` command. Then applies
/// `opts.processing`.
///
/// ```no_run
/// let model = glassbox_hub::open_model("default", &Default::default())?;
/// assert_eq!(model.config().n_layers, 30);
/// # Ok::<(), glassbox_hub::OpenError>(())
/// ```
pub fn open_model(spec: &str, opts: &OpenOptions) -> Result<Model, OpenError> {
    let found = if opts.offline {
        crate::resolve_model_offline(spec)
    } else {
        crate::resolve_model(spec)
    };
    let path = found.map_err(|source| OpenError::NotFound {
        spec: spec.to_string(),
        source: Box::new(source),
    })?;
    let mut model = load_model(&path).map_err(|source| OpenError::Load {
        spec: spec.to_string(),
        source: Box::new(source),
    })?;
    if opts.processing != TlProcessing::none() {
        apply_tl_processing(&mut model.transformer, &opts.processing).map_err(|source| {
            OpenError::Process {
                spec: spec.to_string(),
                source: Box::new(source),
            }
        })?;
    }
    Ok(model)
}
