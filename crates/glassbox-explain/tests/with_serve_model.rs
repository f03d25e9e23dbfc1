//! The explainer and the scorer through a real `serve-model` on loopback with the
//! default model (a weak explainer: the test checks the plumbing and the accounting,
//! and prints what the 135M model says).

use glassbox_explain::client::{Chat, Endpoint};
use glassbox_explain::context::Context;
use glassbox_explain::prompts::{explainer_messages, parse_explanation};
use glassbox_explain::score::{detection_items, score, Test};
use glassbox_model_server::{policy::Policy, serve_listener, ServeOptions, State};

fn ctx(words: &[&str], at: usize) -> Context {
    let acts = (0..words.len())
        .map(|i| if i == at { 3.0 } else { 0.0 })
        .collect();
    Context::new(words.iter().map(|w| w.to_string()).collect(), acts)
}

#[test]
fn explain_and_score_through_serve_model() {
    let Some(gguf) = glassbox_fixtures::default_gguf() else {
        return; // default_gguf printed SKIPPED (and CI fails on it)
    };
    let model = glassbox_model::load_model(&gguf).expect("the default model loads");
    let state = State::new(model, Policy::empty(), ServeOptions::new("default")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || serve_listener(state, listener));
    let endpoint = Endpoint::new(&base, "default");

    let shown: Vec<String> = [
        ctx(&["The", " cat", " sat", " on", " the", " mat"], 1),
        ctx(&["My", " cat", " likes", " fish"], 1),
        ctx(&["A", " black", " cat", " crossed"], 2),
    ]
    .iter()
    .map(|c| c.marked(&c.active(1.0)))
    .collect();
    let reply = endpoint
        .chat(&explainer_messages(&shown, &[" purr".into()], &[]), 40)
        .expect("serve-model answers the explainer");
    assert!(
        reply.prompt_tokens > 50,
        "the server counted the prompt: {reply:?}"
    );
    assert!((1..=40).contains(&reply.completion_tokens), "{reply:?}");
    let explanation = parse_explanation(&reply.text);
    eprintln!(
        "the default model's explanation: {explanation:?} (reply {:?})",
        reply.text
    );

    let q = vec![vec![
        ctx(&["The", " cat", " ran"], 1),
        ctx(&["One", " cat", " slept"], 1),
    ]];
    let none = vec![
        ctx(&["The", " dog", " ran"], 9),
        ctx(&["A", " bird", " sang"], 9),
    ];
    let items = detection_items(&q, &none, 0);
    let s =
        score(&endpoint, Test::Detection, "the word cat", &items, 2).expect("the scorer answers");
    eprintln!("the default model as a detection scorer: {s:?}");
    // every excerpt either answered in a readable form or in a failed batch of 2
    assert_eq!(s.answered + 2 * s.failed_batches, items.len());
    assert!(s.prompt_tokens > 0 && s.completion_tokens > 0);
    if let Some(ba) = s.balanced_accuracy {
        assert!((0.0..=1.0).contains(&ba));
    }
}
