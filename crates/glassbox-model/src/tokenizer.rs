//! Tokenizers: `tokenizer.json` from HF directories, or rebuilt from GGUF metadata.
//! GGUF's `smollm` pre-tokenizer splits digits one by one before the GPT-2 regex and
//! adds no prefix space; a plain byte-level BPE would give different ids.

use crate::error::{ModelError, Result};
use crate::gguf::{meta_string, meta_u32};
use candle_core::quantized::gguf_file::Content;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

pub struct TextTokenizer {
    inner: Tokenizer,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Jinja chat template, when the checkpoint ships one
    pub chat_template: Option<String>,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| ModelError::bad_file(path, format!("cannot read tokenizer: {e}")))?;
        Ok(TextTokenizer {
            inner,
            bos_token_id: None,
            eos_token_id: None,
            chat_template: None,
        })
    }

    /// Builds the byte-level BPE a GGUF describes (`tokenizer.ggml.model = gpt2`).
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let model = meta_string(content, "tokenizer.ggml.model").unwrap_or_default();
        if model != "gpt2" {
            return Err(ModelError::Tokenizer(format!(
                "GGUF tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let v = content
                .metadata
                .get(key)
                .ok_or_else(|| ModelError::Tokenizer(format!("GGUF metadata has no `{key}`")))?;
            let arr = v
                .to_vec()
                .map_err(|_| ModelError::Tokenizer(format!("`{key}` is not an array")))?;
            arr.iter()
                .map(|x| {
                    x.to_string()
                        .cloned()
                        .map_err(|_| ModelError::Tokenizer(format!("`{key}` holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| ModelError::Tokenizer(format!("malformed merge `{m}`")))
            })
            .collect::<Result<_>>()?;
        let types: Vec<i64> = match content
            .metadata
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
        {
            Some(v) => v
                .iter()
                .map(|x| x.to_i32().map(i64::from).unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
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
                    "GGUF pre-tokenizer `{other}` is not supported yet (supported: smollm, gpt2)"
                )))
            }
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control tokens (type 3) such as <|im_start|> must match whole, never be split.
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3)
            .map(|(tok, _)| AddedToken::from(tok.clone(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| ModelError::Tokenizer(format!("cannot add special tokens: {e}")))?;
        Ok(TextTokenizer {
            inner,
            bos_token_id: meta_u32(content, "tokenizer.ggml.bos_token_id"),
            eos_token_id: meta_u32(content, "tokenizer.ggml.eos_token_id"),
            chat_template: meta_string(content, "tokenizer.chat_template"),
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot decode ids: {e}")))
    }

    /// The text of one token, as it appears in the output.
    pub fn token_text(&self, id: u32) -> String {
        self.decode(&[id]).unwrap_or_else(|_| format!("<{id}>"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
