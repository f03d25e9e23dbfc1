//! Activation folders: a harvest done once, by one process or by the ranks of an MPI
//! job, that many training runs read (`train-sae --acts DIR`).
//!
//! A folder holds the activation store's own shards (`KEY/chunk-NNNNNN.safetensors`,
//! [`glassbox_data::store`]), so training from it serves exactly the rows a run that
//! harvested for itself would, in the same order. Rank `r` of `R` harvests the chunks
//! `c ≡ r (mod R)`; chunks are a deterministic cut of the shuffled windows, so the shards
//! are the same bytes whatever `R` is. Rank 0 writes `manifest.json` last, after every
//! rank's shards are on disk: a folder without one is an unfinished harvest, and running
//! the same harvest again keeps the shards already written. The manifest records each
//! shard's rows, size and xxHash64, checked before training reads a row.

use super::{invalid, prepare_store, Prepared, Progress, SaeRunOptions, Stage};
use anyhow::{bail, Context, Result};
use glassbox_data::store::ActivationStore;
use glassbox_model::Model;
use glassbox_sae::train::Collective;
use serde::{Deserialize, Serialize};
use std::hash::Hasher;
use std::path::Path;

/// The manifest's file name in an activation folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest's format; bumped when its meaning changes.
pub const ACTS_FORMAT: &str = "glassbox-activations-1";

/// One shard of an activation folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// the store's chunk index
    pub chunk: usize,
    /// the file, relative to the folder
    pub file: String,
    /// rows it holds (positions the token rule keeps)
    pub rows: u64,
    /// its size in bytes
    pub bytes: u64,
    /// xxHash64 (seed 0) of the file, hex
    pub xxh64: String,
    /// the rank that harvested it
    pub rank: usize,
}

/// What `manifest.json` says: how the activations were harvested, and every shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActsManifest {
    /// [`ACTS_FORMAT`]
    pub format: String,
    /// the store's cache key: the subfolder holding the shards
    pub key: String,
    /// the hooks harvested (an SAE's one, or a transcoder's input then output)
    pub hooks: Vec<String>,
    /// each hook's width
    pub widths: Vec<usize>,
    /// the model as given to the harvest
    pub model: String,
    /// the corpus file or folder
    pub corpus: String,
    /// JSONL field or Parquet column holding the text
    pub text_field: String,
    /// the training-token budget the windows were cut for
    pub tokens: usize,
    /// tokens per window
    pub context_size: usize,
    /// the store's chunk size in tokens
    pub buffer_tokens: usize,
    /// the packing and shuffling seed
    pub seed: u64,
    /// rows in all the shards
    pub total_rows: u64,
    /// ranks of the harvest job
    pub ranks: usize,
    /// every shard, in chunk order
    pub shards: Vec<ShardEntry>,
}

fn file_hash(path: &Path) -> Result<(u64, u64)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read the shard {}", path.display()))?;
    let mut h = twox_hash::XxHash64::with_seed(0);
    h.write(&bytes);
    Ok((bytes.len() as u64, h.finish()))
}

impl ActsManifest {
    /// Reads `dir/manifest.json` and checks that every shard it lists is there with its
    /// size and hash; each problem named with what to do.
    pub fn read_verified(dir: &Path) -> Result<ActsManifest> {
        let m = ActsManifest::read(dir)?;
        m.verify(dir)?;
        Ok(m)
    }

    /// Reads `dir/manifest.json` without looking at the shards.
    pub fn read(dir: &Path) -> Result<ActsManifest> {
        let path = dir.join(MANIFEST_FILE);
        if !dir.is_dir() {
            return Err(invalid(format!(
                "the activation folder {} does not exist: harvest it first (glassbox harvest … --out {})",
                dir.display(),
                dir.display()
            )));
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid(format!(
                    "{} has no {MANIFEST_FILE}: the harvest did not finish (rank 0 writes it last); run the same harvest again, it keeps the shards already written",
                    dir.display()
                )))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let m: ActsManifest = serde_json::from_str(&text).map_err(|e| {
            invalid(format!(
                "{} is not an activation manifest: {e}",
                path.display()
            ))
        })?;
        if m.format != ACTS_FORMAT {
            return Err(invalid(format!(
                "{} is in format `{}`, this glassbox reads `{ACTS_FORMAT}`: harvest the folder again",
                path.display(),
                m.format
            )));
        }
        Ok(m)
    }

    /// Checks that every shard is in `dir` with the size and hash the manifest says.
    pub fn verify(&self, dir: &Path) -> Result<()> {
        for s in &self.shards {
            let file = dir.join(&s.file);
            if !file.is_file() {
                return Err(invalid(format!(
                    "shard {} (chunk {}, harvested by rank {}) is missing from {}: copy it back or harvest the folder again",
                    s.file,
                    s.chunk,
                    s.rank,
                    dir.display()
                )));
            }
            let (bytes, hash) = file_hash(&file)?;
            if bytes != s.bytes || format!("{hash:016x}") != s.xxh64 {
                return Err(invalid(format!(
                    "shard {} does not match the manifest ({bytes} bytes, xxh64 {hash:016x}; the manifest says {} bytes, {}): the file was changed or copied from another harvest; harvest the folder again",
                    file.display(),
                    s.bytes,
                    s.xxh64
                )));
            }
        }
        Ok(())
    }

    /// Refuses a store that is not the one the harvest made (other options, model or
    /// corpus), naming what the manifest recorded.
    pub(crate) fn check_matches(&self, dir: &Path, store: &ActivationStore) -> Result<()> {
        if store.cache_key() != self.key || store.hooks() != self.hooks {
            return Err(invalid(format!(
                "{} was harvested from another model, corpus, hook or options (its manifest: model {}, hooks {}, corpus {}, {} tokens, context {}, buffer {}, seed {}): train with those, or harvest again",
                dir.display(),
                self.model,
                self.hooks.join(" → "),
                self.corpus,
                self.tokens,
                self.context_size,
                self.buffer_tokens,
                self.seed
            )));
        }
        if store.n_chunks() != self.shards.len() {
            return Err(invalid(format!(
                "{}'s manifest lists {} shards, the windows make {}: harvest the folder again",
                dir.display(),
                self.shards.len(),
                store.n_chunks()
            )));
        }
        Ok(())
    }
}

/// What a harvest wrote.
pub struct Harvested {
    /// the manifest (rank 0 wrote it; every rank gets it)
    pub manifest: ActsManifest,
    /// shards this rank harvested (ran the model for)
    pub harvested_here: usize,
    /// shards this rank found already written by an earlier, unfinished run
    pub kept: usize,
}

/// Harvests `opts.hook` (and `opts.hook_out`) over the windows `opts.tokens` training
/// tokens need into the activation folder `out`, as rank `comm.rank()` of
/// `comm.size()`: this rank writes chunks `c ≡ rank (mod size)`, then the ranks sum
/// their shard tables and rank 0 writes the manifest. The training options in
/// `opts.train` matter only through their seed.
pub fn harvest_acts(
    model: &Model,
    model_spec: &str,
    opts: &SaeRunOptions,
    out: &Path,
    progress: &dyn Progress,
    comm: &dyn Collective,
) -> Result<Harvested> {
    if opts.acts.is_some() {
        bail!(invalid(
            "a harvest writes an activation folder; it does not read one"
        ));
    }
    let (rank, ranks) = (comm.rank(), comm.size());
    let mut o = opts.clone();
    o.cache_dir = Some(out.to_path_buf());
    let Prepared {
        mut store,
        corpus,
        hooks,
        ..
    } = prepare_store(model, &o, progress)?;
    let key = store.cache_key().to_string();
    let manifest_path = out.join(MANIFEST_FILE);
    if let Ok(text) = std::fs::read_to_string(&manifest_path) {
        match serde_json::from_str::<ActsManifest>(&text) {
            Ok(m) if m.key == key => {}
            _ => {
                return Err(invalid(format!(
                    "{} already holds a finished harvest of other activations: choose another --out folder",
                    out.display()
                )))
            }
        }
    }
    let n = store.n_chunks();
    let mine: Vec<usize> = (rank..n).step_by(ranks).collect();
    // [rows, bytes, hash, rank + 1] per chunk, each filled by the rank that owns it
    let mut table = vec![0u64; n * 4];
    let (mut harvested, mut kept) = (0, 0);
    // the store advances the bar by windows; this rank harvests only its chunks' windows
    progress.begin(
        Stage::Harvest,
        &format!("harvesting {} (windows)", hooks.join(" → ")),
        mine.iter().map(|&c| store.windows_in_chunk(c) as u64).sum(),
        0,
    );
    for &c in &mine {
        let before = store.chunk_counts();
        let (path, rows) = store.cache_chunk(c)?;
        if store.chunk_counts().0 > before.0 {
            harvested += 1;
        } else {
            kept += 1;
        }
        let (bytes, hash) = file_hash(&path).with_context(|| {
            format!(
                "chunk {c}'s shard was not written ({}): is the disk full or the folder read-only?",
                path.display()
            )
        })?;
        table[c * 4..c * 4 + 4].copy_from_slice(&[rows as u64, bytes, hash, rank as u64 + 1]);
    }
    progress.end(Stage::Harvest);
    // every rank's table, summed: also waits until every rank's shards are on disk
    comm.sum_u64(&mut table);
    let shards = (0..n)
        .map(|c| {
            let t = &table[c * 4..c * 4 + 4];
            ShardEntry {
                chunk: c,
                file: format!("{key}/chunk-{c:06}.safetensors"),
                rows: t[0],
                bytes: t[1],
                xxh64: format!("{:016x}", t[2]),
                rank: t[3].saturating_sub(1) as usize,
            }
        })
        .collect();
    let manifest = ActsManifest {
        format: ACTS_FORMAT.into(),
        key,
        hooks,
        widths: store.widths().to_vec(),
        model: model_spec.to_string(),
        corpus: corpus.display().to_string(),
        text_field: opts.text_field.clone(),
        tokens: opts.tokens,
        context_size: opts.context_size,
        buffer_tokens: opts.buffer_tokens.min(opts.tokens.max(1)),
        seed: opts.train.seed,
        total_rows: store.total_rows(),
        ranks,
        shards,
    };
    if rank == 0 {
        let json = serde_json::to_string_pretty(&manifest)?;
        glassbox_atomic::write(&manifest_path, json.as_bytes())
            .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    }
    Ok(Harvested {
        manifest,
        harvested_here: harvested,
        kept,
    })
}
