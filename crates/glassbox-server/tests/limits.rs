//! The server's limits and error answers: every error is the API's JSON object (axum's
//! own 405 included), bodies over the limit are 413, a client that sends its request a
//! byte a second is dropped without holding up anyone else, a body that does not arrive
//! is a 408, and the gate in front of the model-running views bounds how many run, how
//! many wait (429 with Retry-After beyond) and how long one takes (504).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use glassbox_server::limits::LiveGate;
use glassbox_server::{router, App, Limits};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
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

#[test]
fn bodies_over_the_limit_are_413() {
    let dir = run_dir();
    // the default limit, 1 MiB: one byte more is refused before any parsing
    let app = Arc::new(App::open(dir.path()).unwrap());
    let limit = app.limits.max_body_bytes;
    assert_eq!(limit, 1 << 20);
    let big = format!(r#"{{"text": "{}"}}"#, "a".repeat(limit));
    let (s, h, body) = call(&app, "POST", "/api/prompt", big.into_bytes());
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let v = assert_json_error(s, &h, &body);
    assert!(v["error"].as_str().unwrap().contains("1048576"), "{v}");

    // a configured limit, over TCP with and without Content-Length
    let small = Limits {
        max_body_bytes: 100,
        ..Limits::default()
    };
    let base = start_server_with(dir.path(), small);
    let body = format!(r#"{{"text": "{}"}}"#, "a".repeat(100));
    let (s, text) = raw_request(&base, "POST", "/api/prompt", Some(&body));
    assert_eq!(s, 413, "{text}");
    assert!(text.contains("100 bytes"), "{text}");
    let (s, text) = chunked_post(&base, "/api/steer", body.as_bytes());
    assert_eq!(s, 413, "{text}");
    // under the limit the body reaches the handler (here: the 400 of a bad body)
    let (s, text) = raw_request(&base, "POST", "/api/prompt", Some(r#"{"txt": 1}"#));
    assert_eq!(s, 400, "{text}");
    assert!(text.contains("bad request body"), "{text}");

    // over TCP at the default limit: a body of exactly the limit is read whole (far more
    // than the 64 KiB head buffer) and reaches the handler
    let base = start_server(dir.path());
    let body = format!(r#"{{"txt": "{}"}}"#, "a".repeat(limit - 11));
    assert_eq!(body.len(), limit);
    let (s, text) = raw_request(&base, "POST", "/api/prompt", Some(&body));
    assert_eq!(s, 400, "{text:.300}");
    assert!(text.contains("unknown field `txt`"), "{text:.300}");
}

#[test]
fn connections_beyond_the_limit_get_a_json_503() {
    let dir = run_dir();
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let base = start_server_with(dir.path(), limits);
    let addr = base.trim_start_matches("http://");
    // two idle connections hold both places (until the read timeout)
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let (s, head, body) = raw_request_with_headers(&base, "GET", "/api/meta", "");
    assert_eq!(s, 503, "{body}");
    assert!(head.contains("retry-after: 2"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("--max-connections"),
        "{v}"
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    let (s, _, body) = raw_request_with_headers(&base, "GET", "/api/meta", "");
    assert_eq!(s, 200, "{body}");
}

/// A POST with a chunked body (no Content-Length): (status, body).
fn chunked_post(base: &str, target: &str, body: &[u8]) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    for c in body.chunks(16) {
        write!(s, "{:x}\r\n", c.len()).unwrap();
        s.write_all(c).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    // the server may answer and close before the last chunk
    let _ = s.write_all(b"0\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Writes `bytes` one a second (or until the server closes); returns when the server
/// closed the connection, or None if it was still open after `give_up`.
fn trickle(addr: &str, bytes: &[u8], give_up: Duration) -> (Option<Duration>, String) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut got = Vec::new();
    for &b in bytes.iter().cycle() {
        if started.elapsed() > give_up {
            return (None, String::from_utf8_lossy(&got).into_owned());
        }
        if s.write_all(&[b]).is_err() {
            return (
                Some(started.elapsed()),
                String::from_utf8_lossy(&got).into_owned(),
            );
        }
        // a read that waits a second paces the writes and sees the close
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => {
                return (
                    Some(started.elapsed()),
                    String::from_utf8_lossy(&got).into_owned(),
                )
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                return (
                    Some(started.elapsed()),
                    String::from_utf8_lossy(&got).into_owned(),
                )
            }
        }
    }
    unreachable!("cycle never ends")
}

#[test]
fn a_slow_client_is_dropped_and_holds_up_no_one() {
    let dir = run_dir();
    let limits = Limits {
        read_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let base = start_server_with(dir.path(), limits);
    let addr = base.trim_start_matches("http://").to_string();

    // headers at a byte a second: the connection is closed after the read timeout
    let a = addr.clone();
    let slow_head = std::thread::spawn(move || {
        trickle(
            &a,
            format!(
                "GET /api/units HTTP/1.1\r\nHost: {a}\r\nX-Pad: {}\r\n\r\n",
                "p".repeat(64)
            )
            .as_bytes(),
            Duration::from_secs(8),
        )
    });
    // a body at a byte a second: 408 after the read timeout
    let a = addr.clone();
    let slow_body = std::thread::spawn(move || {
        let started = Instant::now();
        let mut s = TcpStream::connect(&a).unwrap();
        write!(
            s,
            "POST /api/prompt HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        )
        .unwrap();
        // a byte a second until the answer starts, then the rest of it
        s.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while started.elapsed() < Duration::from_secs(8) {
            if s.write_all(b" ").is_err() {
                break;
            }
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(_) => {}
            }
        }
        let took = started.elapsed();
        let _ = s.read_to_end(&mut out);
        (took, String::from_utf8_lossy(&out).into_owned())
    });

    // meanwhile everyone else is served at once
    std::thread::sleep(Duration::from_millis(300));
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let t = Instant::now();
        let (s, body) = raw_request(&base, "GET", &format!("/api/units/feature/{}", i % 6), None);
        assert_eq!(s, 200, "{body}");
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "a request took {slowest:?} while slow clients trickled"
    );

    let (closed, got) = slow_head.join().unwrap();
    let closed = closed
        .unwrap_or_else(|| panic!("the slow client still held its connection after 8 s: {got:?}"));
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_secs(5),
        "closed after {closed:?}"
    );
    let (took, answer) = slow_body.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {took:?}: {answer:?}"
    );
    assert!(answer.contains("\"status\":408"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn the_live_gate_bounds_running_waiting_and_time() {
    let rt = runtime();
    let limits = Limits {
        live_concurrency: 1,
        live_queue: 1,
        live_timeout: Duration::from_millis(1500),
        ..Limits::default()
    };
    let gate = Arc::new(LiveGate::new(&limits));
    rt.block_on(async {
        // one runs, one waits, the third is refused at once with Retry-After
        let g = gate.clone();
        let first = tokio::spawn(async move {
            g.run(|_| {
                std::thread::sleep(Duration::from_millis(400));
                Ok(1)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let g = gate.clone();
        let second = tokio::spawn(async move { g.run(|_| Ok(2)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(gate.admitted(), 2);
        let t = Instant::now();
        let third = gate.run(|_| Ok(3)).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_millis(500), "refused at once");
        assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS, "{third}");
        assert!(third.retry_after.is_some());
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
        assert_eq!(gate.admitted(), 0);

        // work past the deadline: 504, and the work sees the cancel and stops
        let stopped_at = Arc::new(std::sync::Mutex::new(None));
        let s = stopped_at.clone();
        let t = Instant::now();
        let e = gate
            .run(move |cancel| {
                while !cancel.stopped() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                *s.lock().unwrap() = Some(Instant::now());
                cancel.check()?;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT, "{e}");
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
            "{took:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            stopped_at.lock().unwrap().is_some(),
            "the work stopped itself"
        );

        // work that ignores the cancel keeps its slot: the next request cannot get one
        // before its own deadline and is refused (429), not run beside it
        let g = gate.clone();
        let hog = tokio::spawn(async move {
            g.run(|_| {
                std::thread::sleep(Duration::from_millis(3200));
                Ok(())
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let e = gate.run(|_| Ok(())).await.unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS, "{e}");
        assert!(e.message.contains("no slot came free"), "{e}");
        assert_eq!(
            hog.await.unwrap().unwrap_err().status,
            StatusCode::GATEWAY_TIMEOUT
        );
    });
}

#[test]
fn live_requests_past_their_deadline_are_504_and_excess_ones_429() {
    let model = tiny_text_model();
    let dir = run_dir_on(model.path(), 64, "blocks.1.hook_resid_pre");
    let steer = r#"{"prompt": "The weather today is", "features": [{"id": 1, "strength": 4}], "max_new_tokens": 200}"#;

    // a deadline no request can meet: a JSON 504 (the model loads, then the check fires;
    // 1 ms was met by a cached tiny model's prompt view once the store got faster)
    let hurried = Limits {
        live_timeout: Duration::from_nanos(1),
        ..Limits::default()
    };
    let base = start_server_with(dir.path(), hurried);
    for (uri, body) in [
        ("/api/steer", steer),
        ("/api/prompt", r#"{"text": "the cat"}"#),
    ] {
        let (s, text) = raw_request(&base, "POST", uri, Some(body));
        assert_eq!(s, 504, "{uri}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("--live-timeout"),
            "{v}"
        );
    }

    // one slot, no queue: concurrent steering requests are served or told to come back
    let narrow = Limits {
        live_concurrency: 1,
        live_queue: 0,
        ..Limits::default()
    };
    let base = start_server_with(dir.path(), narrow);
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (base, barrier) = (base.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                raw_request_with_headers(&base, "POST", "/api/steer", steer)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in clients {
        let (s, head, body) = c.join().unwrap();
        match s {
            200 => assert!(body.contains("\"steered\""), "{body}"),
            429 => {
                assert!(head.contains("retry-after: 2"), "{head}");
                assert!(body.contains("--live-concurrency"), "{body}");
            }
            _ => panic!("status {s}: {body}"),
        }
        statuses.push(s);
    }
    assert!(statuses.contains(&200), "{statuses:?}");
}

/// One request: (status, the lower-cased head, body).
fn raw_request_with_headers(
    base: &str,
    method: &str,
    target: &str,
    body: &str,
) -> (u16, String, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}
