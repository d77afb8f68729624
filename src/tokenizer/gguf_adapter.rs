//! Reading [`TokenizerData`] from a GGUF file's metadata (the only place the tokenizer touches
//! `crate::gguf`).

use super::{SpecialIds, Tokenizer, TokenizerData, TokenizerError};
use crate::gguf::{GgufFile, Value};

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

fn string(g: &GgufFile, key: &'static str) -> Result<Option<String>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_string()))
            .ok_or(TokenizerError::WrongType {
                key,
                expected: "string",
            }),
    }
}

fn boolean(g: &GgufFile, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or(TokenizerError::WrongType {
            key,
            expected: "bool",
        }),
    }
}

/// A token id key: absent, or an integer; negative values (some converters write -1) mean absent.
fn id(g: &GgufFile, key: &'static str) -> Result<Option<u32>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(i) if i < 0 => Ok(None),
            Some(_) => Ok(v.as_u32()),
            None => Err(TokenizerError::WrongType {
                key,
                expected: "integer",
            }),
        },
    }
}

fn strings(g: &GgufFile, key: &'static str) -> Result<Option<Vec<String>>, TokenizerError> {
    let Some(v) = g.get(key) else { return Ok(None) };
    let wrong = || TokenizerError::WrongType {
        key,
        expected: "array of strings",
    };
    let arr = v.as_array().ok_or_else(wrong)?;
    arr.iter()
        .map(|e| e.as_str().map(str::to_string).ok_or_else(wrong))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn ints(g: &GgufFile, key: &'static str) -> Result<Option<Vec<i32>>, TokenizerError> {
    let Some(v) = g.get(key) else { return Ok(None) };
    let wrong = || TokenizerError::WrongType {
        key,
        expected: "array of i32",
    };
    let arr = v.as_array().ok_or_else(wrong)?;
    arr.iter()
        .map(|e| match e {
            Value::I32(x) => Ok(*x),
            other => other
                .as_i64()
                .and_then(|x| i32::try_from(x).ok())
                .ok_or_else(wrong),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl TokenizerData {
    /// Read the tokenizer metadata of a GGUF file. Fails with [`TokenizerError::MissingKey`] if
    /// `tokenizer.ggml.model`, `.tokens` or (for `gpt2`) `.merges` is absent,
    /// [`TokenizerError::UnsupportedModel`] for a model other than `gpt2`.
    pub fn from_gguf(g: &GgufFile) -> Result<TokenizerData, TokenizerError> {
        let model = string(g, MODEL)?.ok_or(TokenizerError::MissingKey(MODEL))?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model));
        }
        let tokens = strings(g, TOKENS)?.ok_or(TokenizerError::MissingKey(TOKENS))?;
        let merges = strings(g, MERGES)?.ok_or(TokenizerError::MissingKey(MERGES))?;
        let special = SpecialIds {
            bos: id(g, "tokenizer.ggml.bos_token_id")?,
            eos: id(g, "tokenizer.ggml.eos_token_id")?,
            eot: id(g, "tokenizer.ggml.eot_token_id")?,
            eom: id(g, "tokenizer.ggml.eom_token_id")?,
            unk: id(g, "tokenizer.ggml.unknown_token_id")?,
            sep: id(g, "tokenizer.ggml.seperator_token_id")?, // sic, llama.cpp's spelling
            pad: id(g, "tokenizer.ggml.padding_token_id")?,
            mask: id(g, "tokenizer.ggml.mask_token_id")?,
            // The deprecated prefix/suffix/middle keys win over the new ones, as in llama.cpp.
            fim_pre: id(g, "tokenizer.ggml.prefix_token_id")?
                .or(id(g, "tokenizer.ggml.fim_pre_token_id")?),
            fim_suf: id(g, "tokenizer.ggml.suffix_token_id")?
                .or(id(g, "tokenizer.ggml.fim_suf_token_id")?),
            fim_mid: id(g, "tokenizer.ggml.middle_token_id")?
                .or(id(g, "tokenizer.ggml.fim_mid_token_id")?),
            fim_pad: id(g, "tokenizer.ggml.fim_pad_token_id")?,
            fim_rep: id(g, "tokenizer.ggml.fim_rep_token_id")?,
            fim_sep: id(g, "tokenizer.ggml.fim_sep_token_id")?,
        };
        Ok(TokenizerData {
            model,
            pre: string(g, PRE)?.unwrap_or_default(),
            tokens,
            token_types: ints(g, TOKEN_TYPE)?.unwrap_or_default(),
            merges,
            special,
            add_bos: boolean(g, ADD_BOS)?,
            add_eos: boolean(g, ADD_EOS)?,
            add_space_prefix: boolean(g, ADD_PREFIX)?,
            chat_template: string(g, CHAT_TEMPLATE)?,
            tiktoken: string(g, "general.architecture")?.as_deref() == Some("gpt-oss"),
        })
    }
}

impl Tokenizer {
    /// Build the tokenizer of a GGUF model (see [`TokenizerData::from_gguf`] and [`Tokenizer::new`]).
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::new(TokenizerData::from_gguf(g)?)
    }
}
