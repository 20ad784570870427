//! Per-call options (`generate(prompt, options)`, the WebSocket `config` frame) and their
//! merge with the instance's [`StreamingConfig`] into the [`SamplingParams`] the sampler
//! uses.

use serde_json::{Map, Value};

use super::value::{self, read_bool, read_seed, read_stop, read_str, read_u32};
use super::{
    CONFIG_KEYS, GENERATION_KEYS, StreamingConfig, check_sampling, check_stop, read_max_tokens,
    read_repetition_penalty, read_temperature, read_top_p,
};
use crate::error::{Error, Result};

/// Roles a chat message may have.
pub const CHAT_ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// One chat message (role: one of [`CHAT_ROLES`]), handed to the model's chat template.
pub use crate::tokenizer::ChatMessage;

/// Options of one generation. `None` = the instance's [`StreamingConfig`] value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateOptions {
    /// Token budget (>= 1).
    pub max_tokens: Option<usize>,
    /// >= 0; 0 = greedy.
    pub temperature: Option<f32>,
    /// In (0, 1].
    pub top_p: Option<f32>,
    /// 0 = off.
    pub top_k: Option<u32>,
    /// > 0; 1 = off.
    pub repetition_penalty: Option<f32>,
    /// Fixed seed for reproducible sampling.
    pub seed: Option<u64>,
    /// Replaces the config's stop strings when given.
    pub stop: Option<Vec<String>>,
    /// Chat messages; when non-empty the chat template builds the prompt from them.
    pub messages: Vec<ChatMessage>,
    /// Wrap the prompt in the chat template as one user message.
    pub chat: bool,
}

/// Everything the sampler and the stop check need, fully resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// >= 0; 0 = greedy.
    pub temperature: f32,
    /// In (0, 1]; 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub top_k: u32,
    /// > 0; 1 = off.
    pub repetition_penalty: f32,
    /// The same seed gives the same text.
    pub seed: u64,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Generation stops when the text ends with one of these (not included in the output).
    pub stop: Vec<String>,
}

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens` tokens (golden tests).
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: 0,
            max_tokens,
            stop: Vec::new(),
        }
    }

    /// Temperature 0 (or top_k 1): the arg-max token every step.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// Keys [`GenerateOptions`] accepts, snake_case.
pub const GENERATE_KEYS: &[&str] =
    &["max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "messages", "chat"];

impl GenerateOptions {
    /// Only a token budget.
    pub fn with_max_tokens(max_tokens: usize) -> Self {
        GenerateOptions { max_tokens: Some(max_tokens), ..Default::default() }
    }

    /// Parses a JSON text; see [`GenerateOptions::from_json_value`].
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| Error::invalid(format!("options are not valid JSON: {e}")))?;
        Self::from_json_value(v)
    }

    /// Parses the second argument of `generate`: `null` (defaults), a number (max_tokens)
    /// or an object with snake_case or camelCase keys.
    pub fn from_json_value(v: Value) -> Result<Self> {
        let (opts, _) = Self::from_json_value_with_extra(&v, &[])?;
        Ok(opts)
    }

    /// Like [`GenerateOptions::from_json_value`], but keys listed in `extra` (snake_case,
    /// e.g. `["prompt", "options"]` for a protocol frame) are returned unparsed, keyed by
    /// their snake_case name, instead of being rejected.
    pub fn from_json_value_with_extra(v: &Value, extra: &[&str]) -> Result<(Self, Map<String, Value>)> {
        let mut opts = GenerateOptions::default();
        let mut rest = Map::new();
        let map = match v {
            Value::Null => return Ok((opts, rest)),
            Value::Number(_) => {
                opts.max_tokens = Some(read_max_tokens("max_tokens", v)?);
                return Ok((opts, rest));
            }
            Value::Object(m) => m,
            other => {
                return Err(Error::invalid(format!(
                    "generation options must be an object or a number (max_tokens), got {}",
                    value::describe(other)
                )));
            }
        };
        for (key, val) in value::keys("generation options", map)? {
            let canonical = key.canonical.as_str();
            if extra.contains(&canonical) {
                rest.insert(key.canonical.clone(), val.clone());
                continue;
            }
            if !GENERATE_KEYS.contains(&canonical) {
                if CONFIG_KEYS.contains(&canonical) && !GENERATION_KEYS.contains(&canonical) {
                    return Err(Error::invalid(format!(
                        "\"{}\" is an instance option, not a per-call one: set it in the constructor config",
                        key.written
                    )));
                }
                let mut known: Vec<&str> = GENERATE_KEYS.to_vec();
                known.extend_from_slice(extra);
                return Err(value::unknown_key("generation options", key.written, canonical, &known));
            }
            opts.set(canonical, key.written, val)?;
        }
        Ok((opts, rest))
    }

    fn set(&mut self, canonical: &str, k: &str, v: &Value) -> Result<()> {
        let opt = !v.is_null();
        match canonical {
            "max_tokens" => self.max_tokens = opt.then(|| read_max_tokens(k, v)).transpose()?,
            "temperature" => self.temperature = opt.then(|| read_temperature(k, v)).transpose()?,
            "top_p" => self.top_p = opt.then(|| read_top_p(k, v)).transpose()?,
            "top_k" => self.top_k = opt.then(|| read_u32(k, v, 0, u32::MAX)).transpose()?,
            "repetition_penalty" => self.repetition_penalty = opt.then(|| read_repetition_penalty(k, v)).transpose()?,
            "seed" => self.seed = opt.then(|| read_seed(k, v)).transpose()?,
            "stop" => self.stop = opt.then(|| read_stop(k, v)).transpose()?,
            "messages" => self.messages = if opt { read_messages(k, v)? } else { Vec::new() },
            "chat" => self.chat = opt && read_bool(k, v)?,
            other => {
                return Err(Error::internal(format!("generation option \"{other}\" has no reader")));
            }
        }
        Ok(())
    }

    /// Whether the prompt goes through the chat template.
    pub fn uses_chat_template(&self) -> bool {
        self.chat || !self.messages.is_empty()
    }

    /// Checks ranges (for options built in code; parsed ones are already checked).
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens == Some(0) {
            return Err(value::value_error("max_tokens", 0, "an integer >= 1"));
        }
        check_sampling(
            self.temperature.unwrap_or(0.0),
            self.top_p.unwrap_or(1.0),
            self.repetition_penalty.unwrap_or(1.0),
        )?;
        if let Some(stop) = &self.stop {
            check_stop("stop", stop)?;
        }
        for (i, m) in self.messages.iter().enumerate() {
            check_role(&format!("messages[{i}].role"), &m.role)?;
        }
        Ok(())
    }

    /// Merges with the instance config: per-call value, else the config's, else
    /// `default_max_tokens` / `fallback_seed` (the caller picks it, e.g. from the clock).
    pub fn resolve(&self, cfg: &StreamingConfig, default_max_tokens: usize, fallback_seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.unwrap_or(cfg.temperature),
            top_p: self.top_p.unwrap_or(cfg.top_p),
            top_k: self.top_k.unwrap_or(cfg.top_k),
            repetition_penalty: self.repetition_penalty.unwrap_or(cfg.repetition_penalty),
            seed: self.seed.or(cfg.seed).unwrap_or(fallback_seed),
            max_tokens: self.max_tokens.or(cfg.max_tokens).unwrap_or(default_max_tokens),
            stop: self.stop.clone().unwrap_or_else(|| cfg.stop.clone()),
        }
    }
}

fn check_role(key: &str, role: &str) -> Result<()> {
    if CHAT_ROLES.contains(&role) {
        Ok(())
    } else {
        Err(value::value_error(key, value::quote(role), &format!("one of {}", CHAT_ROLES.join(", "))))
    }
}

/// An array of `{role, content}` objects.
fn read_messages(key: &str, v: &Value) -> Result<Vec<ChatMessage>> {
    let Value::Array(items) = v else {
        return Err(value::type_error(key, "an array of {role, content} objects", v));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let Value::Object(m) = item else {
            return Err(value::type_error(&at, "an object {role, content}", item));
        };
        let (mut role, mut content) = (None, None);
        for (k, val) in m {
            let field = format!("{at}.{k}");
            match k.as_str() {
                "role" => {
                    let r = read_str(&field, val)?;
                    check_role(&field, r)?;
                    role = Some(r.to_string());
                }
                "content" => content = Some(read_str(&field, val)?.to_string()),
                _ => {
                    return Err(Error::invalid(format!(
                        "unknown key \"{k}\" in \"{at}\": a message has only \"role\" and \"content\""
                    )));
                }
            }
        }
        let missing = |f: &str| Error::invalid(format!("\"{at}\" has no \"{f}\""));
        out.push(ChatMessage {
            role: role.ok_or_else(|| missing("role"))?,
            content: content.ok_or_else(|| missing("content"))?,
        });
    }
    Ok(out)
}
