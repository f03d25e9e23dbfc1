//! Dictionaries from the HF hub. Wherever a command takes a dictionary folder it also
//! takes `hf:ORG/REPO` or `hf:ORG/REPO/SUB/FOLDER`: the folder's files are fetched with
//! `hf-hub` into the HF cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`, the layout Python's `huggingface_hub` shares) and the
//! local folder is handed to the loader. Two layouts are recognised:
//!
//! - SAELens: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors` when the
//!   repo has it);
//! - EleutherAI sparsify: `cfg.json` + `sae.safetensors` (one folder per hookpoint,
//!   e.g. `layers.6`).
//!
//! A dictionary already in the cache is used without the network. Otherwise the hub (or
//! `$HF_ENDPOINT`, or the proxy in `$HTTPS_PROXY` and friends) must answer a TCP connect
//! within a few seconds, or the fetch stops and says glassbox is offline;
//! `HF_HUB_OFFLINE=1` stops it at once.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// What marks a dictionary spec as a hub reference.
pub const HF_PREFIX: &str = "hf:";
const SPEC_FORM: &str = "hf:ORG/REPO or hf:ORG/REPO/SUB/FOLDER (e.g. hf:jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre)";
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const CONFIG: &str = "cfg.json";
/// (format, weights file) in the order the loader prefers them.
const LAYOUTS: [(&str, &str); 2] = [
    ("SAELens", "sae_weights.safetensors"),
    ("sparsify", "sae.safetensors"),
];
/// Fetched with a SAELens dictionary when the repo has it.
const OPTIONAL: &str = "sparsity.safetensors";
/// Folders named in an error before "and N more".
const LISTED: usize = 8;

/// Why a dictionary spec could not be turned into a local folder. Every message names
/// the spec and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DictionaryError {
    /// an `hf:` spec that is not `hf:ORG/REPO[/SUB/FOLDER]` ([`HubDictionary::parse`])
    #[error("`{spec}` is not a hub dictionary: {problem}. Expected {SPEC_FORM}")]
    BadSpec {
        /// the spec as given
        spec: String,
        /// what is wrong with it
        problem: String,
    },
    /// not in the cache, and the hub (or proxy) did not take a TCP connection within
    /// 6 s, or `HF_HUB_OFFLINE=1`
    #[error("cannot reach {target} ({reason}) to fetch `{spec}`; glassbox is offline. Use a local dictionary folder (cfg.json + sae_weights.safetensors or sae.safetensors), or fetch it once while online: it is then kept in {cache}")]
    Offline {
        /// the spec, `hf:ORG/REPO[/SUB]`
        spec: String,
        /// what was dialled: the endpoint, or `the proxy URL`
        target: String,
        /// why it did not answer
        reason: String,
        /// the HF cache folder, where a dictionary fetched once is kept
        cache: String,
    },
    /// the hub answered HTTP 401, 403 or 404 for the repo's file list: no such repo, or
    /// a private or gated one without a token
    #[error("`{spec}`: {endpoint} has no model repo `{repo}` (HTTP {status}); check the name, and for a private or gated repo set HF_TOKEN or run `huggingface-cli login`")]
    NoRepo {
        /// the spec, `hf:ORG/REPO[/SUB]`
        spec: String,
        /// the hub asked ([`HubSettings::endpoint`])
        endpoint: String,
        /// `ORG/REPO`
        repo: String,
        /// the HTTP status
        status: u16,
    },
    /// the repo exists but the named folder holds neither layout (`cfg.json` with
    /// `sae_weights.safetensors` or `sae.safetensors`)
    #[error("`{spec}`: no dictionary in {place}: looked for cfg.json with sae_weights.safetensors (SAELens) or sae.safetensors (sparsify){found}")]
    NoDictionary {
        /// the spec, `hf:ORG/REPO[/SUB]`
        spec: String,
        /// the folder looked in, for the message (`` `SUB/` of ORG/REPO``, or
        /// `the root of ORG/REPO`)
        place: String,
        /// the end of the message: whether `cfg.json` alone was there, and up to 8
        /// specs of the repo's folders that do hold a dictionary
        found: String,
    },
    /// a spec without `hf:` that is no existing path but reads as `ORG/REPO`: the
    /// message suggests `hf:ORG/REPO`
    #[error("no dictionary folder `{path}`; to fetch the HF repo of that name write hf:{path}")]
    LooksLikeRepo {
        /// the spec as given
        path: String,
    },
    /// any other failure of the fetch: setting up hf-hub, listing the repo, an HTTP
    /// status other than 401/403/404, a download, or a repo that changed mid-fetch
    #[error("`{spec}`: {message}")]
    Fetch {
        /// the spec, `hf:ORG/REPO[/SUB]`
        spec: String,
        /// what failed
        message: String,
    },
}

/// A result whose error is a [`DictionaryError`].
pub type Result<T> = std::result::Result<T, DictionaryError>;

/// A parsed `hf:ORG/REPO[/SUB/FOLDER]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubDictionary {
    /// `ORG/REPO`
    pub repo: String,
    /// The folder inside the repo that holds the files (`None`: the repo's root).
    pub subfolder: Option<String>,
}

impl HubDictionary {
    /// `Ok(None)` for a spec without the `hf:` prefix (a local folder); an error names
    /// what is wrong with a malformed one.
    pub fn parse(spec: &str) -> Result<Option<Self>> {
        let Some(rest) = spec.strip_prefix(HF_PREFIX) else {
            return Ok(None);
        };
        let bad = |problem: &str| DictionaryError::BadSpec {
            spec: spec.to_string(),
            problem: problem.to_string(),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return Err(bad("no repo after `hf:`"));
        }
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 2 {
            return Err(bad("a repo id has two parts, ORG/REPO"));
        }
        for (i, p) in parts.iter().enumerate() {
            if p.is_empty() {
                return Err(bad("an empty path component (`//` or a leading `/`)"));
            }
            if *p == "." || *p == ".." {
                return Err(bad("`.` and `..` are not folders in a repo"));
            }
            if p.contains('\\') {
                return Err(bad("repo paths use `/`, not `\\`"));
            }
            let name_ok = p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if i < 2 && !name_ok {
                return Err(bad(&format!(
                    "`{p}` is not a valid HF org or repo name (letters, digits, `-`, `_`, `.`)"
                )));
            }
        }
        Ok(Some(Self {
            repo: format!("{}/{}", parts[0], parts[1]),
            subfolder: (parts.len() > 2).then(|| parts[2..].join("/")),
        }))
    }

    /// The repo path of `name` in the dictionary's folder.
    fn file(&self, name: &str) -> String {
        match &self.subfolder {
            Some(s) => format!("{s}/{name}"),
            None => name.to_string(),
        }
    }

    /// The spec again (`hf:ORG/REPO[/SUB]`).
    pub fn spec(&self) -> String {
        match &self.subfolder {
            Some(s) => format!("{HF_PREFIX}{}/{s}", self.repo),
            None => format!("{HF_PREFIX}{}", self.repo),
        }
    }
}

/// Where and how dictionaries are fetched; [`HubSettings::from_env`] reads the usual
/// HF variables.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// `$HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: String,
    /// The hf-hub cache folder (the one holding `models--ORG--REPO/`).
    pub cache: PathBuf,
    /// `HF_HUB_OFFLINE=1`: only the cache is consulted.
    pub offline: bool,
    /// The proxy hf-hub's HTTP client will use (`ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY`,
    /// and their lower-case forms, first set wins): the reachability check probes it.
    pub proxy: Option<String>,
    /// `$HF_TOKEN`, else the token file next to the cache.
    pub token: Option<String>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl HubSettings {
    /// The settings the environment gives, as Python's `huggingface_hub` reads them: the
    /// cache from `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`
    /// (`$GLASSBOX_HOME/huggingface/hub` without `$HOME`); `$HF_ENDPOINT` (trailing `/`
    /// dropped); `HF_HUB_OFFLINE=1`; the first proxy variable set; `$HF_TOKEN`, else the
    /// token file next to the cache. Empty variables count as unset.
    pub fn from_env() -> Self {
        let cache = env_nonempty("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| env_nonempty("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").map(PathBuf::from);
                match home {
                    Some(h) => h.join(".cache").join("huggingface").join("hub"),
                    None => crate::glassbox_home().join("huggingface").join("hub"),
                }
            });
        let proxy = [
            "ALL_PROXY",
            "all_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
        ]
        .iter()
        .find_map(|v| env_nonempty(v));
        let token = env_nonempty("HF_TOKEN").or_else(|| hf_hub::Cache::new(cache.clone()).token());
        Self {
            endpoint: env_nonempty("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache,
            offline: std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v == "1"),
            proxy,
            token,
        }
    }
}

/// Turns a dictionary argument into a local folder: an existing path as it is, an
/// `hf:ORG/REPO[/SUB/FOLDER]` spec fetched into the HF cache. Every command that takes
/// a dictionary calls this before `glassbox_sae::format::load`.
pub fn resolve_dictionary(spec: &Path) -> Result<PathBuf> {
    resolve_dictionary_with(spec, &HubSettings::from_env())
}

/// [`resolve_dictionary`] with explicit settings (tests, callers with their own cache).
pub fn resolve_dictionary_with(spec: &Path, settings: &HubSettings) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let Some(text) = spec.to_str() else {
        return Ok(spec.to_path_buf());
    };
    match HubDictionary::parse(text)? {
        Some(d) => fetch_dictionary(&d, settings),
        None if crate::looks_like_repo_id(text) => Err(DictionaryError::LooksLikeRepo {
            path: text.to_string(),
        }),
        // the loader says what is missing
        None => Ok(spec.to_path_buf()),
    }
}

/// The dictionary's folder in the cache when its config and weights are both there.
fn cached(d: &HubDictionary, settings: &HubSettings) -> Option<PathBuf> {
    let repo = hf_hub::Cache::new(settings.cache.clone()).model(d.repo.clone());
    let config = repo.get(&d.file(CONFIG))?;
    let dir = config.parent()?.to_path_buf();
    LAYOUTS
        .iter()
        .any(|(_, w)| dir.join(w).exists())
        .then_some(dir)
}

/// `host:port` of an `http(s)://host[:port][/path]` URL.
fn socket_of(url: &str) -> std::result::Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or(("http", url.trim_start_matches('/')));
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    if has_port {
        return Ok(authority.to_string());
    }
    let port = match scheme {
        "https" => 443,
        "http" => 80,
        "socks" | "socks5" | "socks4" | "socks4a" => 1080,
        other => return Err(format!("`{url}`: unknown scheme `{other}`")),
    };
    Ok(format!("{authority}:{port}"))
}

/// Fails within a few seconds when `url`'s host does not take a TCP connection.
fn check_reachable(url: &str) -> std::result::Result<(), String> {
    let addr = socket_of(url)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = addr
            .to_socket_addrs()
            .map_err(|e| e.to_string())
            .and_then(|mut a| a.next().ok_or_else(|| "no address".to_string()))
            .and_then(|a| {
                TcpStream::connect_timeout(&a, Duration::from_secs(4))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(6)) {
        Ok(r) => r,
        Err(_) => Err("no answer within 6 s".into()),
    }
}

/// What [`locate`] found in a repo's file list.
#[derive(Debug, PartialEq, Eq)]
enum Located {
    /// The weights file of the layout found, and whether `sparsity.safetensors` is there.
    Found {
        weights: &'static str,
        sparsity: bool,
    },
    /// No dictionary at the spec's folder; the folders (repo paths, "" for the root)
    /// that hold one, those under the spec's folder first.
    Missing {
        config_only: bool,
        elsewhere: Vec<String>,
    },
}

/// Looks for a dictionary at `d`'s folder in the repo's file list.
fn locate(d: &HubDictionary, files: &[String]) -> Located {
    let has = |f: &str| files.iter().any(|s| s == f);
    let config = has(&d.file(CONFIG));
    for (_, weights) in LAYOUTS {
        if config && has(&d.file(weights)) {
            return Located::Found {
                weights,
                sparsity: weights == LAYOUTS[0].1 && has(&d.file(OPTIONAL)),
            };
        }
    }
    let folder_of = |f: &str| -> Option<String> {
        let (dir, name) = match f.rsplit_once('/') {
            Some((dir, name)) => (dir.to_string(), name),
            None => (String::new(), f),
        };
        (name == CONFIG).then_some(dir)
    };
    let mut elsewhere: Vec<String> = files
        .iter()
        .filter_map(|f| folder_of(f))
        .filter(|dir| {
            LAYOUTS.iter().any(|(_, w)| {
                has(&if dir.is_empty() {
                    w.to_string()
                } else {
                    format!("{dir}/{w}")
                })
            })
        })
        .collect();
    elsewhere.sort();
    elsewhere.dedup();
    if let Some(sub) = &d.subfolder {
        let prefix = format!("{sub}/");
        // those inside the named folder first (a repo of width/L0 variants per layer)
        elsewhere.sort_by_key(|f| !f.starts_with(&prefix));
    }
    Located::Missing {
        config_only: config,
        elsewhere,
    }
}

fn missing_error(d: &HubDictionary, config_only: bool, elsewhere: &[String]) -> DictionaryError {
    let place = match &d.subfolder {
        Some(s) => format!("`{s}/` of {}", d.repo),
        None => format!("the root of {}", d.repo),
    };
    let mut found = String::new();
    if config_only {
        found.push_str(" (cfg.json is there, neither weights file is)");
    }
    if elsewhere.is_empty() {
        found.push_str("; the repo holds no folder in either layout");
    } else {
        let specs: Vec<String> = elsewhere
            .iter()
            .take(LISTED)
            .map(|f| {
                HubDictionary {
                    repo: d.repo.clone(),
                    subfolder: (!f.is_empty()).then(|| f.clone()),
                }
                .spec()
            })
            .collect();
        found.push_str(&format!(
            "; dictionaries in this repo: {}",
            specs.join(", ")
        ));
        if elsewhere.len() > LISTED {
            found.push_str(&format!(" (and {} more)", elsewhere.len() - LISTED));
        }
    }
    DictionaryError::NoDictionary {
        spec: d.spec(),
        place,
        found,
    }
}

/// The HTTP status of a failed hf-hub request, when the server answered.
fn status_of(e: hf_hub::api::sync::ApiError) -> std::result::Result<u16, String> {
    match e {
        hf_hub::api::sync::ApiError::RequestError(r) => {
            let text = r.to_string();
            r.into_response().map(|resp| resp.status()).ok_or(text)
        }
        other => Err(other.to_string()),
    }
}

/// Fetches `d` into the cache (or finds it there) and returns its local folder.
pub fn fetch_dictionary(d: &HubDictionary, settings: &HubSettings) -> Result<PathBuf> {
    if let Some(dir) = cached(d, settings) {
        return Ok(dir);
    }
    let spec = d.spec();
    let offline = |target: &str, reason: String| DictionaryError::Offline {
        spec: spec.clone(),
        target: target.to_string(),
        reason,
        cache: settings.cache.display().to_string(),
    };
    if settings.offline {
        return Err(offline(
            &settings.endpoint,
            "HF_HUB_OFFLINE=1, and the cache does not hold it".into(),
        ));
    }
    match &settings.proxy {
        Some(p) => check_reachable(p).map_err(|e| offline(&format!("the proxy {p}"), e))?,
        None => check_reachable(&settings.endpoint).map_err(|e| offline(&settings.endpoint, e))?,
    }
    let fetch_err = |message: String| DictionaryError::Fetch {
        spec: spec.clone(),
        message,
    };
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(settings.cache.clone()))
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_progress(true)
        .build()
        .map_err(|e| fetch_err(format!("cannot set up hf-hub: {e}")))?;
    let repo = api.model(d.repo.clone());
    let info = repo.info().map_err(|e| match status_of(e) {
        Ok(status @ (401 | 403 | 404)) => DictionaryError::NoRepo {
            spec: spec.clone(),
            endpoint: settings.endpoint.clone(),
            repo: d.repo.clone(),
            status,
        },
        Ok(status) => fetch_err(format!(
            "{} answered HTTP {status} for the repo's file list",
            settings.endpoint
        )),
        Err(e) => fetch_err(format!("cannot list the repo's files: {e}")),
    })?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let (weights, sparsity) = match locate(d, &files) {
        Located::Found { weights, sparsity } => (weights, sparsity),
        Located::Missing {
            config_only,
            elsewhere,
        } => return Err(missing_error(d, config_only, &elsewhere)),
    };
    let get = |name: &str| {
        let f = d.file(name);
        repo.get(&f).map_err(|e| fetch_err(format!("{f}: {e}")))
    };
    let config = get(CONFIG)?;
    get(weights)?;
    if sparsity {
        get(OPTIONAL)?;
    }
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| fetch_err(format!("{} has no folder", config.display())))?;
    if !dir.join(weights).exists() {
        return Err(fetch_err(format!(
            "{CONFIG} and {weights} landed in different snapshots (the repo changed during the fetch); run again"
        )));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(spec: &str) -> HubDictionary {
        match HubDictionary::parse(spec) {
            Ok(Some(d)) => d,
            other => panic!("{spec}: {other:?}"),
        }
    }

    #[test]
    fn specs_that_parse() {
        let d = parsed("hf:org/repo");
        assert_eq!(d.repo, "org/repo");
        assert_eq!(d.subfolder, None);
        assert_eq!(d.file("cfg.json"), "cfg.json");
        let d = parsed("hf:EleutherAI/sae-llama-3-8b-32x/layers.6");
        assert_eq!(d.repo, "EleutherAI/sae-llama-3-8b-32x");
        assert_eq!(d.subfolder.as_deref(), Some("layers.6"));
        assert_eq!(d.file("sae.safetensors"), "layers.6/sae.safetensors");
        let d = parsed("hf:g/gemma-scope/layer_20/width_16k/average_l0_71/");
        assert_eq!(
            d.subfolder.as_deref(),
            Some("layer_20/width_16k/average_l0_71")
        );
        assert_eq!(
            d.spec(),
            "hf:g/gemma-scope/layer_20/width_16k/average_l0_71"
        );
        // not a hub spec at all: a local folder
        assert_eq!(HubDictionary::parse("runs/sae").unwrap(), None);
        assert_eq!(HubDictionary::parse("org/repo").unwrap(), None);
    }

    #[test]
    fn malformed_specs_say_the_expected_form() {
        for (spec, why) in [
            ("hf:", "no repo"),
            ("hf:/", "no repo"),
            ("hf:org", "two parts"),
            ("hf:org/", "two parts"),
            ("hf:/repo", "empty path component"),
            ("hf:org//sub", "empty path component"),
            ("hf:org/repo/../x", "`..`"),
            ("hf:org/re po", "not a valid HF org or repo name"),
        ] {
            let e = HubDictionary::parse(spec).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
            assert!(e.contains("hf:ORG/REPO/SUB/FOLDER"), "{spec}: {e}");
            assert!(e.contains(&format!("`{spec}`")), "{spec}: {e}");
        }
    }

    fn settings(cache: &Path, endpoint: &str, offline: bool) -> HubSettings {
        HubSettings {
            endpoint: endpoint.into(),
            cache: cache.to_path_buf(),
            offline,
            proxy: None,
            token: None,
        }
    }

    #[test]
    fn offline_fails_within_seconds_and_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = Path::new("hf:org/repo/layers.6");
        // HF_HUB_OFFLINE=1
        let started = std::time::Instant::now();
        let e = resolve_dictionary_with(spec, &settings(tmp.path(), DEFAULT_ENDPOINT, true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("offline") && e.contains("HF_HUB_OFFLINE"), "{e}");
        assert!(e.contains("hf:org/repo/layers.6"), "{e}");
        // nothing listens on port 9 here: the connect is refused (or times out)
        let e = resolve_dictionary_with(spec, &settings(tmp.path(), "http://127.0.0.1:9", false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("offline") && e.contains("127.0.0.1:9"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // a proxy is what the client would dial, so that is what is probed
        let mut s = settings(tmp.path(), DEFAULT_ENDPOINT, false);
        s.proxy = Some("http://127.0.0.1:9".into());
        let e = resolve_dictionary_with(spec, &s).unwrap_err().to_string();
        assert!(
            e.contains("the proxy http://127.0.0.1:9") && e.contains("offline"),
            "{e}"
        );
    }

    #[test]
    fn a_cached_dictionary_needs_no_network() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--repo");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        let dir = repo.join("snapshots").join(commit).join("layers.6");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cfg.json"), "{}").unwrap();
        // the config alone is not a cached dictionary
        let s = settings(tmp.path(), "http://127.0.0.1:9", true);
        let spec = Path::new("hf:org/repo/layers.6");
        let e = resolve_dictionary_with(spec, &s).unwrap_err().to_string();
        assert!(e.contains("offline"), "{e}");
        std::fs::write(dir.join("sae.safetensors"), "").unwrap();
        assert_eq!(resolve_dictionary_with(spec, &s).unwrap(), dir);
        // another folder of the same repo is not
        let e = resolve_dictionary_with(Path::new("hf:org/repo/layers.7"), &s).unwrap_err();
        assert!(e.to_string().contains("offline"), "{e}");
    }

    #[test]
    fn local_paths_pass_through_and_repo_ids_get_a_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path(), "http://127.0.0.1:9", true);
        assert_eq!(resolve_dictionary_with(tmp.path(), &s).unwrap(), tmp.path());
        let missing = tmp.path().join("nope");
        assert_eq!(resolve_dictionary_with(&missing, &s).unwrap(), missing);
        let e = resolve_dictionary_with(Path::new("no-such-org/no-such-repo"), &s)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hf:no-such-org/no-such-repo"), "{e}");
    }

    fn files(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn locate_picks_the_layout_and_lists_what_else_is_there() {
        let repo = files(&[
            "README.md",
            "blocks.0.hook_resid_pre/cfg.json",
            "blocks.0.hook_resid_pre/sae_weights.safetensors",
            "blocks.0.hook_resid_pre/sparsity.safetensors",
            "blocks.1.hook_resid_pre/cfg.json",
            "blocks.1.hook_resid_pre/sae_weights.safetensors",
            "layers.6/cfg.json",
            "layers.6/sae.safetensors",
            "half/cfg.json",
        ]);
        let at = |spec: &str| locate(&parsed(spec), &repo);
        assert_eq!(
            at("hf:o/r/blocks.0.hook_resid_pre"),
            Located::Found {
                weights: "sae_weights.safetensors",
                sparsity: true
            }
        );
        assert_eq!(
            at("hf:o/r/blocks.1.hook_resid_pre"),
            Located::Found {
                weights: "sae_weights.safetensors",
                sparsity: false
            }
        );
        assert_eq!(
            at("hf:o/r/layers.6"),
            Located::Found {
                weights: "sae.safetensors",
                sparsity: false
            }
        );
        let Located::Missing {
            config_only,
            elsewhere,
        } = at("hf:o/r")
        else {
            panic!("the root holds no dictionary")
        };
        assert!(!config_only);
        assert_eq!(
            elsewhere,
            [
                "blocks.0.hook_resid_pre",
                "blocks.1.hook_resid_pre",
                "layers.6"
            ]
        );
        let d = parsed("hf:o/r/half");
        let Located::Missing {
            config_only,
            elsewhere,
        } = locate(&d, &repo)
        else {
            panic!("half has no weights")
        };
        assert!(config_only);
        let e = missing_error(&d, config_only, &elsewhere).to_string();
        for want in [
            "`half/` of o/r",
            "cfg.json",
            "sae_weights.safetensors",
            "sae.safetensors",
            "cfg.json is there",
            "hf:o/r/blocks.0.hook_resid_pre, hf:o/r/blocks.1.hook_resid_pre, hf:o/r/layers.6",
        ] {
            assert!(e.contains(want), "{want:?} in {e}");
        }
        // folders under the named one come first; long lists are cut
        let many: Vec<String> = (0..12)
            .flat_map(|i| {
                [
                    format!("layer_{i}/width_16k/cfg.json"),
                    format!("layer_{i}/width_16k/sae_weights.safetensors"),
                ]
            })
            .collect();
        let d = parsed("hf:o/r/layer_9");
        let Located::Missing { elsewhere, .. } = locate(&d, &many) else {
            panic!("layer_9 itself holds no dictionary")
        };
        assert_eq!(elsewhere[0], "layer_9/width_16k");
        let e = missing_error(&d, false, &elsewhere).to_string();
        assert!(e.contains("(and 4 more)"), "{e}");
        let e = missing_error(&parsed("hf:o/r"), false, &[]).to_string();
        assert!(e.contains("holds no folder in either layout"), "{e}");
    }

    #[test]
    fn endpoints_become_sockets() {
        assert_eq!(
            socket_of("https://huggingface.co").unwrap(),
            "huggingface.co:443"
        );
        assert_eq!(socket_of("http://127.0.0.1:9").unwrap(), "127.0.0.1:9");
        assert_eq!(socket_of("http://[::1]:8080/x").unwrap(), "[::1]:8080");
        assert_eq!(
            socket_of("http://u:p@proxy.local").unwrap(),
            "proxy.local:80"
        );
        assert_eq!(socket_of("proxy.local:3128").unwrap(), "proxy.local:3128");
        assert!(socket_of("ftp://x").unwrap_err().contains("unknown scheme"));
        assert!(socket_of("https://").unwrap_err().contains("no host"));
    }
}
