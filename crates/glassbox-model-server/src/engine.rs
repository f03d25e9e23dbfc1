//! The decoding engine: one thread owns the model and serves every request by
//! continuous batching. Requests join between steps (the prompts that arrived together
//! run as one left-padded pass, their KV caches then join the batch's), each step is
//! one forward pass over the newest token of every active sequence, and a finished
//! sequence leaves between steps.
//! Edits and monitors act per sequence, at the sequence's own positions: batching
//! changes the speed, not the tokens (f32 summation order aside).

use crate::metrics::Metrics;
use crate::policy::{Action, Edit, EditOp, Policy, Reader};
use anyhow::Result;
use candle_core::{Device, Tensor};
use glassbox_model::{
    Batch, HookFilter, KvCache, LogitsMode, Model, PaddingSide, Run, Sampler, SamplingOptions,
};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// What one request asks the engine for.
#[derive(Debug, Clone)]
pub struct SeqParams {
    /// the prompt's token ids (BOS included where the model wants it)
    pub prompt: Vec<u32>,
    /// how tokens are picked and when generation stops (`generate`'s own options:
    /// equal options, equal tokens)
    pub sampling: SamplingOptions,
    /// strings that end the completion (not part of its text)
    pub stop_strings: Vec<String>,
    /// `Some(n)`: each token's log-probability and the `n` most probable alternatives
    pub top_logprobs: Option<usize>,
    /// per policy edit: on for this request
    pub edits_on: Vec<bool>,
    /// per policy monitor: read for this request
    pub monitors_on: Vec<bool>,
    /// when the request gives up (finish reason `timeout`)
    pub deadline: Instant,
}

/// One generated token, as responses report it.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// the token id
    pub id: u32,
    /// its text
    pub text: String,
    /// its log-probability under the model (before temperature), when asked
    pub logprob: Option<f64>,
    /// the most probable alternatives and their log-probabilities, when asked
    pub top: Vec<(String, f64)>,
    /// each enabled monitor's score at the position that produced the token
    pub scores: Vec<(usize, f64)>,
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// a stop token or stop string
    Stop,
    /// `max_tokens` or the model's context
    Length,
    /// a monitor with `block` fired
    ContentFilter,
    /// the client went away
    Cancelled,
    /// past the request's deadline
    Timeout,
}

impl FinishReason {
    /// OpenAI's name (`timeout` and `cancelled` are glassbox's).
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Timeout => "timeout",
        }
    }
}

/// One monitor's reading over a completion.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    /// the monitor's name
    pub monitor: String,
    /// `fired` or `passed`
    pub verdict: &'static str,
    /// the generated token at which it first fired
    pub fired_at_token: Option<usize>,
    /// its action (`annotate`, `flag`, `block`, `steer`)
    pub action: &'static str,
    /// the window mean when it first fired, else the extreme window mean seen
    pub score: Option<f64>,
    /// the raw score at each generated token
    pub scores: Vec<f64>,
}

/// What the engine sends back while a request runs.
#[derive(Debug, Clone)]
pub enum Event {
    /// new text (possibly empty while a stop string may be starting) and the tokens
    /// behind it
    Text {
        /// text to append to the completion
        delta: String,
        /// the tokens generated since the last event
        tokens: Vec<TokenInfo>,
    },
    /// the completion is over
    Done(Box<Finished>),
    /// the request failed inside the model (the message says why)
    Failed(String),
    /// the request waited in the queue past its deadline and never ran
    QueueTimeout,
}

/// The end of a completion.
#[derive(Debug, Clone)]
pub struct Finished {
    /// why it ended
    pub reason: FinishReason,
    /// the completion's whole text (the policy's refusal when blocked)
    pub text: String,
    /// prompt tokens
    pub prompt_tokens: usize,
    /// generated tokens
    pub completion_tokens: usize,
    /// every enabled monitor's verdict
    pub verdicts: Vec<Verdict>,
    /// the edits that were on at the end (a `steer` action may have added some)
    pub edits: Vec<String>,
    /// seconds from enqueueing to the first token
    pub first_token_s: Option<f64>,
}

/// A request handed to the engine.
pub struct Job {
    /// what to generate
    pub params: SeqParams,
    /// where to send events; a closed channel cancels the request
    pub events: UnboundedSender<Event>,
    /// when it was queued
    pub enqueued: Instant,
}

/// The handle requests are submitted through.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

/// Why a job was not queued.
#[derive(Debug)]
pub enum SubmitError {
    /// the queue is full (HTTP 429)
    Full,
    /// the engine thread has stopped
    Stopped,
}

impl Engine {
    /// Starts the engine thread for `model` and `policy`: at most `max_batch`
    /// sequences decode together, at most `queue` wait.
    pub fn start(
        model: Arc<Model>,
        policy: Arc<Policy>,
        max_batch: usize,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Engine> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue);
        let filters = policy
            .hooks()
            .into_iter()
            .map(|h| Ok((h.clone(), HookFilter::parse(&h, model.config())?)))
            .collect::<Result<Vec<_>>>()?;
        let worker = Worker {
            model,
            policy,
            filters,
            max_batch: max_batch.max(1),
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("glassbox-engine".into())
            .spawn(move || worker.run(rx))?;
        Ok(Engine { jobs: tx, metrics })
    }

    /// Queues a job, or says the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Stopped,
                })
            }
        }
    }
}

struct Worker {
    model: Arc<Model>,
    policy: Arc<Policy>,
    filters: Vec<(String, HookFilter)>,
    max_batch: usize,
    metrics: Arc<Metrics>,
}

/// One sequence being decoded.
struct Seq {
    job: Job,
    sampler: Sampler,
    generated: Vec<u32>,
    /// real positions in the KV cache
    len: usize,
    /// the token fed at the next step
    next: u32,
    edits_on: Vec<bool>,
    windows: Vec<VecDeque<f64>>,
    verdicts: Vec<Option<Verdict>>,
    text: String,
    sent: usize,
    pending: Vec<TokenInfo>,
    first_token_s: Option<f64>,
    finish: Option<FinishReason>,
}

/// Per row of a pass: where its positions start, what acts on it.
struct RowPlan<'a> {
    /// padding before the row's tokens in this pass (a prefill of unequal prompts)
    pad: usize,
    first_position: usize,
    edits: Vec<&'a Edit>,
    monitors: Vec<usize>,
}

type Readings = Vec<Vec<Option<Vec<f32>>>>;

/// What a client is told of an internal error: its first line (with `RUST_BACKTRACE`
/// set, candle's errors carry a backtrace, which goes to the server's log instead).
fn failure(e: impl std::fmt::Display) -> String {
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("internal error").to_string();
    if first.len() < full.len() {
        eprintln!("serve-model: a request failed: {full}");
    }
    first
}

impl Worker {
    fn run(self, rx: Receiver<Job>) {
        let mut active: Vec<Seq> = Vec::new();
        let mut kv: Option<KvCache> = None;
        loop {
            // join: the requests waiting between steps, their prompts in one pass
            let mut waiting = Vec::new();
            while active.len() + waiting.len() < self.max_batch {
                let job = if active.is_empty() && waiting.is_empty() {
                    match rx.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(j) => j,
                        Err(_) => break,
                    }
                };
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                waiting.extend(self.admit(job));
            }
            let mut parts: Vec<KvCache> = Vec::new();
            for group in prefill_groups(waiting) {
                if let Some((seqs, cache)) = self.prefill(group) {
                    active.extend(seqs);
                    parts.push(cache);
                }
            }
            if !parts.is_empty() {
                parts.splice(0..0, kv.take());
                match KvCache::concat(parts) {
                    Ok(c) => kv = Some(c),
                    Err(e) => {
                        self.fail_all(&mut active, &failure(format!("cannot join the batch: {e}")));
                        kv = None;
                        continue;
                    }
                }
            }
            if active.is_empty() {
                continue;
            }
            self.metrics
                .active
                .store(active.len() as u64, Ordering::Relaxed);
            if let Some(cache) = kv.as_mut() {
                if let Err(e) = self.step(&mut active, cache) {
                    self.fail_all(&mut active, &failure(&e));
                    kv = None;
                    continue;
                }
                // leave: finished sequences between steps
                let keep: Vec<bool> = active.iter().map(|s| s.finish.is_none()).collect();
                if keep.iter().any(|k| !k) {
                    for seq in active.iter_mut().filter(|s| s.finish.is_some()) {
                        self.finish(seq);
                    }
                    active.retain(|s| s.finish.is_none());
                    if active.is_empty() {
                        kv = None;
                    } else if let Err(e) = cache.retain(&keep) {
                        self.fail_all(&mut active, &failure(&e));
                        kv = None;
                    }
                }
            }
            self.metrics
                .active
                .store(active.len() as u64, Ordering::Relaxed);
        }
    }

    fn fail_all(&self, active: &mut Vec<Seq>, msg: &str) {
        for s in active.drain(..) {
            let _ = s.job.events.send(Event::Failed(msg.to_string()));
        }
    }

    /// A new request's sequence, its prompt not yet run; `None` when the request is
    /// already over (cancelled, timed out in the queue, or refused by the sampler).
    fn admit(&self, job: Job) -> Option<Seq> {
        if job.events.is_closed() {
            return None;
        }
        if Instant::now() > job.params.deadline {
            let _ = job.events.send(Event::QueueTimeout);
            return None;
        }
        let sampler = match Sampler::new(&job.params.sampling) {
            Ok(s) => s,
            Err(e) => {
                let _ = job.events.send(Event::Failed(failure(&e)));
                return None;
            }
        };
        let n_mon = self.policy.monitors.len();
        Some(Seq {
            edits_on: job.params.edits_on.clone(),
            sampler,
            generated: Vec::new(),
            len: 0,
            next: 0,
            windows: vec![VecDeque::new(); n_mon],
            verdicts: vec![None; n_mon],
            text: String::new(),
            sent: 0,
            pending: Vec::new(),
            first_token_s: None,
            finish: None,
            job,
        })
    }

    /// Runs the prompts of `seqs` as one left-padded pass and samples each one's first
    /// token; returns the sequences that go on and their KV cache (`None` when none
    /// does). Padding is masked and every edit acts at the row's own positions, so a
    /// prompt gets the numbers it gets alone (f32 summation order aside).
    fn prefill(&self, mut seqs: Vec<Seq>) -> Option<(Vec<Seq>, KvCache)> {
        let prompts: Vec<Vec<u32>> = seqs.iter().map(|s| s.job.params.prompt.clone()).collect();
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let batch = if prompts.iter().all(|p| p.len() == longest) {
            Batch::new(prompts.clone())
        } else {
            Batch::padded(&prompts, 0, PaddingSide::Left)
        };
        let plans: Vec<RowPlan> = seqs
            .iter()
            .zip(&prompts)
            .map(|(s, p)| RowPlan {
                pad: longest - p.len(),
                ..self.plan(s)
            })
            .collect();
        let mut cache = KvCache::new(self.model.config());
        let result = self.forward(&batch, &mut cache, &plans);
        drop(plans);
        let (logits, readings) = match result {
            Ok(out) => out,
            Err(e) => {
                let msg = failure(&e);
                for s in &seqs {
                    let _ = s.job.events.send(Event::Failed(msg.clone()));
                }
                return None;
            }
        };
        let mut keep = Vec::with_capacity(seqs.len());
        for (r, seq) in seqs.iter_mut().enumerate() {
            seq.len = prompts[r].len();
            match self.advance(seq, &logits[r], &readings[r]) {
                Err(e) => {
                    let _ = seq.job.events.send(Event::Failed(failure(&e)));
                    keep.push(false);
                }
                Ok(()) if seq.finish.is_some() => {
                    self.finish(seq);
                    keep.push(false);
                }
                Ok(()) => keep.push(true),
            }
        }
        if !keep.iter().any(|&k| k) {
            return None;
        }
        if keep.iter().any(|&k| !k) {
            if let Err(e) = cache.retain(&keep) {
                let msg = failure(&e);
                for (s, _) in seqs.iter().zip(&keep).filter(|(_, &k)| k) {
                    let _ = s.job.events.send(Event::Failed(msg.clone()));
                }
                return None;
            }
            let mut flags = keep.iter();
            seqs.retain(|_| *flags.next().unwrap_or(&false));
        }
        Some((seqs, cache))
    }

    fn plan<'a>(&'a self, seq: &Seq) -> RowPlan<'a> {
        RowPlan {
            pad: 0,
            first_position: seq.len,
            edits: self
                .policy
                .edits
                .iter()
                .zip(&seq.edits_on)
                .filter(|(_, &on)| on)
                .map(|(e, _)| e)
                .collect(),
            monitors: (0..self.policy.monitors.len())
                .filter(|&m| seq.job.params.monitors_on[m])
                .collect(),
        }
    }

    /// One decoding step over every active sequence.
    fn step(&self, active: &mut [Seq], kv: &mut KvCache) -> Result<()> {
        let batch = Batch::new(active.iter().map(|s| vec![s.next]).collect());
        let plans: Vec<RowPlan> = active.iter().map(|s| self.plan(s)).collect();
        let (logits, readings) = self.forward(&batch, kv, &plans)?;
        drop(plans);
        // sequences are independent: sample them in parallel (a softmax over the
        // vocabulary each, a tenth of a step at 16 sequences)
        active
            .par_iter_mut()
            .zip(logits.par_iter().zip(&readings))
            .try_for_each(|(seq, (logits, readings))| {
                seq.len += 1;
                self.advance(seq, logits, readings)
            })?;
        Ok(())
    }

    /// A pass over `batch` with each row's edits applied at its own positions; returns
    /// each row's last logits and each row's monitor readings (the last position).
    fn forward(
        &self,
        batch: &Batch,
        kv: &mut KvCache,
        plans: &[RowPlan],
    ) -> Result<(Vec<Vec<f32>>, Readings)> {
        let n_mon = self.policy.monitors.len();
        let readings: RefCell<Readings> = RefCell::new(vec![vec![None; n_mon]; plans.len()]);
        let logits = {
            let mut run = Run::new().logits(LogitsMode::Last);
            for (hook, filter) in &self.filters {
                let edits: Vec<(usize, Vec<&EditOp>)> = plans
                    .iter()
                    .enumerate()
                    .map(|(r, p)| {
                        let ops = p.edits.iter().filter(|e| &e.hook == hook).map(|e| &e.op);
                        (r, ops.collect::<Vec<_>>())
                    })
                    .filter(|(_, ops)| !ops.is_empty())
                    .collect();
                let reads: Vec<(usize, usize)> = plans
                    .iter()
                    .enumerate()
                    .flat_map(|(r, p)| {
                        p.monitors
                            .iter()
                            .filter(|&&m| &self.policy.monitors[m].hook == hook)
                            .map(move |&m| (r, m))
                    })
                    .collect();
                if edits.is_empty() && reads.is_empty() {
                    continue;
                }
                let starts: Vec<(usize, usize)> =
                    plans.iter().map(|p| (p.pad, p.first_position)).collect();
                let readings = &readings;
                run = run.hook(filter.clone(), move |_, x| {
                    let x = if edits.is_empty() {
                        x
                    } else {
                        apply_rows(x, &edits, &starts)?
                    };
                    let s = x.dim(1)?;
                    for &(r, m) in &reads {
                        let row = x.get(r)?.get(s - 1)?.flatten_all()?.to_vec1::<f32>()?;
                        readings.borrow_mut()[r][m] = Some(row);
                    }
                    Ok(x)
                });
            }
            let out = self.model.transformer.run_cached(batch, &mut run, kv)?;
            let l = out.logits()?;
            let (b, s, _) = l.dims3()?;
            (0..b)
                .map(|r| Ok(l.get(r)?.get(s - 1)?.to_vec1::<f32>()?))
                .collect::<Result<Vec<_>>>()?
        };
        Ok((logits, readings.into_inner()))
    }

    /// Reads the monitors, samples the next token, and decides whether the sequence
    /// goes on.
    fn advance(&self, seq: &mut Seq, logits: &[f32], readings: &[Option<Vec<f32>>]) -> Result<()> {
        let index = seq.generated.len();
        let mut scores = Vec::new();
        for (m, reading) in readings.iter().enumerate() {
            let Some(row) = reading else { continue };
            let mon = &self.policy.monitors[m];
            let score = mon.score(row)?;
            scores.push((m, score));
            let w = &mut seq.windows[m];
            w.push_back(score);
            if w.len() > mon.window {
                w.pop_front();
            }
            let mean = w.iter().sum::<f64>() / w.len() as f64;
            let v = seq.verdicts[m].get_or_insert_with(|| Verdict {
                monitor: mon.name.clone(),
                verdict: "passed",
                fired_at_token: None,
                action: mon.action.name(),
                score: None,
                scores: Vec::new(),
            });
            v.scores.push(score);
            if v.fired_at_token.is_some() {
                continue;
            }
            // the window mean closest to firing so far: lowest p(true), highest activation
            let extreme = match mon.reader {
                Reader::Probe(_) => f64::min,
                Reader::Feature { .. } => f64::max,
            };
            v.score = Some(v.score.map_or(mean, |s| extreme(mean, s)));
            if w.len() == mon.window && mon.fires(mean) {
                v.verdict = "fired";
                v.fired_at_token = Some(index);
                v.score = Some(mean);
                self.metrics.verdict(&mon.name, "fired");
                match mon.action {
                    Action::Block => seq.finish = Some(FinishReason::ContentFilter),
                    Action::Steer(e) => seq.edits_on[e] = true,
                    Action::Annotate | Action::Flag => {}
                }
            }
        }
        if seq.finish.is_some() {
            return Ok(());
        }
        let p = &seq.job.params;
        let t = seq.sampler.sample(logits);
        seq.generated.push(t);
        if seq.first_token_s.is_none() {
            seq.first_token_s = Some(seq.job.enqueued.elapsed().as_secs_f64());
        }
        self.metrics.tokens.fetch_add(1, Ordering::Relaxed);
        let tok = self.model.tokenizer()?;
        let (logprob, top) = match p.top_logprobs {
            Some(n) => {
                let lp = log_softmax(logits);
                let mut order: Vec<usize> = (0..lp.len()).collect();
                let n = n.min(lp.len());
                if n > 0 {
                    order.select_nth_unstable_by(n - 1, |&a, &b| lp[b].total_cmp(&lp[a]));
                    order.truncate(n);
                    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]));
                } else {
                    order.clear();
                }
                let top = order
                    .into_iter()
                    .map(|i| (tok.token_text(i as u32), lp[i]))
                    .collect();
                (Some(lp[t as usize]), top)
            }
            None => (None, Vec::new()),
        };
        let is_stop = p.sampling.stop_tokens.contains(&t);
        seq.pending.push(TokenInfo {
            id: t,
            text: if is_stop {
                String::new()
            } else {
                tok.token_text(t)
            },
            logprob,
            top,
            scores,
        });
        let body: &[u32] = if is_stop {
            &seq.generated[..seq.generated.len() - 1]
        } else {
            &seq.generated
        };
        let mut text = tok.decode(body)?;
        if let Some(cut) = p
            .stop_strings
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
            seq.finish = Some(FinishReason::Stop);
        }
        seq.text = text;
        if is_stop {
            seq.finish = Some(FinishReason::Stop);
        } else if seq.finish.is_none()
            && (seq.generated.len() >= p.sampling.max_new_tokens
                || seq.len + 1 > self.model.config().n_ctx)
        {
            // max_tokens, or no room left in the context for the token just sampled
            seq.finish = Some(FinishReason::Length);
        } else if seq.finish.is_none() && Instant::now() > p.deadline {
            seq.finish = Some(FinishReason::Timeout);
        }
        seq.next = t;
        self.flush(seq);
        Ok(())
    }

    /// Sends the text that can no longer change: not a possible start of a stop string,
    /// not a half-decoded character.
    fn flush(&self, seq: &mut Seq) {
        let text = &seq.text;
        let mut end = text.len();
        if seq.finish.is_none() {
            let hold = seq
                .job
                .params
                .stop_strings
                .iter()
                .flat_map(|s| {
                    (1..s.len())
                        .filter(|&k| s.is_char_boundary(k))
                        .map(move |k| &s[..k])
                })
                .filter(|prefix| text.ends_with(prefix))
                .map(str::len)
                .max()
                .unwrap_or(0);
            end -= hold;
            if text[..end].ends_with('\u{FFFD}') {
                end -= '\u{FFFD}'.len_utf8();
            }
        }
        let delta =
            if end > seq.sent && text.is_char_boundary(seq.sent) && text.is_char_boundary(end) {
                let d = text[seq.sent..end].to_string();
                seq.sent = end;
                d
            } else {
                String::new()
            };
        if delta.is_empty() && seq.pending.is_empty() {
            return;
        }
        let tokens = std::mem::take(&mut seq.pending);
        if seq.job.events.send(Event::Text { delta, tokens }).is_err() && seq.finish.is_none() {
            seq.finish = Some(FinishReason::Cancelled);
        }
    }

    fn finish(&self, seq: &mut Seq) {
        let reason = seq.finish.unwrap_or(FinishReason::Stop);
        if !seq.pending.is_empty() {
            self.flush(seq);
        }
        let verdicts: Vec<Verdict> = seq
            .verdicts
            .iter()
            .flatten()
            .cloned()
            .inspect(|v| {
                if v.verdict == "passed" {
                    self.metrics.verdict(&v.monitor, "passed");
                }
            })
            .collect();
        let text = if reason == FinishReason::ContentFilter {
            self.policy.refusal.clone()
        } else {
            seq.text.clone()
        };
        let done = Finished {
            reason,
            text,
            prompt_tokens: seq.job.params.prompt.len(),
            completion_tokens: seq.generated.len(),
            verdicts,
            edits: self
                .policy
                .edits
                .iter()
                .zip(&seq.edits_on)
                .filter(|(_, &on)| on)
                .map(|(e, _)| e.name.clone())
                .collect(),
            first_token_s: seq.first_token_s,
        };
        let _ = seq.job.events.send(Event::Done(Box::new(done)));
    }
}

/// `x` with each listed row's edits applied at that row's positions; `starts[r]` is
/// the row's padding (left alone) and the position of its first real token.
fn apply_rows(
    x: Tensor,
    edits: &[(usize, Vec<&EditOp>)],
    starts: &[(usize, usize)],
) -> glassbox_model::Result<Tensor> {
    let (b, s) = (x.dim(0)?, x.dim(1)?);
    let mut rows: Vec<Tensor> = (0..b)
        .map(|r| x.narrow(0, r, 1))
        .collect::<Result<_, _>>()?;
    for (r, ops) in edits {
        let (pad, first) = starts[*r];
        let mut real = rows[*r].narrow(1, pad, s - pad)?;
        for op in ops {
            real = apply(op, &real, first)?;
        }
        rows[*r] = if pad == 0 {
            real
        } else {
            Tensor::cat(&[rows[*r].narrow(1, 0, pad)?, real], 1)?
        };
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// Groups of waiting sequences whose prompts run together: by length, a group closing
/// when padding would more than double its tokens or it would pass 4,096 positions.
fn prefill_groups(mut seqs: Vec<Seq>) -> Vec<Vec<Seq>> {
    const MAX_POSITIONS: usize = 4096;
    seqs.sort_by_key(|s| s.job.params.prompt.len());
    let mut groups: Vec<Vec<Seq>> = Vec::new();
    let mut real = 0;
    for seq in seqs {
        let len = seq.job.params.prompt.len();
        let fits = groups.last().is_some_and(|g| {
            let padded = (g.len() + 1) * len; // sorted: the newcomer is the longest
            padded <= 2 * (real + len) && padded <= MAX_POSITIONS
        });
        match groups.last_mut() {
            Some(g) if fits => {
                real += len;
                g.push(seq);
            }
            _ => {
                real = len;
                groups.push(vec![seq]);
            }
        }
    }
    groups
}

/// One edit on one sequence's activation `[1, seq, …]`.
fn apply(op: &EditOp, x: &Tensor, first_position: usize) -> glassbox_model::Result<Tensor> {
    let keep_mask = |n: usize, off: &[usize], shape: &[usize]| -> candle_core::Result<Tensor> {
        let v: Vec<f32> = (0..n)
            .map(|i| if off.contains(&i) { 0.0 } else { 1.0 })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    };
    Ok(match op {
        EditOp::Steer(s) => s.apply(x, first_position)?,
        EditOp::Clamp(c) => c.apply(x)?,
        EditOp::Heads(heads) => {
            // z: [1, seq, head, d_head]
            let h = x.dim(2)?;
            x.broadcast_mul(&keep_mask(h, heads, &[1, 1, h, 1])?)?
        }
        EditOp::Neurons(idx) => {
            let m = x.dim(2)?;
            x.broadcast_mul(&keep_mask(m, idx, &[1, 1, m])?)?
        }
    })
}

/// Log-softmax of one row of logits, in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&l| l as f64 - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_told_the_first_line_of_an_internal_error_only() {
        let e = "index-select only supports contiguous tensors\n   0: bt\n   1: f<u32, f32>";
        assert_eq!(failure(e), "index-select only supports contiguous tensors");
        assert_eq!(failure("one line"), "one line");
    }
}
