//! The server under load, on loopback: 32 clients, each on its own keep-alive
//! connection, send a mix of `/api/units`, unit JSON, unit pages, `/api/prompt` and
//! `/api/steer` (up to 200 new tokens) for a fixed time, while one more client sends its
//! request a byte a second. A client told 429 waits its `Retry-After` (within the run). The server is the real one (`serve_listener`, default
//! limits but a 2 s read timeout, so the slow client is dropped several times in a short
//! run) over the fixture store and the tiny llama with a word-level tokenizer.
//!
//! Asserted: no 5xx and no failed connection; every endpoint answered; the slow client
//! neither blocks the others nor keeps its connection past the read timeout; memory
//! bounded (peak RSS within 256 MB of the warmed-up server, no growth over the run).
//! `cargo test` runs it for 6 s; `scripts/load-test` for 60 s
//! (`GLASSBOX_LOAD_SECONDS`, `GLASSBOX_LOAD_CLIENTS`). Every loop is bounded in count
//! and in time and stops by itself; a watchdog fails the test if the clients do not.

mod common;

use common::*;
use glassbox_server::Limits;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Most requests one client sends, whatever the duration.
const MAX_REQUESTS_PER_CLIENT: usize = 1_000_000;
/// How long a client waits for one answer before counting a failure.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// The server's read timeout in this test.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` and `VmHWM` of this process, in KiB (the server runs in it).
fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    addr: String,
    r: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(addr: &str) -> Self {
        Conn {
            addr: addr.to_string(),
            r: None,
        }
    }

    /// One request: the status and `Retry-After`, or an error for a failed connection
    /// or answer.
    fn request(
        &mut self,
        method: &str,
        target: &str,
        body: &str,
    ) -> std::io::Result<(u16, Option<u64>)> {
        if self.r.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
            s.set_nodelay(true)?;
            self.r = Some(BufReader::new(s));
        }
        let r = self.r.as_mut().expect("connected");
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let result = (|| {
            r.get_mut().write_all(head.as_bytes())?;
            let mut line = String::new();
            r.read_line(&mut line)?;
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
            let (mut length, mut chunked, mut close) = (0usize, false, false);
            let mut retry_after = None;
            loop {
                line.clear();
                r.read_line(&mut line)?;
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    length = v.trim().parse().map_err(std::io::Error::other)?;
                }
                chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
                close |= l.starts_with("connection:") && l.contains("close");
                if let Some(v) = l.strip_prefix("retry-after:") {
                    retry_after = v.trim().parse().ok();
                }
            }
            if chunked {
                loop {
                    line.clear();
                    r.read_line(&mut line)?;
                    let n =
                        usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
                    let mut chunk = vec![0u8; n + 2];
                    r.read_exact(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                }
            } else {
                let mut b = vec![0u8; length];
                r.read_exact(&mut b)?;
            }
            Ok((status, retry_after, close))
        })();
        match result {
            Ok((status, retry_after, close)) => {
                if close {
                    self.r = None;
                }
                Ok((status, retry_after))
            }
            Err(e) => {
                self.r = None;
                Err(e)
            }
        }
    }
}

const PROMPTS: [&str; 4] = [
    "The cat sat on the mat",
    "A small kitten chased the dog",
    "Prices rose by a good world in May",
    "hello world it was good",
];

/// The `i`-th request of client `c`: (endpoint label, method, target, body).
fn pick(c: usize, i: usize) -> (&'static str, &'static str, String, String) {
    let x = (c * 7919 + i * 104_729) % 100;
    let id = (c + i) % N_FEATURES;
    let prompt = PROMPTS[(c + i) % PROMPTS.len()];
    match x {
        0..=29 => {
            let q = [
                "",
                "&q=cat",
                "&sort=max_act",
                "&kind=neuron&sort=density&order=asc",
            ][i % 4];
            (
                "GET /api/units",
                "GET",
                format!("/api/units?limit=50{q}"),
                String::new(),
            )
        }
        30..=54 => (
            "GET /api/units/{kind}/{id}",
            "GET",
            format!("/api/units/feature/{id}"),
            String::new(),
        ),
        55..=69 => (
            "GET /unit/{kind}/{id}",
            "GET",
            format!("/unit/feature/{id}"),
            String::new(),
        ),
        70..=84 => (
            "POST /api/prompt",
            "POST",
            "/api/prompt".into(),
            serde_json::json!({"text": prompt, "feature": id}).to_string(),
        ),
        _ => {
            let n = if i.is_multiple_of(2) { 200 } else { 30 };
            (
                "POST /api/steer",
                "POST",
                "/api/steer".into(),
                serde_json::json!({"prompt": prompt, "max_new_tokens": n,
                    "features": [{"id": id, "strength": 8.0}]})
                .to_string(),
            )
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// The largest RSS sample (KiB) in the `k`-th fifth of the run.
fn fifth_max(samples: &[(Duration, u64)], k: usize) -> u64 {
    let n = samples.len();
    let (from, to) = (n * k / 5, n * (k + 1) / 5);
    samples[from.min(n)..to.max(from + 1).min(n)]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0)
}

#[derive(Default)]
struct Endpoint {
    statuses: BTreeMap<u16, usize>,
    failures: usize,
    latencies: Vec<Duration>,
}

#[test]
fn the_server_under_load() {
    let seconds: f64 = env_or("GLASSBOX_LOAD_SECONDS", 6.0);
    let n_clients: usize = env_or("GLASSBOX_LOAD_CLIENTS", 32);
    let model = tiny_text_model();
    let dir = run_dir_on(model.path(), 64, "blocks.1.hook_resid_pre");
    let limits = Limits {
        read_timeout: READ_TIMEOUT,
        ..Limits::default()
    };
    let base = start_server_with(dir.path(), limits.clone());
    let addr = base.trim_start_matches("http://").to_string();

    // warm up: the model is loaded, every kind of request has run once
    let mut warm = Conn::new(&addr);
    for i in 0..20 {
        let (_, method, target, body) = pick(0, i);
        assert_eq!(
            warm.request(method, &target, &body).unwrap().0,
            200,
            "{target}"
        );
    }
    drop(warm);
    let (rss_warm, _) = rss_kib();

    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let stop = Arc::new(AtomicBool::new(false));

    // memory, every 100 ms
    let s = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !s.load(Ordering::Relaxed) && samples.len() < 100_000 {
            samples.push((started.elapsed(), rss_kib().0));
            std::thread::sleep(Duration::from_millis(100));
        }
        samples
    });

    // the slow client: a request a byte a second, again on a new connection each time
    // the server closes one; records how long each connection lasted
    let a = addr.clone();
    let slow = std::thread::spawn(move || {
        let request = format!("GET /api/units HTTP/1.1\r\nHost: {a}\r\n\r\n");
        let mut lasted = Vec::new();
        let mut answered = 0usize;
        while Instant::now() < deadline && lasted.len() < 10_000 {
            let opened = Instant::now();
            let Ok(mut s) = TcpStream::connect(&a) else {
                break;
            };
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut buf = [0u8; 1024];
            'conn: for &b in request.as_bytes() {
                if Instant::now() >= deadline {
                    return (lasted, answered);
                }
                if s.write_all(&[b]).is_err() {
                    break;
                }
                // a one-second read paces the bytes and sees the server close
                match s.read(&mut buf) {
                    Ok(0) => break 'conn,
                    Ok(_) => {
                        answered += 1;
                        break 'conn;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break 'conn,
                }
            }
            lasted.push(opened.elapsed());
        }
        (lasted, answered)
    });

    // the clients; each reports its samples through the channel when done
    let (tx, rx) = mpsc::channel();
    for c in 0..n_clients {
        let (tx, addr) = (tx.clone(), addr.clone());
        std::thread::spawn(move || {
            let mut conn = Conn::new(&addr);
            let mut out: Vec<(&'static str, Result<u16, String>, Duration)> = Vec::new();
            let mut i = 0;
            while Instant::now() < deadline && i < MAX_REQUESTS_PER_CLIENT {
                let (label, method, target, body) = pick(c + 1, i);
                let t = Instant::now();
                let r = conn.request(method, &target, &body);
                out.push((
                    label,
                    r.as_ref().map(|r| r.0).map_err(|e| e.to_string()),
                    t.elapsed(),
                ));
                i += 1;
                // a well-behaved client: told to come back later, it does (within the run),
                // on a new connection (the server closes one idle for the read timeout)
                if let Ok((429, Some(after))) = r {
                    conn = Conn::new(&addr);
                    let wake = (Instant::now() + Duration::from_secs(after)).min(deadline);
                    std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                }
            }
            let _ = tx.send(out);
        });
    }
    drop(tx);
    let watchdog = Duration::from_secs_f64(seconds) + ANSWER_TIMEOUT + Duration::from_secs(30);
    let mut per: BTreeMap<&'static str, Endpoint> = BTreeMap::new();
    let mut errors = Vec::new();
    for _ in 0..n_clients {
        let samples = rx
            .recv_timeout(watchdog.saturating_sub(started.elapsed()))
            .expect("every client stops by itself within the run plus one answer timeout");
        for (label, r, latency) in samples {
            let e = per.entry(label).or_default();
            match r {
                Ok(s) => {
                    *e.statuses.entry(s).or_default() += 1;
                    if s == 200 {
                        e.latencies.push(latency);
                    }
                }
                Err(err) => {
                    e.failures += 1;
                    errors.push(format!("{label}: {err}"));
                }
            }
        }
    }
    let wall = started.elapsed();
    let (slow_lasted, slow_answered) = slow.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let (_, hwm) = rss_kib();

    // the report
    let count = |e: &Endpoint| e.statuses.values().sum::<usize>() + e.failures;
    let total: usize = per.values().map(count).sum();
    println!(
        "\n{n_clients} clients for {seconds} s on {addr} ({:.1} s wall): {total} requests, {:.0} requests/s",
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64()
    );
    println!("\nlatency of the 200 answers (a 429 is answered at once):");
    println!("\n| endpoint | requests | statuses | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---|---:|---:|---:|");
    for (label, e) in per.iter_mut() {
        e.latencies.sort();
        let statuses: Vec<String> = e
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .chain((e.failures > 0).then(|| format!("failed: {}", e.failures)))
            .collect();
        println!(
            "| `{label}` | {} | {} | {} | {} | {} |",
            count(e),
            statuses.join(", "),
            ms(percentile(&e.latencies, 0.5)),
            ms(percentile(&e.latencies, 0.99)),
            ms(e.latencies.last().copied().unwrap_or_default()),
        );
    }
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    println!(
        "\nRSS (the test process, server and clients): {:.1} MB warmed up, peak {:.1} MB during the run, high-water mark {:.1} MB",
        rss_warm as f64 / 1024.0,
        peak as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let fifths: Vec<String> = (0..5)
        .map(|k| format!("{:.1}", fifth_max(&samples, k) as f64 / 1024.0))
        .collect();
    println!("peak RSS per fifth of the run, MB: {}", fifths.join(", "));
    let mean_slow = slow_lasted.iter().map(Duration::as_secs_f64).sum::<f64>()
        / slow_lasted.len().max(1) as f64;
    println!(
        "slow client (a byte a second): {} connections closed by the server after {:.1} s on average (read timeout {} s), {} answered\n",
        slow_lasted.len(),
        mean_slow,
        READ_TIMEOUT.as_secs(),
        slow_answered
    );

    // what must hold
    assert!(
        errors.is_empty(),
        "failed requests: {:?}",
        &errors[..errors.len().min(10)]
    );
    for (label, e) in &per {
        let server_errors: usize = e
            .statuses
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum();
        assert_eq!(server_errors, 0, "{label}: {:?}", e.statuses);
        for s in e.statuses.keys() {
            assert!(*s == 200 || *s == 429, "{label}: unexpected status {s}");
        }
        assert!(
            e.statuses.get(&200).copied().unwrap_or(0) > 0,
            "{label} never answered 200"
        );
    }
    assert_eq!(per.len(), 5, "every endpoint of the mix was exercised");
    // the slow client held up no one: the fast endpoints answered throughout
    for label in [
        "GET /api/units",
        "GET /api/units/{kind}/{id}",
        "GET /unit/{kind}/{id}",
    ] {
        let e = &per[label];
        assert!(
            percentile(&e.latencies, 0.99) < Duration::from_secs(2),
            "{label}: p99 {:?} while a client trickled",
            percentile(&e.latencies, 0.99)
        );
    }
    // and it was dropped at the read timeout every time (it never completes a request)
    assert!(
        slow_answered == 0,
        "a byte a second never finishes the request in time"
    );
    if seconds >= 2.0 * READ_TIMEOUT.as_secs_f64() + 1.0 {
        assert!(
            !slow_lasted.is_empty(),
            "the server never closed the slow connection"
        );
        for d in &slow_lasted {
            assert!(
                *d < READ_TIMEOUT + Duration::from_secs(2),
                "a slow connection lasted {d:?}"
            );
        }
    }
    // memory bounded: the peak stays near the warmed-up server, and the last fifth of
    // the run is not above the second fifth (no growth per request)
    assert!(
        peak < rss_warm + 256 * 1024,
        "peak RSS {peak} KiB against {rss_warm} KiB warmed up"
    );
    let fifth = |k: usize| fifth_max(&samples, k);
    if samples.len() >= 10 {
        assert!(
            fifth(4) <= fifth(1) + 64 * 1024,
            "RSS grew: {} KiB in the second fifth, {} KiB in the last",
            fifth(1),
            fifth(4)
        );
    }
}
