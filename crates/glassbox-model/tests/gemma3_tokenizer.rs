//! Gemma-3-270M's tokenizer, rebuilt from its GGUF header (SentencePiece BPE with byte
//! fallback, merges derived from the vocabulary), against HF transformers on the same
//! file: exact ids (BOS included) for every case and prompt of the reference, and the
//! reference's decoded strings.

use glassbox_fixtures::*;
use glassbox_model::TextTokenizer;

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn reference() -> serde_json::Value {
    let path = fixtures().join("gemma3-270m/gemma3_270m_reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("the reference json"))
        .expect("valid json")
}

fn tokenizer() -> Option<TextTokenizer> {
    let gguf = gemma3_gguf()?;
    let t = std::time::Instant::now();
    let tok = TextTokenizer::from_gguf_file(&gguf).expect("Gemma's tokenizer builds");
    eprintln!("tokenizer built in {:.2} s", t.elapsed().as_secs_f64());
    Some(tok)
}

#[test]
fn gemma3_token_ids_and_decoding_match_hf() {
    let Some(tok) = tokenizer() else { return };
    let json = reference();
    let cases = json["tokenization"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode_prompt(text).unwrap();
        assert_eq!(got, want, "token ids differ for {text:?}");
        assert_eq!(
            tok.decode(&want).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decoding differs for {text:?}"
        );
    }
    let prompts = json["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 4);
    for p in prompts {
        let text = p["text"].as_str().unwrap();
        let want = ids(&p["input_ids"]);
        assert_eq!(want.len() as u64, p["n_tokens"].as_u64().unwrap());
        let got = tok.encode_prompt(text).unwrap();
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        assert_eq!(
            got,
            want,
            "token ids differ for prompt {:?}… (lengths {} vs {}, first difference at {first_diff:?})",
            &text[..text.len().min(40)],
            got.len(),
            want.len()
        );
    }
}

#[test]
fn gemma3_bos_policy_special_tokens_and_byte_fallback() {
    let Some(tok) = tokenizer() else { return };
    assert_eq!(tok.bos_token_id, Some(2));
    assert_eq!(tok.eos_token_id, Some(1));
    assert!(tok.add_bos_token);
    // `encode` is the text alone; `encode_prompt` puts BOS first, once
    let plain = tok.encode(" Mary").unwrap();
    assert_eq!(plain, [8712]);
    assert_eq!(tok.encode_prompt(" Mary").unwrap(), [2, 8712]);
    assert_eq!(tok.encode_prompt("<bos> Mary").unwrap(), [2, 8712]);
    // control (type 3) and user-defined (type 4) tokens match whole
    let turn = tok.encode("<start_of_turn>model\n<end_of_turn>").unwrap();
    assert_eq!(turn[0], 105);
    assert_eq!(*turn.last().unwrap(), 106);
    let unused = tok.token_to_id("<unused0>").unwrap();
    assert_eq!(tok.encode("x<unused0>y").unwrap()[1], unused);
    let bold = tok.encode("a<b>bold</b>").unwrap();
    assert!(bold.contains(&200) && bold.contains(&209), "{bold:?}");
    assert_eq!(tok.encode("\n\n").unwrap(), [108]);
    // a character outside the vocabulary falls back to its UTF-8 bytes and decodes back
    let rare = tok.encode("ꙮ").unwrap();
    let bytes: Vec<String> = rare.iter().map(|&i| tok.token_text(i)).collect();
    assert_eq!(rare.len(), 3, "{bytes:?}");
    let byte_ids: Vec<u32> = "ꙮ"
        .bytes()
        .map(|b| tok.token_to_id(&format!("<0x{b:02X}>")).unwrap())
        .collect();
    assert_eq!(rare, byte_ids);
    assert_eq!(tok.decode(&rare).unwrap(), "ꙮ");
    // plain text round-trips
    for text in [
        "When Mary and John went to the store,  John gave a drink to",
        "def f(x):\n\treturn x ** 2  # squared",
        "naïve café — 東京 🚀 ꙮ",
    ] {
        assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
    }
}
