//! What the server takes on at once and for how long: the request-body limit, the
//! read timeout for a request's headers and body, the connection limit, and the gate in
//! front of the views that run the model (`/api/prompt`, `/api/steer`, graph
//! interventions: up to two 200-token generations each), which bounds how many run at
//! once, how many may wait, and how long one may take. Excess load gets a JSON error
//! (413, 408, 429 with `Retry-After`, 504; 503 for connections beyond the limit), never
//! a hang.

use crate::error::{ApiError, ApiResult};
use axum::http::StatusCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Largest request body, in bytes (the biggest legitimate one, an intervention with 256
/// edits, is about 25 KB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Seconds a client has to send a request's headers, and again its body.
pub const DEFAULT_READ_TIMEOUT_S: u64 = 10;
/// Model-running requests that run at once.
pub const DEFAULT_LIVE_CONCURRENCY: usize = 2;
/// Model-running requests that may wait for a free slot; more get a 429.
pub const DEFAULT_LIVE_QUEUE: usize = 16;
/// Seconds a model-running request may take, waiting included.
pub const DEFAULT_LIVE_TIMEOUT_S: u64 = 120;
/// Open connections; more are answered 503 and closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// `Retry-After` of the busy answers, in seconds.
pub const RETRY_AFTER_S: u64 = 2;

/// The server's limits (`glassbox serve --help` lists them with these defaults).
#[derive(Debug, Clone)]
pub struct Limits {
    /// largest request body (413 beyond; [`DEFAULT_MAX_BODY_BYTES`])
    pub max_body_bytes: usize,
    /// for the headers (the connection is closed) and for the body (408)
    pub read_timeout: Duration,
    /// model-running requests that run at once ([`DEFAULT_LIVE_CONCURRENCY`])
    pub live_concurrency: usize,
    /// model-running requests that may wait for a slot; more get a 429
    /// ([`DEFAULT_LIVE_QUEUE`])
    pub live_queue: usize,
    /// for one model-running request, from its arrival (waiting for a slot included)
    pub live_timeout: Duration,
    /// open connections; more are answered 503 and closed ([`DEFAULT_MAX_CONNECTIONS`])
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            read_timeout: Duration::from_secs(DEFAULT_READ_TIMEOUT_S),
            live_concurrency: DEFAULT_LIVE_CONCURRENCY,
            live_queue: DEFAULT_LIVE_QUEUE,
            live_timeout: Duration::from_secs(DEFAULT_LIVE_TIMEOUT_S),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl Limits {
    /// Refuses limits that would make the server refuse everything or wait forever.
    pub fn check(&self) -> anyhow::Result<()> {
        let positive = [
            ("the request-body limit", self.max_body_bytes),
            ("the live concurrency", self.live_concurrency),
            ("the connection limit", self.max_connections),
        ];
        for (what, v) in positive {
            anyhow::ensure!(v > 0, "{what} must be at least 1");
        }
        anyhow::ensure!(
            !self.read_timeout.is_zero() && !self.live_timeout.is_zero(),
            "timeouts must be longer than 0 s"
        );
        Ok(())
    }
}

/// When a model-running request must stop: at its deadline, or once its client has gone
/// (the request's future was dropped). Checked between tokens and between stages.
#[derive(Clone)]
pub struct Cancel {
    deadline: Instant,
    timeout: Duration,
    gone: Arc<AtomicBool>,
}

impl Cancel {
    /// A cancel whose deadline is `timeout` from now.
    pub fn new(timeout: Duration) -> Self {
        Cancel {
            deadline: Instant::now() + timeout,
            timeout,
            gone: Arc::default(),
        }
    }

    /// A cancel that never fires within any test or request (library callers).
    pub fn never() -> Self {
        Self::new(Duration::from_secs(365 * 24 * 3600))
    }

    /// Whether the work should stop: the deadline has passed or the client has gone.
    pub fn stopped(&self) -> bool {
        self.gone.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    /// A 504 once stopped.
    pub fn check(&self) -> ApiResult<()> {
        if self.stopped() {
            return Err(self.timed_out());
        }
        Ok(())
    }

    fn timed_out(&self) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request took longer than the live views' limit of {} s (glassbox serve --live-timeout); it was stopped",
                self.timeout.as_secs_f64()
            ),
        )
    }
}

/// Marks its cancel as gone when dropped: with the request's future (client gone) or
/// when the answer has been sent.
struct GoneOnDrop(Arc<AtomicBool>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Decrements the count of admitted requests when the request leaves.
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gate in front of the model-running views.
pub struct LiveGate {
    slots: Arc<Semaphore>,
    /// requests running or waiting
    admitted: AtomicUsize,
    concurrency: usize,
    queue: usize,
    timeout: Duration,
}

impl LiveGate {
    /// A gate of `limits.live_concurrency` slots, `limits.live_queue` waiting places and
    /// `limits.live_timeout` per request.
    pub fn new(limits: &Limits) -> Self {
        LiveGate {
            slots: Arc::new(Semaphore::new(limits.live_concurrency)),
            admitted: AtomicUsize::new(0),
            concurrency: limits.live_concurrency,
            queue: limits.live_queue,
            timeout: limits.live_timeout,
        }
    }

    fn busy(&self, why: String) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the live views are busy: {why} ({} run at once, {} may wait; glassbox serve --live-concurrency, --live-queue); retry in {RETRY_AFTER_S} s",
                self.concurrency, self.queue
            ),
        )
        .retry_after(RETRY_AFTER_S)
    }

    /// Runs `f` on a blocking thread once a slot is free: a 429 when the queue is full or
    /// no slot came free before the deadline, a 504 when `f` ran past it (it stops at
    /// its next check of the cancel; the slot stays taken until it has).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Cancel) -> ApiResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let before = self.admitted.fetch_add(1, Ordering::Relaxed);
        let _admitted = Admitted(&self.admitted);
        if before >= self.concurrency + self.queue {
            return Err(self.busy(format!("{before} requests are running or waiting")));
        }
        let cancel = Cancel::new(self.timeout);
        let _gone = GoneOnDrop(cancel.gone.clone());
        let deadline = tokio::time::Instant::from_std(cancel.deadline);
        let slot = match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(ApiError::internal("the live views' gate was closed")),
            Err(_) => {
                return Err(self.busy(format!(
                    "no slot came free within {} s",
                    self.timeout.as_secs_f64()
                )))
            }
        };
        let c = cancel.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            f(&c)
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(ApiError::internal(format!(
                "the request's task failed: {e}"
            ))),
            Err(_) => Err(cancel.timed_out()),
        }
    }

    /// Requests running or waiting now.
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }
}
