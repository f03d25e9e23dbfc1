//! The batching engine on the default model (no HTTP): sequences decoded together
//! get the tokens each gets alone, and a request whose deadline passes in the queue is
//! answered as a queue timeout, not run.

use glassbox_model::generate::SamplingOptions;
use glassbox_model::load_model;
use glassbox_model_server::engine::{Engine, Event, Job, SeqParams};
use glassbox_model_server::metrics::Metrics;
use glassbox_model_server::policy::Policy;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An engine over the default model; `None` (a loud SKIPPED, a failure under CI) when
/// it is not fetched.
fn engine(max_batch: usize) -> Option<Engine> {
    let model = load_model(&glassbox_fixtures::default_gguf()?).expect("the default model loads");
    let e = Engine::start(
        Arc::new(model),
        Arc::new(Policy::empty()),
        max_batch,
        64,
        Arc::new(Metrics::default()),
    )
    .expect("engine starts");
    Some(e)
}

/// `seed` also sets the length, 8 + 2 · seed tokens: sequences leave the batch one
/// by one.
fn params(prompt: Vec<u32>, seed: u64, deadline: Instant) -> SeqParams {
    SeqParams {
        prompt,
        sampling: SamplingOptions {
            max_new_tokens: 8 + 2 * seed as usize,
            temperature: 0.8,
            top_p: 0.95,
            seed,
            stop_tokens: Vec::new(),
        },
        stop_strings: Vec::new(),
        top_logprobs: Some(2),
        edits_on: Vec::new(),
        monitors_on: Vec::new(),
        deadline,
    }
}

type Events = tokio::sync::mpsc::UnboundedReceiver<Event>;

fn submit(e: &Engine, p: SeqParams) -> Events {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    e.submit(Job {
        params: p,
        events: tx,
        enqueued: Instant::now(),
    })
    .map_err(|e| format!("{e:?}"))
    .expect("queued");
    rx
}

/// Every token id and its log-probability, until the completion ends.
fn collect(mut rx: Events) -> Vec<(u32, f64)> {
    let mut out = Vec::new();
    loop {
        match rx.blocking_recv() {
            Some(Event::Text { tokens, .. }) => {
                out.extend(tokens.iter().map(|t| (t.id, t.logprob.expect("asked for"))))
            }
            Some(Event::Done(_)) => return out,
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[test]
fn sequences_decoded_together_get_the_tokens_each_gets_alone() {
    let later = Instant::now() + Duration::from_secs(600);
    // prompts of different lengths: a batched prefill pads them on the left
    let prompts: Vec<Vec<u32>> = (0..5u32)
        .map(|i| (0..(2 + 3 * i)).map(|t| 1 + (t * 7 + i) % 90).collect())
        .collect();
    let (Some(alone_engine), Some(together_engine)) = (engine(1), engine(8)) else {
        return;
    };
    let alone: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| collect(submit(&alone_engine, params(p.clone(), i as u64, later))))
        .collect();
    let queued: Vec<Events> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| submit(&together_engine, params(p.clone(), i as u64, later)))
        .collect();
    let together: Vec<_> = queued.into_iter().map(collect).collect();
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.len(), 8 + 2 * i, "sequence {i} generated all its tokens");
        let ids = |v: &[(u32, f64)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(ids(a), ids(t), "sequence {i}: batching changed its tokens");
        for ((_, la), (_, lt)) in a.iter().zip(t) {
            assert!(
                (la - lt).abs() < 1e-4,
                "sequence {i}: logprob {la} alone, {lt} batched"
            );
        }
    }
}

#[test]
fn a_request_past_its_deadline_in_the_queue_is_a_queue_timeout_and_never_runs() {
    let Some(e) = engine(1) else { return };
    let past = Instant::now();
    std::thread::sleep(Duration::from_millis(5));
    let mut rx = submit(&e, params(vec![1, 2, 3], 0, past));
    match rx.blocking_recv() {
        Some(Event::QueueTimeout) => {}
        other => panic!("expected a queue timeout, got {other:?}"),
    }
    assert!(
        rx.blocking_recv().is_none(),
        "nothing follows a queue timeout"
    );
}
