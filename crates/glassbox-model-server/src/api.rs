//! The OpenAI-compatible HTTP API: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models`, `GET /metrics`, `GET /health`. Bodies are read with a size limit and
//! checked field by field, so every mistake gets OpenAI's error object naming the field.

use crate::engine::{
    Engine, Event, FinishReason, Finished, Job, SeqParams, SubmitError, TokenInfo,
};
use crate::State;
use axum::body::Body;
use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: param.map(str::to_string),
            code: None,
        }
    }
}

impl ApiError {
    /// OpenAI's error object
    fn body(&self) -> Value {
        json!({"message": self.message, "type": self.kind, "param": self.param, "code": self.code})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.body() });
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The routes, over the shared server state.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model_one))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                message: "no such endpoint; glassbox serves /v1/chat/completions, /v1/completions, /v1/models and /metrics".into(),
                param: None,
                code: Some("unknown_url"),
            }
        })
        .with_state(state)
}

fn check_key(st: &State, headers: &HeaderMap) -> ApiResult<()> {
    let Some(key) = &st.opts.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // compare every byte, so the time taken does not say how much matched
    let same = given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            message: "missing or wrong API key: send `Authorization: Bearer KEY` with the key the server was started with".into(),
            param: None,
            code: Some("invalid_api_key"),
        })
    }
}

async fn models(AxState(st): AxState<Arc<State>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_key(&st, &headers) {
        return e.into_response();
    }
    axum::Json(json!({"object": "list", "data": [model_card(&st)]})).into_response()
}

async fn model_one(
    AxState(st): AxState<Arc<State>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if let Err(e) = check_key(&st, &headers) {
        return e.into_response();
    }
    if id != st.opts.model_name {
        return unknown_model(&st, &id).into_response();
    }
    axum::Json(model_card(&st)).into_response()
}

fn model_card(st: &State) -> Value {
    json!({"id": st.opts.model_name, "object": "model", "created": st.started, "owned_by": "glassbox"})
}

fn unknown_model(st: &State, id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        message: format!(
            "the model `{id}` does not exist; this server serves `{}`",
            st.opts.model_name
        ),
        param: Some("model".into()),
        code: Some("model_not_found"),
    }
}

async fn metrics(AxState(st): AxState<Arc<State>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn read_body(st: &State, body: Body) -> ApiResult<Map<String, Value>> {
    let bytes = axum::body::to_bytes(body, st.opts.max_body_bytes)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "invalid_request_error",
            message: format!(
                "the request body is larger than {} bytes, the server's limit (--max-body-bytes)",
                st.opts.max_body_bytes
            ),
            param: None,
            code: None,
        })?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}"), None))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad("the body must be a JSON object", None)),
    }
}

/// Typed access to the body's fields, with errors that name the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn f64(&self, k: &str, lo: f64, hi: f64) -> ApiResult<Option<f64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
                Some(x) => Err(ApiError::bad(
                    format!("`{k}` must be between {lo} and {hi}, got {x}"),
                    Some(k),
                )),
                None => Err(ApiError::bad(
                    format!("`{k}` must be a number, got {v}"),
                    Some(k),
                )),
            },
        }
    }
    fn u64(&self, k: &str) -> ApiResult<Option<u64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ApiError::bad(
                    format!("`{k}` must be a non-negative integer, got {v}"),
                    Some(k),
                )
            }),
        }
    }
    fn bool(&self, k: &str) -> ApiResult<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                ApiError::bad(format!("`{k}` must be true or false, got {v}"), Some(k))
            }),
        }
    }
    fn str(&self, k: &str) -> ApiResult<Option<&str>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ApiError::bad(format!("`{k}` must be a string, got {v}"), Some(k))),
        }
    }
}

/// What both endpoints share once the prompt is text.
struct Common {
    stream: bool,
    include_usage: bool,
    params: SeqParams,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

fn common(st: &State, f: &Fields, prompt_text: &str, kind: Kind) -> ApiResult<Common> {
    let model = f
        .str("model")?
        .ok_or_else(|| ApiError::bad("`model` is required", Some("model")))?;
    if model != st.opts.model_name {
        return Err(unknown_model(st, model));
    }
    if f.u64("n")?.is_some_and(|n| n != 1) {
        return Err(ApiError::bad(
            "glassbox generates one choice per request: `n` must be 1",
            Some("n"),
        ));
    }
    let tok = st
        .model
        .tokenizer()
        .map_err(|e| ApiError::bad(e.to_string(), None))?;
    let prompt = tok
        .encode_prompt(prompt_text)
        .map_err(|e| ApiError::bad(format!("cannot tokenize the prompt: {e}"), None))?;
    if prompt.is_empty() {
        return Err(ApiError::bad(
            "the prompt is empty: nothing to continue",
            None,
        ));
    }
    let n_ctx = st.model.config().n_ctx;
    if prompt.len() >= n_ctx {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::bad(
                format!(
                    "the prompt is {} tokens; the model's context is {n_ctx}",
                    prompt.len()
                ),
                Some("messages"),
            )
        });
    }
    let room = n_ctx - prompt.len();
    let max_key = if kind == Kind::Chat && f.get("max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let default_max = if kind == Kind::Chat { 256 } else { 16 };
    let max_new = match f.u64(max_key)? {
        Some(0) => return Err(ApiError::bad(format!("`{max_key}` must be at least 1"), Some(max_key))),
        Some(m) if m as usize > room => {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::bad(
                    format!(
                        "`{max_key}` is {m}, but the prompt's {} tokens leave {room} of the model's {n_ctx}",
                        prompt.len()
                    ),
                    Some(max_key),
                )
            })
        }
        Some(m) => m as usize,
        None => default_max.min(room),
    };
    let stop_strings: Vec<String> = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Some(v) => {
            return Err(ApiError::bad(
                format!("`stop` must be a string or up to 4 strings, got {v}"),
                Some("stop"),
            ))
        }
    };
    if stop_strings.iter().any(String::is_empty) {
        return Err(ApiError::bad(
            "`stop` strings must not be empty",
            Some("stop"),
        ));
    }
    let top_logprobs = match kind {
        Kind::Chat => match (f.bool("logprobs")?, f.u64("top_logprobs")?) {
            (Some(true), n) if n.unwrap_or(0) <= 20 => Some(n.unwrap_or(0) as usize),
            (Some(true), _) => {
                return Err(ApiError::bad(
                    "`top_logprobs` must be at most 20",
                    Some("top_logprobs"),
                ))
            }
            (_, Some(_)) => {
                return Err(ApiError::bad(
                    "`top_logprobs` needs `logprobs: true`",
                    Some("top_logprobs"),
                ))
            }
            _ => None,
        },
        Kind::Text => match f.u64("logprobs")? {
            Some(n) if n <= 5 => Some(n as usize),
            Some(_) => {
                return Err(ApiError::bad(
                    "`logprobs` must be at most 5",
                    Some("logprobs"),
                ))
            }
            None => None,
        },
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => o
            .get("include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::bad(
                format!("`stream_options` must be an object, got {v}"),
                Some("stream_options"),
            ))
        }
    };
    let (edits_on, monitors_on) = overrides(st, f)?;
    let seed = f.u64("seed")?.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    Ok(Common {
        stream,
        include_usage,
        params: SeqParams {
            prompt,
            sampling: glassbox_model::SamplingOptions {
                max_new_tokens: max_new,
                temperature: f.f64("temperature", 0.0, 2.0)?.unwrap_or(1.0),
                top_p: match f.f64("top_p", 0.0, 1.0)? {
                    Some(0.0) => {
                        return Err(ApiError::bad("`top_p` must be above 0", Some("top_p")))
                    }
                    p => p.unwrap_or(1.0),
                },
                seed,
                // vLLM's extension: go on past end-of-sequence (benchmarks, min lengths)
                stop_tokens: if f.bool("ignore_eos")?.unwrap_or(false) {
                    Vec::new()
                } else {
                    tok.stop_tokens()
                },
            },
            stop_strings,
            top_logprobs,
            edits_on,
            monitors_on,
            deadline: Instant::now() + st.opts.request_timeout,
        },
    })
}

/// The policy's defaults, changed by the request's `glassbox` field (`extra_body` in the
/// openai client): `{"edits": {"name": true|false}, "monitors": {"name": true|false}}`,
/// each name one the policy's `[requests] allow` lists.
fn overrides(st: &State, f: &Fields) -> ApiResult<(Vec<bool>, Vec<bool>)> {
    let p = &st.policy;
    let mut edits: Vec<bool> = p.edits.iter().map(|e| e.enabled).collect();
    let mut monitors: Vec<bool> = p.monitors.iter().map(|m| m.enabled).collect();
    let Some(g) = f.get("glassbox") else {
        return Ok((edits, monitors));
    };
    let g = g.as_object().ok_or_else(|| {
        ApiError::bad(
            "`glassbox` must be an object: {\"edits\": {…}, \"monitors\": {…}}",
            Some("glassbox"),
        )
    })?;
    for (key, v) in g {
        let (names, flags): (Vec<&str>, &mut Vec<bool>) = match key.as_str() {
            "edits" => (
                p.edits.iter().map(|e| e.name.as_str()).collect(),
                &mut edits,
            ),
            "monitors" => (
                p.monitors.iter().map(|m| m.name.as_str()).collect(),
                &mut monitors,
            ),
            other => {
                return Err(ApiError::bad(
                    format!("`glassbox.{other}` is not a field; use `edits` and `monitors`"),
                    Some("glassbox"),
                ))
            }
        };
        let switches = v.as_object().ok_or_else(|| {
            ApiError::bad(
                format!("`glassbox.{key}` must map names to true or false"),
                Some("glassbox"),
            )
        })?;
        for (name, on) in switches {
            let on = on.as_bool().ok_or_else(|| {
                ApiError::bad(
                    format!("`glassbox.{key}.{name}` must be true or false"),
                    Some("glassbox"),
                )
            })?;
            let i = names.iter().position(|n| n == name).ok_or_else(|| {
                ApiError::bad(
                    format!(
                        "the policy has no {} named `{name}` (it has: {})",
                        &key[..key.len() - 1],
                        names.join(", ")
                    ),
                    Some("glassbox"),
                )
            })?;
            if !p.allow.iter().any(|a| a == name) {
                return Err(ApiError {
                    status: StatusCode::FORBIDDEN,
                    kind: "permission_error",
                    ..ApiError::bad(
                        format!("the policy does not let requests switch `{name}` (its [requests] allow list)"),
                        Some("glassbox"),
                    )
                });
            }
            flags[i] = on;
        }
    }
    Ok((edits, monitors))
}

fn chat_prompt(st: &State, f: &Fields) -> ApiResult<String> {
    let msgs = f
        .get("messages")
        .ok_or_else(|| ApiError::bad("`messages` is required", Some("messages")))?
        .as_array()
        .ok_or_else(|| {
            ApiError::bad(
                "`messages` must be a list of {role, content}",
                Some("messages"),
            )
        })?;
    if msgs.is_empty() {
        return Err(ApiError::bad("`messages` is empty", Some("messages")));
    }
    let mut turns: Vec<(String, String)> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::bad(
                format!("messages[{i}] needs a string `role`"),
                Some("messages"),
            )
        })?;
        if !matches!(role, "system" | "user" | "assistant" | "developer") {
            return Err(ApiError::bad(
                format!(
                    "messages[{i}]: role `{role}` is not supported; use system, user or assistant"
                ),
                Some("messages"),
            ));
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::bad(
                                format!("messages[{i}]: only text parts are supported"),
                                Some("messages"),
                            ))
                        }
                    }
                }
                s
            }
            _ => {
                return Err(ApiError::bad(
                    format!("messages[{i}] needs `content`, a string"),
                    Some("messages"),
                ))
            }
        };
        let role = if role == "developer" { "system" } else { role };
        turns.push((role.to_string(), content));
    }
    let tok = st
        .model
        .tokenizer()
        .map_err(|e| ApiError::bad(e.to_string(), None))?;
    let turns: Vec<(&str, &str)> = turns
        .iter()
        .map(|(r, c)| (r.as_str(), c.as_str()))
        .collect();
    glassbox_model::chat::render_chat(tok, &turns).map_err(|e| {
        ApiError::bad(
            format!("the model's chat template cannot render these messages: {e}"),
            Some("messages"),
        )
    })
}

fn text_prompt(f: &Fields) -> ApiResult<String> {
    match f.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or("").to_string())
        }
        Some(Value::Array(_)) => Err(ApiError::bad(
            "glassbox takes one prompt per request: `prompt` must be a string",
            Some("prompt"),
        )),
        Some(v) => Err(ApiError::bad(
            format!("`prompt` must be a string, got {v}"),
            Some("prompt"),
        )),
        None => Err(ApiError::bad("`prompt` is required", Some("prompt"))),
    }
}

async fn chat(AxState(st): AxState<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    respond(st, headers, body, Kind::Chat).await
}

async fn completions(AxState(st): AxState<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    respond(st, headers, body, Kind::Text).await
}

async fn respond(st: Arc<State>, headers: HeaderMap, body: Body, kind: Kind) -> Response {
    let t0 = Instant::now();
    let endpoint = match kind {
        Kind::Chat => "chat",
        Kind::Text => "completions",
    };
    let r = match start(&st, &headers, body, kind).await {
        Ok((c, rx, id)) if c.stream => stream(st.clone(), c, rx, id, kind),
        Ok((c, rx, id)) => whole(&st, c, rx, id, kind)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    };
    st.metrics
        .request(endpoint, r.status().as_u16(), t0.elapsed().as_secs_f64());
    r
}

async fn start(
    st: &Arc<State>,
    headers: &HeaderMap,
    body: Body,
    kind: Kind,
) -> ApiResult<(Common, UnboundedReceiver<Event>, String)> {
    check_key(st, headers)?;
    let body = read_body(st, body).await?;
    let f = Fields(&body);
    let text = match kind {
        Kind::Chat => chat_prompt(st, &f)?,
        Kind::Text => text_prompt(&f)?,
    };
    let c = common(st, &f, &text, kind)?;
    let (tx, rx) = unbounded_channel();
    submit(&st.engine, c.params.clone(), tx)?;
    st.metrics
        .prompt_tokens
        .fetch_add(c.params.prompt.len() as u64, Ordering::Relaxed);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Text => "cmpl",
    };
    let id = format!(
        "{prefix}-{}-{}",
        st.started,
        st.next_id.fetch_add(1, Ordering::Relaxed)
    );
    Ok((c, rx, id))
}

fn submit(
    engine: &Engine,
    params: SeqParams,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
) -> ApiResult<()> {
    let job = Job {
        params,
        events: tx,
        enqueued: Instant::now(),
    };
    engine.submit(job).map_err(|e| match e {
        SubmitError::Full => ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            message: "the server's queue is full (--queue); retry in a moment".into(),
            param: None,
            code: Some("queue_full"),
        },
        SubmitError::Stopped => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message: "the model engine has stopped; restart the server".into(),
            param: None,
            code: None,
        },
    })
}

/// 504: the request's timeout passed while it waited for a place in the batch.
fn queue_timeout() -> ApiError {
    ApiError {
        status: StatusCode::GATEWAY_TIMEOUT,
        kind: "timeout",
        message: "the request timed out in the queue before it ran (--request-timeout); \
                  the server is busy, retry later"
            .into(),
        param: None,
        code: Some("queue_timeout"),
    }
}

fn server_error(msg: String) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        message: msg,
        param: None,
        code: None,
    }
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        // OpenAI's clients know stop, length and content_filter only
        FinishReason::Timeout | FinishReason::Cancelled => "length",
        r => r.name(),
    }
}

fn glassbox_field(st: &State, done: &Finished, tokens: &[TokenInfo]) -> Value {
    let blocked = done
        .verdicts
        .iter()
        .find(|v| v.action == "block" && v.verdict == "fired");
    json!({
        "policy": st.policy.hash,
        "edits": done.edits,
        "monitors": done.verdicts,
        "tokens": token_scores(st, tokens),
        "blocked": blocked.map(|v| json!({
            "monitor": v.monitor, "score": v.score, "at_token": v.fired_at_token,
            "reason": block_reason(st, &v.monitor, v.score),
        })),
        "stopped": match done.reason { FinishReason::Timeout => Some("timeout"), _ => None },
    })
}

fn block_reason(st: &State, monitor: &str, score: Option<f64>) -> String {
    let m = st.policy.monitors.iter().find(|m| m.name == monitor);
    match m {
        Some(m) => format!(
            "monitor `{}` fired: window mean {:.3} {} threshold {} over {} token(s)",
            m.name,
            score.unwrap_or(f64::NAN),
            if matches!(m.reader, crate::policy::Reader::Probe(_)) {
                "below"
            } else {
                "above"
            },
            m.threshold,
            m.window
        ),
        None => format!("monitor `{monitor}` fired"),
    }
}

fn token_scores(st: &State, tokens: &[TokenInfo]) -> Value {
    Value::Array(
        tokens
            .iter()
            .map(|t| {
                let scores: Map<String, Value> = t
                    .scores
                    .iter()
                    .map(|(m, s)| (st.policy.monitors[*m].name.clone(), json!(s)))
                    .collect();
                json!({"token": t.text, "scores": scores})
            })
            .collect(),
    )
}

fn chat_logprobs(tokens: &[TokenInfo]) -> Value {
    let entry =
        |text: &str, lp: f64| json!({"token": text, "logprob": lp, "bytes": text.as_bytes()});
    json!({"content": tokens.iter().filter(|t| t.logprob.is_some()).map(|t| {
        let mut e = entry(&t.text, t.logprob.unwrap_or(0.0));
        e["top_logprobs"] = Value::Array(t.top.iter().map(|(s, lp)| entry(s, *lp)).collect());
        e
    }).collect::<Vec<_>>()})
}

fn text_logprobs(tokens: &[TokenInfo], offset: usize) -> Value {
    let mut at = offset;
    let mut offsets = Vec::new();
    for t in tokens {
        offsets.push(at);
        at += t.text.len();
    }
    json!({
        "tokens": tokens.iter().map(|t| t.text.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| t.top.iter().map(|(s, lp)| (s.clone(), json!(lp))).collect::<Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

fn audit(st: &State, id: &str, kind: Kind, c: &Common, done: &Finished) {
    let Some(log) = &st.audit else { return };
    let taken: Vec<&str> = done
        .verdicts
        .iter()
        .filter(|v| v.verdict == "fired")
        .map(|v| v.action)
        .collect();
    let mut rec = json!({
        "id": id,
        "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        "endpoint": match kind { Kind::Chat => "chat", Kind::Text => "completions" },
        "model": st.opts.model_name,
        "policy": st.policy.hash,
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "finish_reason": done.reason.name(),
        "edits": done.edits,
        "monitors": done.verdicts.iter().map(|v| json!({
            "monitor": v.monitor, "verdict": v.verdict, "score": v.score,
            "fired_at_token": v.fired_at_token, "action": v.action, "scores": v.scores,
        })).collect::<Vec<_>>(),
        "action_taken": if taken.is_empty() { "none".to_string() } else { taken.join(",") },
    });
    if st.opts.log_content {
        let tok = st.model.tokenizer().ok();
        rec["prompt"] = json!(tok.and_then(|t| t.decode(&c.params.prompt).ok()));
        rec["completion"] = json!(done.text);
    }
    log.append(&rec);
}

fn usage(done: &Finished) -> Value {
    json!({"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
           "total_tokens": done.prompt_tokens + done.completion_tokens})
}

async fn whole(
    st: &Arc<State>,
    c: Common,
    mut rx: UnboundedReceiver<Event>,
    id: String,
    kind: Kind,
) -> ApiResult<Response> {
    let mut tokens: Vec<TokenInfo> = Vec::new();
    let done = loop {
        match rx.recv().await {
            Some(Event::Text { tokens: t, .. }) => tokens.extend(t),
            Some(Event::Done(d)) => break d,
            Some(Event::Failed(msg)) => return Err(server_error(msg)),
            Some(Event::QueueTimeout) => return Err(queue_timeout()),
            None => return Err(server_error("the engine dropped the request".into())),
        }
    };
    if let Some(s) = done.first_token_s {
        st.metrics.first_token(s);
    }
    audit(st, &id, kind, &c, &done);
    let blocked = done.reason == FinishReason::ContentFilter;
    let shown: Vec<TokenInfo> = if blocked { Vec::new() } else { tokens.clone() };
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "logprobs": c.params.top_logprobs.map(|_| chat_logprobs(&shown)),
            "finish_reason": finish_name(done.reason),
        }),
        Kind::Text => json!({
            "index": 0, "text": done.text,
            "logprobs": c.params.top_logprobs.map(|_| text_logprobs(&shown, 0)),
            "finish_reason": finish_name(done.reason),
        }),
    };
    let body = json!({
        "id": id,
        "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": now_s(),
        "model": st.opts.model_name,
        "system_fingerprint": fingerprint(st),
        "choices": [choice],
        "usage": usage(&done),
        "glassbox": glassbox_field(st, &done, &shown),
    });
    let mut r = axum::Json(body).into_response();
    let flagged: Vec<&str> = done
        .verdicts
        .iter()
        .filter(|v| v.verdict == "fired" && v.action != "annotate")
        .map(|v| v.monitor.as_str())
        .collect();
    if !flagged.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&flagged.join(",")) {
            r.headers_mut().insert("x-glassbox-flagged", v);
        }
    }
    Ok(r)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fingerprint(st: &State) -> String {
    format!("glassbox-{}-{}", env!("CARGO_PKG_VERSION"), st.policy.hash)
}

/// Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. The
/// receiver is dropped when the client disconnects, which cancels the generation.
fn stream(
    st: Arc<State>,
    c: Common,
    rx: UnboundedReceiver<Event>,
    id: String,
    kind: Kind,
) -> Response {
    let created = now_s();
    let object = if kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = {
        let st = st.clone();
        let id = id.clone();
        move |choice: Value, extra: Option<Value>| {
            let mut v = json!({"id": id, "object": object, "created": created, "model": st.opts.model_name,
                               "system_fingerprint": fingerprint(&st), "choices": [choice]});
            if let Some(g) = extra {
                v["glassbox"] = g;
            }
            v
        }
    };
    struct S {
        rx: UnboundedReceiver<Event>,
        first: bool,
        over: bool,
        offset: usize,
        all: Vec<TokenInfo>,
    }
    let init = S {
        rx,
        first: true,
        over: false,
        offset: 0,
        all: Vec::new(),
    };
    let events = futures_util::stream::unfold(init, move |mut s| {
        let st = st.clone();
        let chunk = chunk.clone();
        let (c_logprobs, include_usage) = (c.params.top_logprobs, c.include_usage);
        let c_params = c.params.clone();
        let id = id.clone();
        async move {
            if s.over {
                return None;
            }
            let mut out: Vec<Value> = Vec::new();
            if s.first && kind == Kind::Chat {
                out.push(chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}), None));
            }
            s.first = false;
            let mut lines: Vec<String> = Vec::new();
            match s.rx.recv().await {
                Some(Event::Text { delta, tokens }) => {
                    let lp = c_logprobs.map(|_| match kind {
                        Kind::Chat => chat_logprobs(&tokens),
                        Kind::Text => text_logprobs(&tokens, s.offset),
                    });
                    s.offset += delta.len();
                    let g = json!({"tokens": token_scores(&st, &tokens)});
                    s.all.extend(tokens);
                    let choice = match kind {
                        Kind::Chat => {
                            json!({"index": 0, "delta": {"content": delta}, "logprobs": lp, "finish_reason": null})
                        }
                        Kind::Text => {
                            json!({"index": 0, "text": delta, "logprobs": lp, "finish_reason": null})
                        }
                    };
                    out.push(chunk(choice, Some(g)));
                }
                Some(Event::Done(done)) => {
                    if let Some(t) = done.first_token_s {
                        st.metrics.first_token(t);
                    }
                    let common = Common {
                        stream: true,
                        include_usage,
                        params: c_params,
                    };
                    audit(&st, &id, kind, &common, &done);
                    let mut g = glassbox_field(&st, &done, &[]);
                    g["tokens"] = json!([]);
                    let choice = match kind {
                        Kind::Chat => {
                            json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_name(done.reason)})
                        }
                        Kind::Text => {
                            json!({"index": 0, "text": "", "logprobs": null, "finish_reason": finish_name(done.reason)})
                        }
                    };
                    out.push(chunk(choice, Some(g)));
                    if include_usage {
                        let mut u = chunk(json!(null), None);
                        u["choices"] = json!([]);
                        u["usage"] = usage(&done);
                        out.push(u);
                    }
                    s.over = true;
                }
                Some(Event::Failed(msg)) => {
                    lines.push(json!({"error": {"message": msg, "type": "server_error", "param": null, "code": null}}).to_string());
                    s.over = true;
                }
                Some(Event::QueueTimeout) => {
                    lines.push(json!({"error": queue_timeout().body()}).to_string());
                    s.over = true;
                }
                None => s.over = true,
            }
            let mut text = String::new();
            for v in out {
                text.push_str(&v.to_string());
                text.push_str("\n\n");
            }
            for l in lines {
                text.push_str(&l);
                text.push_str("\n\n");
            }
            if s.over {
                text.push_str("[DONE]");
            }
            // one SSE event may carry several `data:` records: split them
            let evs: Vec<Result<SseEvent, Infallible>> = text
                .split("\n\n")
                .filter(|t| !t.is_empty())
                .map(|t| Ok(SseEvent::default().data(t)))
                .collect();
            Some((futures_util::stream::iter(evs), s))
        }
    });
    use futures_util::StreamExt;
    Sse::new(events.flatten()).into_response()
}
