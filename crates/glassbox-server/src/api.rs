//! Routes: the JSON API under `/api`, the single-page UI and its embedded assets.
//! Pages and assets come from the binary, data from the store; the only files read are
//! the graphs in `graphs/`, by names checked against that folder's listing. Every error,
//! the framework's own (405, a path that does not decode) included, is the API's JSON
//! error object; request bodies are read whole, within the limits, before any handler.

use crate::assets;
use crate::error::{ApiError, ApiResult};
use crate::live::DEFAULT_NEW_TOKENS;
use crate::store::{Kind, ListQuery, Sort};
use crate::{App, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, TOP_FEATURES_PER_TOKEN};
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use glassbox_circuits::{FeatureEdit, InterventionMode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type AppState = State<Arc<App>>;

/// The server's routes over an opened run. Needs a Tokio runtime with timers
/// (`enable_time`): request bodies are read under the read timeout.
pub fn router(app: Arc<App>) -> Router {
    let routes = Router::new()
        .route("/api/meta", get(meta))
        .route("/api/units", get(units))
        .route("/api/units/{kind}/{id}", get(unit))
        .route("/api/comparison", get(comparison))
        .route("/api/prompt", post(prompt))
        .route("/api/steer", post(steer))
        .route("/api/graphs", get(graph_list))
        .route("/api/graphs/{name}", get(graph))
        .route("/api/graphs/{name}/intervene", post(graph_intervene))
        .route("/api/layers", get(layers))
        .route("/api/layers/{layer}/features/{id}", get(layer_feature))
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/prompt", get(page))
        .route("/steer", get(page))
        .route("/compare", get(page))
        .route("/graphs", get(page))
        .route("/graph/{name}", get(graph_page))
        .route("/layer/{layer}/feature/{id}", get(layer_feature_page))
        .route("/unit/{kind}/{id}", get(unit_page))
        .route("/audit", get(audit_page))
        .route("/static/{file}", get(asset))
        .fallback(not_found)
        // the body is read (and limited) by `read_body`, before any extractor
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(app.clone(), read_body))
        .with_state(app);
    // around the whole router, so that it sees the `Allow` header axum adds to a 405
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::map_response(security_headers))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than the server's limit of {limit} bytes (glassbox serve --max-body-bytes)"),
    )
}

/// Reads the whole request body before the handler runs: at most `max_body_bytes`
/// (413 beyond, refused from `Content-Length` before reading when it says so), within
/// `read_timeout` (408 when it does not arrive in time).
async fn read_body(State(app): AppState, req: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let limits = &app.limits;
    let limit = limits.max_body_bytes;
    let (parts, mut body) = req.into_parts();
    if content_length(&parts.headers).is_some_and(|n| n > limit as u64) {
        return too_large(limit).into_response();
    }
    let read = async {
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    };
    match tokio::time::timeout(limits.read_timeout, read).await {
        Ok(Ok(buf)) => next.run(Request::from_parts(parts, Body::from(buf))).await,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s (glassbox serve --read-timeout)",
                limits.read_timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// Turns every error response that is not already JSON (axum's 405, a path parameter
/// that does not decode) into the API's error object, keeping `Allow` and `Retry-After`.
async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let r = next.run(req).await;
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (parts, body) = r.into_parts();
    let detail = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let allow = parts
        .headers
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let message = match (status, &allow) {
        (StatusCode::METHOD_NOT_ALLOWED, Some(a)) => {
            format!("{method} is not allowed on {path}: it takes {a}")
        }
        _ if !detail.is_empty() => format!("{detail} ({method} {path})"),
        _ => format!(
            "{} ({method} {path})",
            status.canonical_reason().unwrap_or("error")
        ),
    };
    let mut out = ApiError::new(status, message).into_response();
    for h in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(v) = parts.headers.get(&h) {
            out.headers_mut().insert(h, v.clone());
        }
    }
    out
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Runs blocking work (SQLite, graph files) off the async workers; the model runs
/// behind the live views' gate ([`crate::limits::LiveGate`]).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the request's task failed: {e}")))?
}

async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/api/") || uri.path() == "/api" {
        ApiError::not_found(format!("no API endpoint {}", uri.path())).into_response()
    } else {
        ApiError::not_found(format!("no page {}", uri.path())).into_response()
    }
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

async fn page() -> Response {
    html(assets::page_html("/", None))
}

async fn unit_page(Path((kind, id)): Path<(String, String)>, uri: Uri) -> Response {
    if Kind::parse(&kind).is_none() || id.parse::<u64>().is_err() {
        return not_found(uri).await;
    }
    html(assets::page_html("/", None))
}

/// The run's audit report (`glassbox audit` writes `RUN/audit.html`; a fixed name, so
/// no request picks a file).
async fn audit_page(State(app): AppState) -> Response {
    let path = app.run_dir.join(AUDIT_REPORT);
    match tokio::task::spawn_blocking(move || std::fs::read_to_string(path)).await {
        Ok(Ok(body)) => html(body),
        _ => ApiError::not_found(format!(
            "this run has no audit report yet: `glassbox audit --run {}` writes {AUDIT_REPORT}",
            app.run_dir.display()
        ))
        .into_response(),
    }
}

/// The audit report's file in a run directory.
pub const AUDIT_REPORT: &str = "audit.html";

async fn graph_page(Path(name): Path<String>, uri: Uri) -> Response {
    if crate::check_graph_name(&name).is_err() {
        return not_found(uri).await;
    }
    html(assets::page_html("/", None))
}

async fn layer_feature_page(Path((layer, id)): Path<(String, String)>, uri: Uri) -> Response {
    if layer.parse::<u64>().is_err() || id.parse::<u64>().is_err() {
        return not_found(uri).await;
    }
    html(assets::page_html("/", None))
}

async fn asset(Path(file): Path<String>, uri: Uri) -> Response {
    match assets::get(&file) {
        Some((ctype, body)) => ([(header::CONTENT_TYPE, ctype)], body).into_response(),
        None => not_found(uri).await,
    }
}

fn parse_kind(s: &str) -> ApiResult<Kind> {
    Kind::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown unit kind `{s}`: expected `feature` or `neuron`"
        ))
    })
}

async fn meta(State(app): AppState) -> ApiResult<Json<Value>> {
    blocking(move || {
        let n_graphs = app.graphs.names().len();
        let (Some(store), Some(live)) = (&app.store, &app.live) else {
            let index = app.graphs.set_index.as_ref();
            return Ok(Json(json!({
                "mode": "transcoders",
                "run_dir": app.run_dir.display().to_string(),
                "graphs": n_graphs,
                "set": {
                    "model": index.and_then(|i| i.model.clone()),
                    "layers": index.map(|i| i.describe()),
                },
                "meta": {},
            })));
        };
        let meta = store.meta()?;
        let counts = store.counts()?;
        let d = &live.dictionary;
        Ok(Json(json!({
            "mode": "run",
            "run_dir": app.run_dir.display().to_string(),
            "graphs": n_graphs,
            "audit": app.run_dir.join(AUDIT_REPORT).is_file(),
            "meta": meta,
            "counts": counts,
            "dictionary": {
                "dir": live.dictionary_dir.display().to_string(),
                "architecture": d.architecture.name(),
                "d_in": d.d_in,
                "d_sae": d.d_sae,
                "hook_name": d.hook_name,
                "hook_name_out": d.hook_name_out,
            },
            "live": {
                "model": live.model_spec,
                "model_loaded": live.model_loaded(),
                "max_prompt_tokens": MAX_PROMPT_TOKENS,
                "top_features_per_token": TOP_FEATURES_PER_TOKEN,
                "max_new_tokens": MAX_NEW_TOKENS,
            },
        })))
    })
    .await
}

fn parse_usize(params: &HashMap<String, String>, key: &str, default: usize) -> ApiResult<usize> {
    match params.get(key) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| {
            ApiError::bad_request(format!("`{key}` must be a non-negative integer, got `{v}`"))
        }),
    }
}

async fn units(
    State(app): AppState,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(p) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    const KEYS: [&str; 6] = ["kind", "q", "sort", "order", "limit", "offset"];
    if let Some(k) = p.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{k}`: expected {}",
            KEYS.join(", ")
        )));
    }
    let kind = parse_kind(p.get("kind").map_or("feature", String::as_str))?;
    let sort = match p.get("sort") {
        None => Sort::Id,
        Some(s) => Sort::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown sort `{s}`: expected density, max_act, id or concentration"
            ))
        })?,
    };
    let descending = match p.get("order").map(String::as_str) {
        None => sort != Sort::Id,
        Some("asc") => false,
        Some("desc") => true,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "unknown order `{o}`: expected asc or desc"
            )))
        }
    };
    let limit = parse_usize(&p, "limit", 50)?;
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and 1000, got {limit}"
        )));
    }
    let offset = parse_usize(&p, "offset", 0)?;
    if offset > i64::MAX as usize {
        return Err(ApiError::bad_request("`offset` is too large"));
    }
    let q = ListQuery {
        kind,
        q: p.get("q").cloned(),
        sort,
        descending,
        limit,
        offset,
    };
    blocking(move || Ok(Json(app.store()?.list(&q)?))).await
}

async fn unit(
    State(app): AppState,
    Path((kind, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let kind = parse_kind(&kind)?;
    let id: i64 = id.parse().ok().filter(|i| *i >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unit id must be a non-negative integer, got `{id}`"
        ))
    })?;
    blocking(move || match app.store()?.unit(kind, id)? {
        Some(u) => Ok(Json(u)),
        None => Err(ApiError::not_found(format!(
            "no {} {id} in this feature store",
            kind.as_str()
        ))),
    })
    .await
}

async fn comparison(State(app): AppState) -> ApiResult<Json<Value>> {
    blocking(move || Ok(Json(app.store()?.comparison()?))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptRequest {
    text: String,
    #[serde(default)]
    feature: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SteerFeature {
    id: usize,
    strength: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SteerRequest {
    prompt: String,
    features: Vec<SteerFeature>,
    #[serde(default)]
    max_new_tokens: Option<usize>,
}

fn body_error(e: JsonRejection) -> ApiError {
    ApiError::bad_request(format!("bad request body: {}", e.body_text()))
}

async fn prompt(
    State(app): AppState,
    body: Result<Json<PromptRequest>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(req) = body.map_err(body_error)?;
    app.live()?;
    let a = app.clone();
    app.gate
        .run(move |cancel| {
            let store = a.store()?;
            let labels = |ids: &[i64]| store.labels(Kind::Feature, ids).unwrap_or_default();
            Ok(Json(a.live()?.prompt(
                &req.text,
                req.feature,
                labels,
                cancel,
            )?))
        })
        .await
}

/// Strengths the steering playground suggests, as multiples of a feature's max activation.
const STRENGTH_MULTIPLES: [f64; 4] = [1.0, 2.0, 5.0, 10.0];

async fn steer(
    State(app): AppState,
    body: Result<Json<SteerRequest>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(req) = body.map_err(body_error)?;
    app.live()?;
    let a = app.clone();
    app.gate
        .run(move |cancel| {
            let features: Vec<(usize, f64)> =
                req.features.iter().map(|f| (f.id, f.strength)).collect();
            let mut out = a.live()?.steer(
                &req.prompt,
                &features,
                req.max_new_tokens.unwrap_or(DEFAULT_NEW_TOKENS),
                cancel,
            )?;
            let ids: Vec<i64> = features.iter().map(|f| f.0 as i64).collect();
            let store = a.store()?;
            let labels = store.labels(Kind::Feature, &ids).unwrap_or_default();
            let max_acts = store.max_acts(Kind::Feature, &ids).unwrap_or_default();
            if let Some(fs) = out["features"].as_array_mut() {
                for f in fs {
                    let id = f["id"].as_i64().unwrap_or(-1);
                    f["label"] = json!(labels.get(&id));
                    // strength is in activation units (the decoder row is added
                    // strength times): multiples of the largest activation seen
                    f["max_act"] = json!(max_acts.get(&id));
                    f["suggested_strengths"] = json!(max_acts
                        .get(&id)
                        .map(|m| STRENGTH_MULTIPLES.iter().map(|k| k * m).collect::<Vec<_>>()));
                }
            }
            Ok(Json(out))
        })
        .await
}

async fn graph_list(State(app): AppState) -> ApiResult<Json<Value>> {
    blocking(move || Ok(Json(app.graphs.list()?))).await
}

async fn graph(State(app): AppState, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    blocking(move || Ok(Json(app.graphs.get(&name)?))).await
}

fn default_mode() -> InterventionMode {
    InterventionMode::Frozen
}

fn default_top() -> usize {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InterveneRequest {
    #[serde(default = "default_mode")]
    mode: InterventionMode,
    #[serde(default)]
    edits: Vec<FeatureEdit>,
    #[serde(default = "default_top")]
    top: usize,
}

async fn graph_intervene(
    State(app): AppState,
    Path(name): Path<String>,
    body: Result<Json<InterveneRequest>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    // the name first: a bad or unknown graph is refused before the body is looked at
    let name = crate::check_graph_name(&name)?.to_string();
    let Json(req) = body.map_err(body_error)?;
    let a = app.clone();
    app.gate
        .run(move |cancel| {
            Ok(Json(
                a.graphs
                    .intervene(&name, req.mode, &req.edits, req.top, cancel)?,
            ))
        })
        .await
}

async fn layers(State(app): AppState) -> ApiResult<Json<Value>> {
    blocking(move || match &app.graphs.set_index {
        Some(i) => Ok(Json(json!({
            "dir": i.dir.display().to_string(),
            "model": i.model,
            "layers": i.describe(),
        }))),
        None => Err(ApiError::not_found(format!(
            "{} is not a transcoder set (no index.json)",
            app.run_dir.display()
        ))),
    })
    .await
}

async fn layer_feature(
    State(app): AppState,
    Path((layer, id)): Path<(String, String)>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(p) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(k) = p.keys().find(|k| k.as_str() != "graph") {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{k}`: expected graph"
        )));
    }
    let layer: usize = layer.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "layer must be a non-negative integer, got `{layer}`"
        ))
    })?;
    let id: i64 = id.parse().ok().filter(|i| *i >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "feature id must be a non-negative integer, got `{id}`"
        ))
    })?;
    let graph = p.get("graph").cloned();
    blocking(move || {
        Ok(Json(app.graphs.layer_feature(
            layer,
            id,
            graph.as_deref(),
        )?))
    })
    .await
}
