//! The server's error answers: every error is the API's JSON object (axum's own 405
//! included).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use glassbox_server::{router, App};
use serde_json::Value;
use std::sync::Arc;
use tower::ServiceExt;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

/// One request through the router: (status, headers, body).
fn call(
    app: &Arc<App>,
    method: &str,
    uri: &str,
    body: Vec<u8>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let r = router(app.clone());
    runtime().block_on(async move {
        let resp = r.oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    })
}

/// The API's error object, with its status field equal to the response's.
fn assert_json_error(status: StatusCode, headers: &axum::http::HeaderMap, body: &str) -> Value {
    let ctype = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        ctype.starts_with("application/json"),
        "{status}: {ctype:?} {body:?}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(v["status"], status.as_u16(), "{v}");
    v
}

#[test]
fn every_error_is_the_json_error_object() {
    let dir = run_dir();
    let app = Arc::new(App::open(dir.path()).unwrap());
    // axum's own 405 for a POST-only endpoint (and the other way round), with Allow
    for (method, uri, allowed) in [
        ("GET", "/api/prompt", "POST"),
        ("GET", "/api/steer", "POST"),
        ("GET", "/api/graphs/x/intervene", "POST"),
        ("DELETE", "/api/units", "GET"),
        ("POST", "/api/meta", "GET"),
        ("PUT", "/", "GET"),
    ] {
        let (s, h, body) = call(&app, method, uri, Vec::new());
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        let v = assert_json_error(s, &h, &body);
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(method) && msg.contains(allowed), "{msg}");
        let allow = h.get("allow").unwrap().to_str().unwrap();
        assert!(allow.contains(allowed), "{allow}");
    }
    // a path parameter that is not UTF-8 once decoded (axum's plain-text 400), unknown
    // pages and assets
    for (uri, status) in [
        ("/api/units/feature/%FF", StatusCode::BAD_REQUEST),
        ("/api/graphs/%FF%FE", StatusCode::BAD_REQUEST),
        ("/nowhere", StatusCode::NOT_FOUND),
        ("/static/nope.js", StatusCode::NOT_FOUND),
        ("/unit/feature/abc", StatusCode::NOT_FOUND),
        ("/api/nowhere", StatusCode::NOT_FOUND),
    ] {
        let (s, h, body) = call(&app, "GET", uri, Vec::new());
        assert_eq!(s, status, "{uri}: {body}");
        assert_json_error(s, &h, &body);
    }
}
