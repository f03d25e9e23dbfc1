//! Tokenizers: `tokenizer.json` from HF directories, or rebuilt from GGUF metadata.
//!
//! Two GGUF kinds (`tokenizer.ggml.model`) are rebuilt, each the way HF transformers
//! rebuilds it from the same file:
//! - `gpt2`: byte-level BPE from the stored merges. The `smollm` pre-tokenizer splits
//!   digits one by one before the GPT-2 regex and adds no prefix space; a plain
//!   byte-level BPE would give different ids.
//! - `llama`: SentencePiece BPE with byte fallback (`<0xXX>` tokens), spaces written
//!   `▁`, as Gemma 3 ships. Without stored merges they are derived from the vocabulary,
//!   as HF's converters do: every split of a normal token into two tokens is a merge,
//!   ranked by the merged token's score (SentencePiece merges the best-scoring pair
//!   first), ties by position.
//!
//! In both, control tokens (type 3: `<bos>`, `<start_of_turn>`, …) match whole; so do
//! the `llama` kind's user-defined ones (type 4: Gemma's runs of newlines, spaces and
//! tabs, `<b>` and other HTML tags), as llama.cpp matches them.

use crate::error::{ModelError, Result};
use crate::gguf::{meta_string, meta_u32};
use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// A checkpoint's tokenizer (HF `tokenizers`) with the BOS rule and chat template that go
/// with it.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// BOS: the model config's (HF directories) or `tokenizer.ggml.bos_token_id`
    pub bos_token_id: Option<u32>,
    /// EOS: the model config's (HF directories) or `tokenizer.ggml.eos_token_id`
    pub eos_token_id: Option<u32>,
    /// Whether a whole prompt starts with BOS ([`encode_prompt`](Self::encode_prompt)),
    /// as HF's `tokenizer(text)` does: GGUF `tokenizer.ggml.add_bos_token` (Gemma: true;
    /// SmolLM2: false); in a HF directory `tokenizer_config.json`'s `add_bos_token`, else
    /// whether `tokenizer.json`'s post-processor puts BOS first (Llama 3). The one rule
    /// every command, the server and the library follow.
    pub add_bos_token: bool,
    /// Jinja chat template, when the checkpoint ships one
    pub chat_template: Option<String>,
}

impl TextTokenizer {
    /// Reads a `tokenizer.json`, with no BOS/EOS ids, no BOS rule and no chat template:
    /// [`load_model`](crate::load_model) fills those in from the directory's configs.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| ModelError::bad_file(path, format!("cannot read tokenizer: {e}")))?;
        // JSON syntax first: tokenizers' own reader panics (`expect("Helper")`) on a
        // syntax error inside the decoder; from a parsed value it can only refuse.
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ModelError::bad_file(path, format!("tokenizer is not JSON: {e}")))?;
        let inner: Tokenizer = serde_json::from_value(value)
            .map_err(|e| ModelError::bad_file(path, format!("cannot read tokenizer: {e}")))?;
        Ok(TextTokenizer {
            inner,
            bos_token_id: None,
            eos_token_id: None,
            add_bos_token: false,
            chat_template: None,
        })
    }

    /// The tokenizer a GGUF file describes, read from its header alone (no weights).
    pub fn from_gguf_file(path: &Path) -> Result<Self> {
        let (content, _) = crate::gguf::read_gguf_header(path)?;
        Self::from_gguf(&content)
    }

    /// Builds the tokenizer a GGUF describes (`tokenizer.ggml.model` = `gpt2` or `llama`).
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let model = meta_string(content, "tokenizer.ggml.model").unwrap_or_default();
        // `add_bos_token` absent: llama.cpp's defaults (BOS for SentencePiece, none for BPE)
        let (inner, bos_by_default) = match model.as_str() {
            "gpt2" => (byte_level_bpe(content)?, false),
            "llama" => (sentencepiece_bpe(content)?, true),
            other => {
                return Err(ModelError::Tokenizer(format!(
                    "GGUF tokenizer model `{other}` is not supported (supported: `gpt2`, byte-level BPE; `llama`, SentencePiece BPE)"
                )))
            }
        };
        Ok(TextTokenizer {
            inner,
            bos_token_id: meta_u32(content, "tokenizer.ggml.bos_token_id"),
            eos_token_id: meta_u32(content, "tokenizer.ggml.eos_token_id"),
            add_bos_token: meta_bool(content, "tokenizer.ggml.add_bos_token")
                .unwrap_or(bos_by_default),
            chat_template: meta_string(content, "tokenizer.chat_template"),
        })
    }

    /// Whether `tokenizer.json`'s post-processor (applied by HF's `tokenizer(text)`)
    /// starts a sequence with `bos`: how a HF directory without `add_bos_token` in its
    /// `tokenizer_config.json` asks for BOS (Llama 3's `TemplateProcessing`).
    pub fn post_processor_adds(&self, bos: u32) -> bool {
        self.inner
            .encode("a", true)
            .map(|e| e.get_ids().first() == Some(&bos))
            .unwrap_or(false)
    }

    /// The ids of exactly `text`: nothing is added (no BOS), so single tokens
    /// (`" Mary"`) and streams the caller frames itself (packed windows) stay as they
    /// are. A prompt the model runs on its own goes through
    /// [`encode_prompt`](Self::encode_prompt).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The ids the model sees for a whole prompt: [`encode`](Self::encode), with BOS
    /// first when the tokenizer asks for it ([`add_bos_token`](Self::add_bos_token);
    /// Gemma does, SmolLM2's GGUF does not). Equal to HF's `tokenizer(text)`.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.with_bos(self.encode(text)?))
    }

    /// `ids` with BOS in front when the tokenizer asks for it, unless they already start
    /// with it (a rendered chat template that writes `<bos>` itself).
    pub fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if let (true, Some(bos)) = (self.add_bos_token, self.bos_token_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        ids
    }

    /// How a prompt's ids begin, for every place that echoes a prompt: `"added"` (the
    /// tokenizer's rule put BOS first), `"in prompt"` (the text wrote it) or `"none"`.
    pub fn bos_status(&self, ids: &[u32]) -> &'static str {
        match (self.bos_token_id, ids.first()) {
            (Some(b), Some(&first)) if b == first && self.add_bos_token => "added",
            (Some(b), Some(&first)) if b == first => "in prompt",
            _ => "none",
        }
    }

    /// `"15 tokens, BOS added"`: the echo of a prompt's length and how it begins.
    pub fn prompt_summary(&self, ids: &[u32]) -> String {
        let bos = match self.bos_status(ids) {
            "added" => "BOS added".to_string(),
            "in prompt" => "BOS written in the prompt".to_string(),
            _ => match self.bos_token_id {
                Some(b) => format!(
                    "no BOS (this tokenizer adds none; start the prompt with {:?} for one)",
                    self.token_text(b)
                ),
                None => "no BOS (the model has none)".to_string(),
            },
        };
        let s = if ids.len() == 1 { "" } else { "s" };
        format!("{} token{s}, {bos}", ids.len())
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot decode ids: {e}")))
    }

    /// The text of one token, as it appears in the output.
    pub fn token_text(&self, id: u32) -> String {
        self.decode(&[id]).unwrap_or_else(|_| format!("<{id}>"))
    }

    /// The text of each token of a sequence, for display: a character whose bytes span
    /// several byte-level tokens (emoji, CJK) is shown whole at the token that completes
    /// it, and the tokens before it in that character show as empty, instead of each
    /// decoding alone to "�".
    pub fn token_texts(&self, ids: &[u32]) -> Vec<String> {
        let mut out = Vec::with_capacity(ids.len());
        let mut start = 0;
        for i in 0..ids.len() {
            let text = self
                .decode(&ids[start..=i])
                .unwrap_or_else(|_| format!("<{}>", ids[i]));
            // a UTF-8 character is at most 4 bytes: give up merging past that
            if text.ends_with('\u{FFFD}') && i - start < 3 && i + 1 < ids.len() {
                out.push(String::new());
                continue;
            }
            if i > start && text.ends_with('\u{FFFD}') {
                // never completed: show each token alone after all
                for (k, id) in ids[start..=i].iter().enumerate() {
                    let t = self.token_text(*id);
                    match out.get_mut(start + k) {
                        Some(slot) => *slot = t,
                        None => out.push(t),
                    }
                }
            } else {
                out.push(text);
            }
            start = i + 1;
        }
        out
    }

    /// The id of a token of the vocabulary, written as the vocabulary writes it
    /// (`"<|im_end|>"`, `"Ġthe"`), not as text.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The tokenizer's vocabulary size, added tokens included (it may differ from the
    /// model's `d_vocab`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The tokens that end a generation: EOS, and the chat turn's end where the
    /// vocabulary has one (`<|im_end|>`, Gemma's `<end_of_turn>`, Llama 3's `<|eot_id|>`).
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut stop: Vec<u32> = self.eos_token_id.into_iter().collect();
        for end in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>"] {
            if let Some(id) = self.token_to_id(end) {
                if !stop.contains(&id) {
                    stop.push(id);
                }
            }
        }
        stop
    }
}

fn meta_bool(c: &Content, key: &str) -> Option<bool> {
    c.metadata.get(key).and_then(|v| v.to_bool().ok())
}

fn meta_array<'a>(content: &'a Content, key: &str) -> Result<&'a Vec<Value>> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| ModelError::Tokenizer(format!("GGUF metadata has no `{key}`")))?
        .to_vec()
        .map_err(|_| ModelError::Tokenizer(format!("GGUF `{key}` is not an array")))
}

fn meta_strings(content: &Content, key: &str) -> Result<Vec<String>> {
    meta_array(content, key)?
        .iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|_| ModelError::Tokenizer(format!("GGUF `{key}` holds a non-string")))
        })
        .collect()
}

/// `tokenizer.ggml.token_type`, or every token normal when the file has none.
fn token_types(content: &Content, n: usize) -> Result<Vec<i32>> {
    let key = "tokenizer.ggml.token_type";
    let Some(v) = content.metadata.get(key) else {
        return Ok(vec![NORMAL; n]);
    };
    let types: Vec<i32> = v
        .to_vec()
        .map_err(|_| ModelError::Tokenizer(format!("GGUF `{key}` is not an array")))?
        .iter()
        .map(|x| x.to_i32().unwrap_or(NORMAL))
        .collect();
    if types.len() != n {
        return Err(ModelError::Tokenizer(format!(
            "GGUF `{key}` has {} entries for {n} tokens",
            types.len()
        )));
    }
    Ok(types)
}

fn parse_merges(merges: Vec<String>) -> Result<Vec<(String, String)>> {
    merges
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| ModelError::Tokenizer(format!("malformed GGUF merge `{m}`")))
        })
        .collect()
}

fn vocab_of(tokens: &[String]) -> tokenizers::models::bpe::Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// Tokens of the given types as added tokens that match whole on the raw text.
fn whole_tokens(tokens: &[String], types: &[i32], kind: i32, special: bool) -> Vec<AddedToken> {
    tokens
        .iter()
        .zip(types)
        .filter(|(_, &t)| t == kind)
        .map(|(tok, _)| AddedToken::from(tok.clone(), special).normalized(false))
        .collect()
}

/// The byte-level BPE of a `gpt2` GGUF (SmolLM2's).
fn byte_level_bpe(content: &Content) -> Result<Tokenizer> {
    let tokens = meta_strings(content, "tokenizer.ggml.tokens")?;
    let merges = parse_merges(meta_strings(content, "tokenizer.ggml.merges")?)?;
    let types = token_types(content, tokens.len())?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(&tokens), merges)
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("cannot build BPE from GGUF: {e}")))?;
    let mut inner = Tokenizer::new(bpe);
    let pre = meta_string(content, "tokenizer.ggml.pre").unwrap_or_default();
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tok: PreTokenizerWrapper = match pre.as_str() {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "gpt2" | "default" | "" => byte_level.into(),
        other => {
            return Err(ModelError::Tokenizer(format!(
                "GGUF pre-tokenizer `{other}` is not supported yet for `gpt2` tokenizers (supported: smollm, gpt2)"
            )))
        }
    };
    inner.with_pre_tokenizer(Some(pre_tok));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    // Control tokens (type 3) such as <|im_start|> must match whole, never be split.
    inner
        .add_special_tokens(whole_tokens(&tokens, &types, CONTROL, true))
        .map_err(|e| ModelError::Tokenizer(format!("cannot add special tokens: {e}")))?;
    Ok(inner)
}

/// The SentencePiece BPE of a `llama` GGUF with Gemma's conventions: spaces become `▁`
/// (no prefix space, no pre-tokenizer), unknown characters fall back to `<0xXX>` bytes,
/// and decoding undoes both. Files that want a prefix space (Llama 2, Mistral v0.1)
/// are refused until a reference checks them.
fn sentencepiece_bpe(content: &Content) -> Result<Tokenizer> {
    let pre = meta_string(content, "tokenizer.ggml.pre").unwrap_or_default();
    if !matches!(pre.as_str(), "default" | "") {
        return Err(ModelError::Tokenizer(format!(
            "GGUF pre-tokenizer `{pre}` is not supported yet for `llama` (SentencePiece) tokenizers (supported: default)"
        )));
    }
    // llama.cpp's default for SentencePiece files is a prefix space.
    if meta_bool(content, "tokenizer.ggml.add_space_prefix").unwrap_or(true) {
        return Err(ModelError::Tokenizer(
            "GGUF SentencePiece tokenizers that add a prefix space (`tokenizer.ggml.add_space_prefix` true or absent: Llama 2, Mistral v0.1) are not supported yet; Gemma's (no prefix space) is".into(),
        ));
    }
    let tokens = meta_strings(content, "tokenizer.ggml.tokens")?;
    let types = token_types(content, tokens.len())?;
    let merges = match content.metadata.get("tokenizer.ggml.merges") {
        Some(_) => parse_merges(meta_strings(content, "tokenizer.ggml.merges")?)?,
        None => {
            let scores: Vec<f32> = meta_array(content, "tokenizer.ggml.scores")?
                .iter()
                .map(|x| x.to_f32().unwrap_or(f32::NEG_INFINITY))
                .collect();
            if scores.len() != tokens.len() {
                return Err(ModelError::Tokenizer(format!(
                    "GGUF `tokenizer.ggml.scores` has {} entries for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            merges_from_scores(&tokens, &scores, &types)
        }
    };
    let unk = meta_u32(content, "tokenizer.ggml.unknown_token_id")
        .and_then(|i| tokens.get(i as usize).cloned());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab_of(&tokens), merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("cannot build BPE from GGUF: {e}")))?;
    let mut inner = Tokenizer::new(bpe);
    let space = |from: &str, to: &str| {
        Replace::new(from, to)
            .map_err(|e| ModelError::Tokenizer(format!("cannot build the `▁` replace: {e}")))
    };
    inner
        .with_normalizer(Some(space(" ", "\u{2581}")?))
        .map_err(|e| ModelError::Tokenizer(format!("cannot set the normalizer: {e}")))?;
    inner.with_decoder(Some(DecoderSequence::new(vec![
        space("\u{2581}", " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    inner
        .add_special_tokens(whole_tokens(&tokens, &types, CONTROL, true))
        .map_err(|e| ModelError::Tokenizer(format!("cannot add special tokens: {e}")))?;
    inner
        .add_tokens(whole_tokens(&tokens, &types, USER_DEFINED, false))
        .map_err(|e| ModelError::Tokenizer(format!("cannot add user-defined tokens: {e}")))?;
    Ok(inner)
}

/// The merges a SentencePiece BPE vocabulary implies: every split of a normal token
/// into two tokens of the vocabulary, ranked by the merged token's score (higher
/// first; ties, as in Gemma's runs of equal placeholder scores, by position), and for
/// one merged token the splits with the better-scoring left, then right, piece first
/// (HF's converters order them so).
pub fn merges_from_scores(
    tokens: &[String],
    scores: &[f32],
    types: &[i32],
) -> Vec<(String, String)> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // (merged id, left id, right id)
    let mut merges: Vec<(usize, usize, usize)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if types.get(id).copied().unwrap_or(NORMAL) != NORMAL {
            continue;
        }
        for (cut, _) in token.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (index.get(&token[..cut]), index.get(&token[cut..])) {
                merges.push((id, l, r));
            }
        }
    }
    merges.sort_by(|a, b| {
        scores[b.0]
            .total_cmp(&scores[a.0])
            .then(a.0.cmp(&b.0))
            .then(scores[b.1].total_cmp(&scores[a.1]))
            .then(scores[b.2].total_cmp(&scores[a.2]))
    });
    merges
        .into_iter()
        .map(|(_, l, r)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_merged_tokens_scores_and_skip_non_normal_tokens() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc", "ca", "cab"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // "bc" scores above "ab"; "ca" (user-defined) and "cab" (control) never merge
        let scores = [0.0, -1.0, -2.0, -4.0, -3.0, -5.0, 0.0, 0.0];
        let types = [1, 1, 1, 1, 1, 1, USER_DEFINED, CONTROL];
        let m = merges_from_scores(&tokens, &scores, &types);
        let pairs: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        // for "abc", the split with the better-scoring left piece ("a", -0) first
        assert_eq!(
            pairs,
            [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")],
            "{pairs:?}"
        );
    }
}
