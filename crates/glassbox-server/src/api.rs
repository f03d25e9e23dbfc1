//! Routes: the JSON API under `/api`, the single-page UI and its embedded assets.
//! Nothing here reads a file: pages and assets come from the binary, data from the store.

use crate::assets;
use crate::error::{ApiError, ApiResult};
use crate::live::DEFAULT_NEW_TOKENS;
use crate::store::{Kind, ListQuery, Sort};
use crate::{App, MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, TOP_FEATURES_PER_TOKEN};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type AppState = State<Arc<App>>;

/// The server's routes over an opened run.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/meta", get(meta))
        .route("/api/units", get(units))
        .route("/api/units/{kind}/{id}", get(unit))
        .route("/api/comparison", get(comparison))
        .route("/api/prompt", post(prompt))
        .route("/api/steer", post(steer))
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/prompt", get(page))
        .route("/steer", get(page))
        .route("/compare", get(page))
        .route("/unit/{kind}/{id}", get(unit_page))
        .route("/static/{file}", get(asset))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
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

/// Runs blocking work (SQLite, the model) off the async workers.
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
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "not found\n",
        )
            .into_response()
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
        let meta = app.store.meta()?;
        let counts = app.store.counts()?;
        let d = &app.live.dictionary;
        Ok(Json(json!({
            "run_dir": app.run_dir.display().to_string(),
            "meta": meta,
            "counts": counts,
            "dictionary": {
                "dir": app.live.dictionary_dir.display().to_string(),
                "architecture": d.architecture.name(),
                "d_in": d.d_in,
                "d_sae": d.d_sae,
                "hook_name": d.hook_name,
                "hook_name_out": d.hook_name_out,
            },
            "live": {
                "model": app.live.model_spec,
                "model_loaded": app.live.model_loaded(),
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
    blocking(move || Ok(Json(app.store.list(&q)?))).await
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
    blocking(move || match app.store.unit(kind, id)? {
        Some(u) => Ok(Json(u)),
        None => Err(ApiError::not_found(format!(
            "no {} {id} in this feature store",
            kind.as_str()
        ))),
    })
    .await
}

async fn comparison(State(app): AppState) -> ApiResult<Json<Value>> {
    blocking(move || Ok(Json(app.store.comparison()?))).await
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
    blocking(move || {
        let labels = |ids: &[i64]| app.store.labels(Kind::Feature, ids).unwrap_or_default();
        Ok(Json(app.live.prompt(&req.text, req.feature, labels)?))
    })
    .await
}

async fn steer(
    State(app): AppState,
    body: Result<Json<SteerRequest>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(req) = body.map_err(body_error)?;
    blocking(move || {
        let features: Vec<(usize, f64)> = req.features.iter().map(|f| (f.id, f.strength)).collect();
        let mut out = app.live.steer(
            &req.prompt,
            &features,
            req.max_new_tokens.unwrap_or(DEFAULT_NEW_TOKENS),
        )?;
        let ids: Vec<i64> = features.iter().map(|f| f.0 as i64).collect();
        let labels = app.store.labels(Kind::Feature, &ids).unwrap_or_default();
        if let Some(fs) = out["features"].as_array_mut() {
            for f in fs {
                let id = f["id"].as_i64().unwrap_or(-1);
                f["label"] = json!(labels.get(&id));
            }
        }
        Ok(Json(out))
    })
    .await
}
