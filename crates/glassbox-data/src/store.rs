//! The activation store: shuffled activation rows for dictionary training, generated
//! on the fly through the runtime, with an optional disk cache.
//!
//! Design, and why:
//! - The window list (already shuffled across the corpus by [`crate::pack`]) is cut
//!   into consecutive *chunks* of `ceil(buffer_tokens / (context_size − 1))` windows.
//!   A chunk is harvested whole (all hooks from one forward pass per batch, so a
//!   transcoder's input and output rows are the same tokens), its rows are shuffled
//!   with a seed derived from `(seed, chunk index)`, served in that order, and only
//!   then is the next chunk harvested. Memory stays at one chunk.
//! - Which tokens become rows depends on the tokens alone (position 0 and the
//!   excluded ids are left out), so the store knows every chunk's row count before
//!   running anything. [`ActivationStore::skip_to`] therefore jumps to any row by
//!   harvesting only the chunk holding it: a killed training run resumes to exactly
//!   the batches an uninterrupted one would have seen.
//! - With a cache folder, each chunk is a safetensors shard (one f32 `[rows, width]`
//!   tensor per hook, unshuffled) under a key that hashes everything that decides its
//!   contents. Shards are written atomically (temp file, then rename) so a crash never
//!   leaves half a shard; an unreadable shard is regenerated with a warning. Shuffling
//!   happens after loading, so cached and uncached runs serve bitwise-identical rows.

use crate::harvest::HookPlan;
use crate::{bad, io_err, DataError, Result, Windows};
use glassbox_model::{Model, RowRule};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use twox_hash::XxHash64;

/// Bump when the shard layout or the meaning of a row changes: old caches are then
/// simply not found.
const CACHE_FORMAT: &str = "glassbox-activation-store-v1";

/// How the store harvests and serves rows.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// One hook for an SAE; for a transcoder its input hook(s) then its output hook.
    /// All are harvested in the same forward pass and served row-aligned.
    pub hooks: Vec<String>,
    /// Windows per forward pass.
    pub batch_windows: usize,
    /// Rows held in memory at once (the shuffle buffer); the larger, the better mixed.
    pub buffer_tokens: usize,
    /// Seeds the shuffle of every chunk.
    pub seed: u64,
    /// Folder for activation shards, shared between runs; `None` harvests every time.
    pub cache_dir: Option<PathBuf>,
    /// Which positions become rows (use [`RowRule::for_model`]).
    pub rows: RowRule,
    /// Serve only from the cache: a missing or unusable shard is an error naming it,
    /// never a harvest (training from an activation folder a harvest job wrote).
    pub require_cached: bool,
}

impl StoreOptions {
    /// 8 windows a batch, a 65,536-token buffer, seed 0, no cache, nothing excluded
    /// besides position 0 (set `rows` to [`RowRule::for_model`]).
    pub fn new(hooks: Vec<String>) -> Self {
        StoreOptions {
            hooks,
            batch_windows: 8,
            buffer_tokens: 65_536,
            seed: 0,
            cache_dir: None,
            rows: RowRule::default(),
            require_cached: false,
        }
    }
}

/// Serves shuffled activation rows; see the module documentation for the design.
pub struct ActivationStore<'m> {
    model: &'m Model,
    windows: Windows,
    plan: HookPlan,
    batch_windows: usize,
    seed: u64,
    rule: RowRule,
    context_size: usize,
    chunk_windows: usize,
    /// first row of each chunk, then the total: chunk `c` has rows
    /// `chunk_start[c]..chunk_start[c + 1]`
    chunk_start: Vec<u64>,
    key: String,
    cache: Option<PathBuf>,
    loaded: Option<usize>,
    /// the loaded chunk's rows per hook, in harvest order (the served hooks, then the
    /// massive rule's residual hook when it is not one of them)
    rows: Vec<Vec<f32>>,
    /// how many of `plan.hooks` are served
    n_served_hooks: usize,
    /// index in `plan.hooks` of the massive rule's residual hook
    norm_hook: Option<usize>,
    /// per row of the loaded chunk: massive, passed over when serving
    massive: Vec<bool>,
    /// massive rows passed over so far
    massive_passed_over: u64,
    /// serving order of the loaded chunk's rows
    order: Vec<u32>,
    served: u64,
    on_harvest: Option<Box<dyn FnMut(usize) + 'm>>,
    chunks_harvested: usize,
    chunks_from_cache: usize,
    require_cached: bool,
}

impl<'m> ActivationStore<'m> {
    /// Checks the windows and hooks (an unknown hook fails with the runtime's error,
    /// which names the nearest hook), and prepares the cache folder. Runs nothing but,
    /// with a cache, one short probe pass that fingerprints the model.
    pub fn new(model: &'m Model, windows: Windows, opts: StoreOptions) -> Result<Self> {
        let cfg = model.config();
        // the massive-activation rule's residual hook rides along when it is not one of
        // the hooks served: its rows decide which slots are passed over
        let plan = HookPlan::new(model, &opts.rows.hooks_with_norm(&opts.hooks))?;
        let n_served_hooks = opts.hooks.len();
        let norm_hook = opts
            .rows
            .massive()
            .and_then(|m| plan.hooks.iter().position(|h| *h == m.hook));
        let context_size = windows.first().map_or(0, Vec::len);
        if windows.is_empty() {
            return Err(bad(
                "the activation store got no windows: the corpus is too small",
            ));
        }
        if context_size < 2 || context_size > cfg.n_ctx {
            return Err(bad(format!(
                "windows of {context_size} tokens: the context size must be between 2 and the \
                 model's context {}",
                cfg.n_ctx
            )));
        }
        for (i, w) in windows.iter().enumerate() {
            if w.len() != context_size {
                return Err(bad(format!(
                    "window {i} has {} tokens, window 0 has {context_size}: pack the corpus \
                     into windows of one size",
                    w.len()
                )));
            }
            if let Some(t) = w.iter().find(|&&t| t as usize >= cfg.d_vocab) {
                return Err(bad(format!(
                    "window {i} holds token {t}, past the model's vocabulary ({}): were the \
                     windows made with this model's tokenizer?",
                    cfg.d_vocab
                )));
            }
        }
        if opts.buffer_tokens == 0 {
            return Err(bad("buffer_tokens must be at least 1"));
        }
        let chunk_windows = opts.buffer_tokens.div_ceil(context_size - 1).max(1);
        let mut chunk_start = vec![0u64];
        for chunk in windows.chunks(chunk_windows) {
            let last = chunk_start[chunk_start.len() - 1];
            chunk_start.push(last + opts.rows.count(chunk) as u64);
        }
        let mut store = ActivationStore {
            model,
            windows,
            rows: vec![Vec::new(); plan.hooks.len()],
            plan,
            n_served_hooks,
            norm_hook,
            massive: Vec::new(),
            massive_passed_over: 0,
            batch_windows: opts.batch_windows.max(1),
            seed: opts.seed,
            rule: opts.rows.clone(),
            context_size,
            chunk_windows,
            chunk_start,
            key: String::new(),
            cache: None,
            loaded: None,
            order: Vec::new(),
            served: 0,
            on_harvest: None,
            chunks_harvested: 0,
            chunks_from_cache: 0,
            require_cached: opts.require_cached,
        };
        if let Some(dir) = &opts.cache_dir {
            store.key = store.compute_key()?;
            let folder = dir.join(&store.key);
            std::fs::create_dir_all(&folder).map_err(|e| DataError::Cache {
                path: folder.clone(),
                message: format!(
                    "cannot create the folder ({e}); pass another cache folder or none"
                ),
            })?;
            glassbox_atomic::remove_orphans(&folder);
            store.write_description(&folder);
            store.cache = Some(folder);
        }
        Ok(store)
    }

    /// Called with a number of windows each time rows become available (a forward
    /// batch harvested, or a whole chunk read from the cache): drive a progress bar.
    pub fn set_on_harvest(&mut self, f: Box<dyn FnMut(usize) + 'm>) {
        self.on_harvest = Some(f);
    }

    /// Fills `out[h]` (one buffer per hook, resized to `rows × widths[h]`) with the next
    /// rows and returns how many: `n`, fewer only when the windows run out, 0 at the end.
    pub fn next_batch(&mut self, n: usize, out: &mut [Vec<f32>]) -> Result<usize> {
        if out.len() != self.n_served_hooks {
            return Err(bad(format!(
                "next_batch got {} output buffers for {} hooks",
                out.len(),
                self.n_served_hooks
            )));
        }
        for (o, w) in out.iter_mut().zip(&self.plan.widths) {
            o.clear();
            o.reserve(n.min(self.remaining() as usize) * w);
        }
        // `served` counts slots (rows the token rule keeps, known from the tokens), so
        // that resuming stays exact; massive rows are passed over, not served
        let mut filled = 0;
        while filled < n && self.served < self.total_rows() {
            let c = self.chunk_of(self.served);
            self.load(c)?;
            let mut local = (self.served - self.chunk_start[c]) as usize;
            while filled < n && local < self.order.len() {
                let r = self.order[local] as usize;
                local += 1;
                if self.massive.get(r).copied().unwrap_or(false) {
                    self.massive_passed_over += 1;
                    continue;
                }
                for (h, o) in out.iter_mut().enumerate() {
                    let w = self.plan.widths[h];
                    o.extend_from_slice(&self.rows[h][r * w..][..w]);
                }
                filled += 1;
            }
            self.served = self.chunk_start[c] + local as u64;
        }
        Ok(filled)
    }

    /// Positions the store so that the following batches are exactly what an
    /// uninterrupted store would serve after `rows` rows; harvests (or reads) only the
    /// chunk holding that row.
    pub fn skip_to(&mut self, rows: u64) -> Result<()> {
        let total = self.total_rows();
        if rows > total {
            return Err(bad(format!(
                "cannot skip to row {rows}: the windows give {total} rows"
            )));
        }
        self.served = rows;
        if rows < total {
            self.load(self.chunk_of(rows))?;
        }
        Ok(())
    }

    /// Row width of each hook, in the order of `StoreOptions::hooks`.
    pub fn widths(&self) -> &[usize] {
        &self.plan.widths[..self.n_served_hooks]
    }
    /// The hooks served, as in `StoreOptions::hooks` (without the massive rule's
    /// residual hook when it only rides along).
    pub fn hooks(&self) -> &[String] {
        &self.plan.hooks[..self.n_served_hooks]
    }
    /// Massive rows (`StoreOptions::rows`' massive-activation rule) passed over so far.
    pub fn massive_passed_over(&self) -> u64 {
        self.massive_passed_over
    }
    /// Rows served so far (or skipped to): the number to save for resuming.
    pub fn rows_served(&self) -> u64 {
        self.served
    }
    /// Rows in one pass over the windows (known from the tokens, before any harvest).
    pub fn total_rows(&self) -> u64 {
        self.chunk_start[self.chunk_start.len() - 1]
    }
    /// Rows left in this pass: [`total_rows`](Self::total_rows) minus
    /// [`rows_served`](Self::rows_served) (massive rows passed over included).
    pub fn remaining(&self) -> u64 {
        self.total_rows() - self.served
    }
    /// Chunks the windows are cut into (each harvested whole, one in memory at a time).
    pub fn n_chunks(&self) -> usize {
        self.chunk_start.len() - 1
    }
    /// Tokens per window (every window has the same length).
    pub fn context_size(&self) -> usize {
        self.context_size
    }
    /// The cache key (a 16-hex-digit hash; empty without a cache).
    pub fn cache_key(&self) -> &str {
        &self.key
    }
    /// The folder holding this store's shards, when caching.
    pub fn cache_folder(&self) -> Option<&Path> {
        self.cache.as_deref()
    }
    /// Chunks that ran the model, and chunks read from the cache, so far.
    pub fn chunk_counts(&self) -> (usize, usize) {
        (self.chunks_harvested, self.chunks_from_cache)
    }

    /// Upper bound on the memory the store holds, in bytes: the shuffle buffer (one
    /// chunk: `chunk_windows × (context_size − 1)` rows — `buffer_tokens` rounded up to
    /// whole windows — times Σ widths × 4 bytes, plus its 4-byte order), the token
    /// windows, and an estimate of one forward batch (activations of the widest
    /// layers and the attention scores, up to the deepest hook).
    pub fn memory_bytes(&self) -> usize {
        let c = self.model.config();
        let sum_w: usize = self.plan.widths.iter().sum();
        let chunk_rows = self.chunk_windows * (self.context_size - 1);
        let buffer = chunk_rows * (sum_w * 4 + 4);
        let tokens = self.windows.len() * self.context_size * 4;
        let positions = self.batch_windows * self.context_size;
        let forward = positions * 4 * (sum_w + 8 * c.d_model + 3 * c.d_mlp)
            + self.batch_windows * 2 * c.n_heads * self.context_size * self.context_size * 4;
        buffer + tokens + forward
    }

    /// Makes sure chunk `c`'s shard is in the cache folder (harvesting it when it is
    /// not there or unusable) and gives its path and row count: one rank's share of a
    /// sharded harvest. Needs a cache folder.
    pub fn cache_chunk(&mut self, c: usize) -> Result<(PathBuf, usize)> {
        let path = self
            .shard_path(c)
            .ok_or_else(|| bad("cache_chunk needs a store with a cache folder"))?;
        if c >= self.n_chunks() {
            return Err(bad(format!(
                "chunk {c} does not exist: the windows make {} chunks",
                self.n_chunks()
            )));
        }
        self.load(c)?;
        Ok((path, self.chunk_rows(c)))
    }

    /// Windows chunk `c` covers (the last chunk may have fewer).
    pub fn windows_in_chunk(&self, c: usize) -> usize {
        self.chunk_windows_range(c).len()
    }

    fn chunk_of(&self, row: u64) -> usize {
        let n = self.n_chunks();
        // The last chunk starting at or before `row` (empty chunks share their
        // successor's start and are passed over).
        self.chunk_start[..n].partition_point(|&s| s <= row) - 1
    }

    fn chunk_rows(&self, c: usize) -> usize {
        (self.chunk_start[c + 1] - self.chunk_start[c]) as usize
    }

    fn chunk_windows_range(&self, c: usize) -> std::ops::Range<usize> {
        let start = c * self.chunk_windows;
        start..(start + self.chunk_windows).min(self.windows.len())
    }

    fn shard_path(&self, c: usize) -> Option<PathBuf> {
        self.cache
            .as_ref()
            .map(|d| d.join(format!("chunk-{c:06}.safetensors")))
    }

    /// Makes chunk `c` the loaded one: from the cache when it has a good shard,
    /// otherwise by running the model (and then writing the shard).
    fn load(&mut self, c: usize) -> Result<()> {
        if self.loaded == Some(c) {
            return Ok(());
        }
        self.loaded = None;
        let expected = self.chunk_rows(c);
        let range = self.chunk_windows_range(c);
        let mut from_cache = None;
        if let Some(path) = self.shard_path(c).filter(|p| p.exists()) {
            match read_shard(
                &path,
                &self.plan.hooks,
                &self.plan.widths,
                expected,
                &self.key,
                c,
            ) {
                Ok(rows) => from_cache = Some(rows),
                Err(e) if self.require_cached => {
                    return Err(DataError::Cache {
                        path,
                        message: format!(
                            "the shard is unusable ({e}); harvest the activation folder again"
                        ),
                    })
                }
                Err(e) => eprintln!(
                    "warning: activation shard {} is unusable ({e}); regenerating it",
                    path.display()
                ),
            }
        }
        if from_cache.is_none() && self.require_cached {
            return Err(DataError::Cache {
                path: self.shard_path(c).unwrap_or_default(),
                message: format!(
                    "chunk {c}'s shard is missing from the activation folder; harvest it again (or resume the harvest)"
                ),
            });
        }
        match from_cache {
            Some(rows) => {
                self.rows = rows;
                self.chunks_from_cache += 1;
                if let Some(f) = self.on_harvest.as_mut() {
                    f(range.len());
                }
            }
            None => {
                self.harvest_chunk(c, range)?;
                self.chunks_harvested += 1;
                if let Some(path) = self.shard_path(c) {
                    if let Err(e) = write_shard(
                        &path,
                        &self.plan.hooks,
                        &self.plan.widths,
                        &self.rows,
                        expected,
                        &self.key,
                        c,
                    ) {
                        eprintln!(
                            "warning: cannot write activation shard {} ({e}); going on without \
                             caching it",
                            path.display()
                        );
                    }
                }
            }
        }
        self.massive = match (self.norm_hook, self.rule.massive()) {
            (Some(h), Some(m)) => {
                let w = self.plan.widths[h];
                self.rows[h]
                    .chunks_exact(w)
                    .map(|r| m.is_massive(r))
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut order: Vec<u32> = (0..expected as u32).collect();
        order.shuffle(&mut StdRng::seed_from_u64(chunk_seed(self.seed, c)));
        self.order = order;
        self.loaded = Some(c);
        Ok(())
    }

    fn harvest_chunk(&mut self, c: usize, range: std::ops::Range<usize>) -> Result<()> {
        for r in &mut self.rows {
            r.clear();
        }
        let mut n = 0;
        let first = range.start;
        let mut flags = Vec::new();
        for (b, batch) in self.windows[range].chunks(self.batch_windows).enumerate() {
            let lo = first + b * self.batch_windows;
            // every row the token rule keeps: `load` flags the massive ones
            n += self
                .plan
                .forward_rows(
                    self.model,
                    batch,
                    &self.rule,
                    &mut self.rows,
                    Some(&mut flags),
                    || format!("chunk {c}, windows {lo}..{}", lo + batch.len()),
                )?
                .0;
            if let Some(f) = self.on_harvest.as_mut() {
                f(batch.len());
            }
        }
        if n != self.chunk_rows(c) {
            return Err(bad(format!(
                "chunk {c} gave {n} rows, {} expected from its tokens (a bug: please report it)",
                self.chunk_rows(c)
            )));
        }
        Ok(())
    }

    /// A hash of everything that decides the shards' contents: the model (its config,
    /// and its activations at the requested hooks on a fixed probe sequence — this
    /// crate sees the model only through hooks), the hooks, the windows' tokens, the
    /// exclusions and the chunking. The seed is left out: shuffling follows loading.
    fn compute_key(&self) -> Result<String> {
        let cfg = self.model.config();
        let mut h = XxHash64::with_seed(0);
        let mut put = |bytes: &[u8]| {
            h.write_u64(bytes.len() as u64);
            h.write(bytes);
        };
        put(CACHE_FORMAT.as_bytes());
        put(serde_json::to_string(cfg)
            .map_err(|e| bad(format!("cannot describe the model config: {e}")))?
            .as_bytes());
        for hook in &self.plan.hooks {
            put(hook.as_bytes());
        }
        let probe: Vec<u32> = (0..cfg.n_ctx.min(16) as u64)
            .map(|i| ((i * 7919 + 1) % cfg.d_vocab as u64) as u32)
            .collect();
        let mut acts = vec![Vec::new(); self.plan.hooks.len()];
        self.plan.forward_rows(
            self.model,
            &[probe],
            &RowRule::default(),
            &mut acts,
            None,
            || "the cache probe".into(),
        )?;
        for a in &acts {
            put(&f32_bytes(a));
        }
        let sizes = [
            self.context_size,
            self.chunk_windows,
            self.batch_windows,
            self.windows.len(),
        ];
        for s in sizes {
            put(&(s as u64).to_le_bytes());
        }
        put(&u32_bytes(self.rule.excluded_tokens()));
        for w in &self.windows {
            put(&u32_bytes(w));
        }
        Ok(format!("{:016x}", h.finish()))
    }

    /// A human-readable note of what the cache folder holds (best effort).
    fn write_description(&self, folder: &Path) {
        let path = folder.join("store.json");
        if path.exists() {
            return;
        }
        let desc = serde_json::json!({
            "format": CACHE_FORMAT,
            "model": self.model.source.display().to_string(),
            "hooks": self.plan.hooks,
            "widths": self.plan.widths,
            "context_size": self.context_size,
            "windows": self.windows.len(),
            "chunk_windows": self.chunk_windows,
            "chunks": self.n_chunks(),
            "rows": self.total_rows(),
            "exclude_tokens": self.rule.excluded_tokens(),
        });
        let text = serde_json::to_string_pretty(&desc).unwrap_or_default();
        let _ = glassbox_atomic::write_with(&path, |tmp| {
            std::fs::write(tmp, text.as_bytes()).map_err(io_err(tmp))
        });
    }
}

/// The shuffle seed of chunk `c`: splitmix64 of the pair, so neighbouring chunks and
/// seeds give unrelated permutations.
fn chunk_seed(seed: u64, c: usize) -> u64 {
    let mut z = seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u32_bytes(x: &[u32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One hook's rows as a safetensors view; bytes are made one tensor at a time while
/// writing, so the extra memory is one hook's rows, not the whole chunk.
struct Rows<'a> {
    data: &'a [f32],
    shape: [usize; 2],
}

impl View for &Rows<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(f32_bytes(self.data))
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

fn shard_metadata(key: &str, chunk: usize) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), CACHE_FORMAT.to_string()),
        ("key".to_string(), key.to_string()),
        ("chunk".to_string(), chunk.to_string()),
    ])
}

fn write_shard(
    path: &Path,
    hooks: &[String],
    widths: &[usize],
    rows: &[Vec<f32>],
    n_rows: usize,
    key: &str,
    chunk: usize,
) -> Result<()> {
    let views: Vec<Rows> = rows
        .iter()
        .zip(widths)
        .map(|(r, &w)| Rows {
            data: r,
            shape: [n_rows, w],
        })
        .collect();
    glassbox_atomic::write_with(path, |tmp| {
        safetensors::serialize_to_file(
            hooks.iter().zip(&views),
            Some(shard_metadata(key, chunk)),
            tmp,
        )
        .map_err(|e| e.to_string())
        .and_then(|()| sort_metadata_keys(tmp))
        .map_err(|e| DataError::Cache {
            path: tmp.to_path_buf(),
            message: e,
        })
    })
}

/// Rewrites a safetensors file's header with its metadata keys sorted. The safetensors
/// crate writes them in `HashMap` order, which differs from process to process; sorted,
/// equal rows give equal files, so the shards of two harvests (one rank or many)
/// compare byte for byte. Same keys, same length: the header is replaced in place.
fn sort_metadata_keys(path: &Path) -> std::result::Result<(), String> {
    use std::collections::BTreeMap;
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(len) as usize;
    let mut header = vec![0u8; n];
    f.read_exact(&mut header).map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&header).map_err(|e| e.to_string())?;
    let mut fields: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(text.trim_end()).map_err(|e| e.to_string())?;
    if let Some(meta) = fields.remove("__metadata__") {
        let sorted: BTreeMap<String, String> =
            serde_json::from_value(meta).map_err(|e| e.to_string())?;
        let sorted = serde_json::to_value(sorted).map_err(|e| e.to_string())?;
        fields.insert("__metadata__".into(), sorted);
    }
    let mut sorted = serde_json::to_string(&fields).map_err(|e| e.to_string())?;
    if sorted.len() > n {
        return Err("the sorted header is longer than the written one".into());
    }
    // the same padding the writer used (spaces up to the 8-byte boundary)
    sorted.extend(std::iter::repeat_n(' ', n - sorted.len()));
    f.seek(SeekFrom::Start(8)).map_err(|e| e.to_string())?;
    f.write_all(sorted.as_bytes()).map_err(|e| e.to_string())
}

fn read_shard(
    path: &Path,
    hooks: &[String],
    widths: &[usize],
    n_rows: usize,
    key: &str,
    chunk: usize,
) -> std::result::Result<Vec<Vec<f32>>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
    if meta.metadata().as_ref() != Some(&shard_metadata(key, chunk)) {
        return Err("its metadata names another store or chunk".into());
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(hooks.len());
    for (hook, &w) in hooks.iter().zip(widths) {
        let t = st.tensor(hook).map_err(|e| format!("`{hook}`: {e}"))?;
        if t.dtype() != Dtype::F32 || t.shape() != [n_rows, w] {
            return Err(format!(
                "`{hook}` is {:?} {:?}, expected F32 [{n_rows}, {w}]",
                t.dtype(),
                t.shape()
            ));
        }
        let rows: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if rows.iter().any(|x| !x.is_finite()) {
            return Err(format!("`{hook}` holds NaN or Inf"));
        }
        out.push(rows);
    }
    Ok(out)
}
