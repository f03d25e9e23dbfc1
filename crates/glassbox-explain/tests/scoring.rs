//! Detection and fuzzing arithmetic against scripted judges whose answers are known,
//! the parsing of replies, and the endpoint client against a scripted HTTP server.

use glassbox_explain::client::{Chat, Endpoint, Message, Reply};
use glassbox_explain::context::Context;
use glassbox_explain::prompts::{parse_answers, parse_explanation};
use glassbox_explain::score::{detection_items, fuzzing_items, score, Test};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn ctx(words: &[&str], acts: &[f32]) -> Context {
    Context::new(words.iter().map(|w| w.to_string()).collect(), acts.to_vec())
}

/// A planted feature: fires on " cat" (strength by quantile), never elsewhere.
fn held_out() -> (Vec<Vec<Context>>, Vec<Context>) {
    let by_quantile = (0..3)
        .map(|q| {
            (0..4)
                .map(|i| {
                    let a = 1.0 + q as f32;
                    let words = ["The", " cat", " sat", " on", &format!(" mat{i}")];
                    ctx(&words, &[0.0, a, 0.0, 0.0, 0.0])
                })
                .collect()
        })
        .collect();
    let none = (0..12)
        .map(|i| ctx(&["A", " dog", " ran", &format!(" far{i}")], &[0.0; 4]))
        .collect();
    (by_quantile, none)
}

/// A judge that reads the numbered excerpts of the last message and answers each by
/// `rule`; `garbage` replies are sent first.
struct Scripted<F: Fn(&str) -> bool + Sync> {
    rule: F,
    garbage: AtomicUsize,
}

impl<F: Fn(&str) -> bool + Sync> Chat for Scripted<F> {
    fn chat(&self, messages: &[Message], _max_tokens: usize) -> anyhow::Result<Reply> {
        if self.garbage.load(Ordering::SeqCst) > 0 {
            self.garbage.fetch_sub(1, Ordering::SeqCst);
            return Ok(Reply {
                text: "I think most of them, maybe?".into(),
                prompt_tokens: 10,
                completion_tokens: 5,
            });
        }
        let user = &messages.last().expect("a message").content;
        let answers: Vec<u8> = user
            .lines()
            .filter_map(|l| l.strip_prefix("Excerpt "))
            .map(|l| u8::from((self.rule)(l.split_once(": ").map_or("", |x| x.1))))
            .collect();
        Ok(Reply {
            text: format!("Here you go: {answers:?}"),
            prompt_tokens: 100,
            completion_tokens: 7,
        })
    }
}

fn judge<F: Fn(&str) -> bool + Sync>(rule: F, garbage: usize) -> Scripted<F> {
    Scripted {
        rule,
        garbage: AtomicUsize::new(garbage),
    }
}

#[test]
fn detection_scores_a_perfect_a_blind_and_a_half_right_judge() {
    let (q, none) = held_out();
    let items = detection_items(&q, &none, 7);
    assert_eq!(items.len(), 24);
    assert_eq!(items.iter().filter(|i| i.truth).count(), 12);
    // shuffled: the positives are not all first, and the same seed shuffles the same way
    assert!(items[..12].iter().any(|i| !i.truth));
    assert_eq!(items, detection_items(&q, &none, 7));

    let perfect = score(
        &judge(|t| t.contains("cat"), 0),
        Test::Detection,
        "cats",
        &items,
        5,
    )
    .unwrap();
    assert_eq!(perfect.balanced_accuracy, Some(1.0));
    assert_eq!((perfect.answered, perfect.failed_batches), (24, 0));
    assert_eq!(perfect.prompt_tokens, 100 * 5, "five batches of at most 5");

    let yes = score(&judge(|_| true, 0), Test::Detection, "anything", &items, 5).unwrap();
    assert_eq!(
        yes.balanced_accuracy,
        Some(0.5),
        "saying yes to all is chance"
    );

    // finds the cats only in mats 0 and 1 (half the positives), never a false alarm
    let half = |t: &str| t.contains("cat") && (t.ends_with("mat0") || t.ends_with("mat1"));
    let s = score(&judge(half, 0), Test::Detection, "cats", &items, 24).unwrap();
    assert_eq!(s.balanced_accuracy, Some(0.75));
    let inverted = score(
        &judge(|t| !t.contains("cat"), 0),
        Test::Detection,
        "dogs",
        &items,
        24,
    )
    .unwrap();
    assert_eq!(inverted.balanced_accuracy, Some(0.0));
}

#[test]
fn fuzzing_marks_half_right_and_half_at_random_other_tokens() {
    let (q, _) = held_out();
    let contexts: Vec<Context> = q.concat();
    let items = fuzzing_items(&contexts, 0.5, 3);
    assert_eq!(items.len(), 12);
    assert_eq!(items.iter().filter(|i| i.truth).count(), 6);
    for i in &items {
        assert_eq!(
            i.text.matches("<<").count(),
            1,
            "one token marked: {}",
            i.text
        );
        assert_eq!(i.truth, i.text.contains("<< cat>>"), "{}", i.text);
    }
    let perfect = score(
        &judge(|t| t.contains("<< cat>>"), 0),
        Test::Fuzzing,
        "cats",
        &items,
        4,
    )
    .unwrap();
    assert_eq!(perfect.balanced_accuracy, Some(1.0));
    let no = score(&judge(|_| false, 0), Test::Fuzzing, "cats", &items, 4).unwrap();
    assert_eq!(no.balanced_accuracy, Some(0.5));
    // a context with nothing, or everything, above the threshold cannot be marked wrongly
    let flat = [ctx(&["a", "b"], &[0.0, 0.0]), ctx(&["a", "b"], &[1.0, 1.0])];
    assert!(fuzzing_items(&flat, 0.5, 0).is_empty());
}

#[test]
fn an_unreadable_reply_is_asked_again_then_its_batch_is_failed_never_scored() {
    let (q, none) = held_out();
    let items = detection_items(&q, &none, 1);
    // one garbage reply: the retry answers, everything is scored
    let s = score(
        &judge(|t| t.contains("cat"), 1),
        Test::Detection,
        "cats",
        &items,
        24,
    )
    .unwrap();
    assert_eq!(
        (s.answered, s.failed_batches, s.balanced_accuracy),
        (24, 0, Some(1.0))
    );
    // two garbage replies for the first of two batches: that batch fails, the second scores
    let s = score(
        &judge(|t| t.contains("cat"), 2),
        Test::Detection,
        "cats",
        &items,
        12,
    )
    .unwrap();
    assert_eq!((s.answered, s.failed_batches), (12, 1));
    // three of four batches unreadable: a quarter answered is too few for a score
    let s = score(
        &judge(|t| t.contains("cat"), 6),
        Test::Detection,
        "cats",
        &items,
        6,
    )
    .unwrap();
    assert_eq!(
        (s.answered, s.failed_batches, s.balanced_accuracy),
        (6, 3, None)
    );
    // nothing readable at all: no score
    let s = score(&judge(|_| true, 100), Test::Detection, "cats", &items, 12).unwrap();
    assert_eq!(
        (s.answered, s.failed_batches, s.balanced_accuracy),
        (0, 2, None)
    );
}

#[test]
fn replies_are_read_strictly() {
    assert_eq!(
        parse_answers("Sure! [1, 0, true, false]", 4).unwrap(),
        [true, false, true, false]
    );
    // one excerpt: a bare first word is an answer too
    for (reply, said) in [
        ("1", true),
        (" Yes, it does.", true),
        ("0\n", false),
        ("No.", false),
        ("[1]", true),
    ] {
        assert_eq!(parse_answers(reply, 1).unwrap(), [said], "{reply:?}");
    }
    for bad in ["Maybe", "The neuron fires", "", "[2]"] {
        assert!(parse_answers(bad, 1).is_err(), "{bad:?}");
    }
    // ... but only for one: two excerpts need the list
    assert!(parse_answers("1", 2).is_err());
    for (bad, why) in [
        ("no list here", "no JSON list"),
        ("[1, 0", "not closed"),
        ("[1, 0, 1]", "3 entries for 2"),
        ("[1, 2]", "where 0 or 1 belongs"),
        ("[1, \"yes\"]", "where 0 or 1 belongs"),
    ] {
        let e = parse_answers(bad, 2).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
    assert_eq!(
        parse_explanation("Let me think.\nExplanation: the word \"cat\" and other pets.").unwrap(),
        "the word \"cat\" and other pets."
    );
    assert_eq!(
        parse_explanation("  mentions of cats \n").unwrap(),
        "mentions of cats"
    );
    assert!(parse_explanation("Explanation:   ").is_err());
    assert!(parse_explanation("Explanation: .").is_err());
    assert!(parse_explanation(&"x".repeat(500))
        .unwrap_err()
        .to_string()
        .contains("over 400"));
}

/// A one-thread HTTP server answering each request with the next canned response
/// (status, body); returns its base URL.
fn scripted_server(responses: Vec<(u16, &'static str)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (status, body) in responses {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut req = vec![0; len];
            reader.read_exact(&mut req).unwrap();
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    base
}

fn endpoint(base: &str) -> Endpoint {
    let mut e = Endpoint::new(base, "m");
    e.backoff = Duration::from_millis(10);
    e.timeout = Duration::from_secs(5);
    e
}

const OK: &str = r#"{"choices":[{"message":{"role":"assistant","content":"[1, 0]"}}],"usage":{"prompt_tokens":12,"completion_tokens":3}}"#;

#[test]
fn the_client_retries_what_may_pass_and_names_what_will_not() {
    let hi = [Message::new("user", "hi")];
    // a 503 then a 429 pass; the third answer counts, with its usage
    let r = endpoint(&scripted_server(vec![(503, "{}"), (429, "{}"), (200, OK)]))
        .chat(&hi, 8)
        .unwrap();
    assert_eq!(
        (r.text.as_str(), r.prompt_tokens, r.completion_tokens),
        ("[1, 0]", 12, 3)
    );
    // a 401 is not retried, and OpenAI's error message is passed on
    let e = endpoint(&scripted_server(vec![
        (401, r#"{"error":{"message":"bad key"}}"#),
        (200, OK),
    ]))
    .chat(&hi, 8)
    .unwrap_err()
    .to_string();
    assert!(e.contains("HTTP 401") && e.contains("bad key"), "{e}");
    // something that is not an OpenAI endpoint, every time
    let e = endpoint(&scripted_server(vec![(200, r#"{"hello":1}"#); 4]))
        .chat(&hi, 8)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("OpenAI-compatible") && e.contains("after 4 tries"),
        "{e}"
    );
    // nothing listening
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = endpoint(&format!("http://127.0.0.1:{port}/v1"))
        .chat(&hi, 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot reach"), "{e}");
}
