//! A chat client for any OpenAI-compatible endpoint (`POST {base}/chat/completions`),
//! with a timeout per request and retries with exponential backoff on what may pass
//! (connection errors, 429, 5xx); the explainer and the scorer both go through [`Chat`],
//! so tests can script one.

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::Duration;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`
    pub role: String,
    /// its text
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A completion's text and what it cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply {
    /// the assistant's text
    pub text: String,
    /// prompt tokens, as the endpoint counted them (0 when it does not say)
    pub prompt_tokens: u64,
    /// completion tokens, as the endpoint counted them
    pub completion_tokens: u64,
}

/// Something that answers a conversation: an endpoint, or a script in tests.
pub trait Chat: Sync {
    /// The reply to `messages`, at most `max_tokens` long, greedy.
    fn chat(&self, messages: &[Message], max_tokens: usize) -> Result<Reply>;
}

/// An OpenAI-compatible endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// e.g. `http://127.0.0.1:8000/v1`
    pub base_url: String,
    /// the `model` field of each request
    pub model: String,
    /// sent as `Authorization: Bearer …` when set
    pub api_key: Option<String>,
    /// the longest one request may take
    pub timeout: Duration,
    /// tries after the first, on errors that may pass
    pub retries: u32,
    /// the first backoff (doubled after each try)
    pub backoff: Duration,
}

impl Endpoint {
    /// An endpoint with a 120 s timeout and 3 retries from a 0.5 s backoff.
    pub fn new(base_url: &str, model: &str) -> Self {
        Endpoint {
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api_key: None,
            timeout: Duration::from_secs(120),
            retries: 3,
            backoff: Duration::from_millis(500),
        }
    }

    /// One request: `Ok(Err(msg))` for a failure worth retrying.
    fn once(&self, body: &Value) -> Result<std::result::Result<Reply, String>> {
        let url = format!("{}/chat/completions", self.base_url);
        let agent = ureq::AgentBuilder::new().timeout(self.timeout).build();
        let mut req = agent.post(&url).set("content-type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.set("authorization", &format!("Bearer {key}"));
        }
        let resp = match req.send_json(body.clone()) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let detail = r
                    .into_json::<Value>()
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let msg = format!("{url} answered HTTP {code} {detail}");
                if code == 429 || code >= 500 {
                    return Ok(Err(msg));
                }
                bail!("{msg}");
            }
            Err(e) => return Ok(Err(format!("cannot reach {url}: {e}"))),
        };
        let v: Value = match resp.into_json() {
            Ok(v) => v,
            Err(e) => {
                return Ok(Err(format!(
                    "{url} did not answer JSON ({e}); is it an OpenAI-compatible endpoint?"
                )))
            }
        };
        let Some(text) = v["choices"][0]["message"]["content"].as_str() else {
            return Ok(Err(format!(
                "{url} answered without choices[0].message.content; is it an OpenAI-compatible \
                 chat endpoint?"
            )));
        };
        Ok(Ok(Reply {
            text: text.to_string(),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        }))
    }
}

impl Chat for Endpoint {
    fn chat(&self, messages: &[Message], max_tokens: usize) -> Result<Reply> {
        let body = json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
        });
        let mut wait = self.backoff;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(wait);
                wait *= 2;
            }
            match self.once(&body)? {
                Ok(reply) => return Ok(reply),
                Err(msg) => last = msg,
            }
        }
        Err(anyhow!("{last} (after {} tries)", self.retries + 1))
    }
}
