//! The JSON text frames of the WebSocket protocol (DESIGN.md §5). Incoming frames are
//! parsed by hand over `serde_json::Value` with the config module's readers, so that every
//! error names the key at fault; outgoing ones are plain serde types tagged by `type`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::GenerateOptions;
use crate::config::value::{self, read_bool, read_str};
use crate::error::{Error, Result};

/// Largest text frame a session accepts, in bytes. Longer frames get an `invalid_request`
/// error that gives this limit; the connection stays open.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;

/// The `options` object of a `config` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Send a `token` frame per token (else only the `completion`). Default true.
    pub stream: bool,
    /// `generated_text` starts with the prompt. Default false.
    pub echo_prompt: bool,
    /// The `completion` carries `timing`. Default true.
    pub include_timing: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions { stream: true, echo_prompt: false, include_timing: true }
    }
}

/// Keys of the `options` object.
const STREAM_KEYS: &[&str] = &["stream", "echo_prompt", "include_timing"];

/// A `config` frame: one generation request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The prompt text (may be empty when `options.messages` holds a chat).
    pub prompt: String,
    /// Sampling and budget; `None` fields fall back to the engine's config.
    pub options: GenerateOptions,
    pub stream: StreamOptions,
}

/// A `control` frame's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Stop,
    Pause,
    Resume,
}

/// A parsed peer -> engine frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    Config(Box<Request>),
    Control(Control),
}

/// Defaults for the `config` frames of one connection (the `config` argument of
/// `streamWebsocket`): any key a `config` frame takes except `type` and `prompt`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestDefaults {
    options: GenerateOptions,
    stream: Option<Map<String, Value>>,
}

impl RequestDefaults {
    /// From `null` or an object with `config` frame keys (snake_case or camelCase).
    pub fn from_json_value(v: &Value) -> Result<Self> {
        if v.is_null() {
            return Ok(Self::default());
        }
        let (options, rest) = GenerateOptions::from_json_value_with_extra(v, &["options"])?;
        let stream = match rest.get("options") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => {
                read_stream(m, StreamOptions::default())?;
                Some(m.clone())
            }
            Some(other) => return Err(value::type_error("options", "an object", other)),
        };
        Ok(RequestDefaults { options, stream })
    }
}

impl Incoming {
    /// Parses one text frame under the connection's `defaults`.
    pub fn parse(text: &str, defaults: &RequestDefaults) -> Result<Incoming> {
        if text.len() > MAX_FRAME_BYTES {
            return Err(Error::invalid(format!(
                "the frame has {} bytes; the limit is {MAX_FRAME_BYTES} bytes",
                text.len()
            )));
        }
        let v: Value =
            serde_json::from_str(text).map_err(|e| Error::invalid(format!("the frame is not valid JSON: {e}")))?;
        let Value::Object(map) = &v else {
            return Err(Error::invalid(format!(
                "a frame must be a JSON object with a \"type\", got {}",
                value::describe(&v)
            )));
        };
        let kind = match map.get("type") {
            None => return Err(Error::invalid("the frame has no \"type\" (expected \"config\" or \"control\")")),
            Some(t) => read_str("type", t)?,
        };
        match kind {
            "config" => parse_config(&v, defaults).map(|r| Incoming::Config(Box::new(r))),
            "control" => parse_control(map).map(Incoming::Control),
            other => Err(Error::invalid(format!(
                "unknown frame type {}: expected \"config\" or \"control\"",
                value::quote(other)
            ))),
        }
    }
}

fn parse_config(v: &Value, defaults: &RequestDefaults) -> Result<Request> {
    let (opts, rest) = GenerateOptions::from_json_value_with_extra(v, &["type", "prompt", "options"])?;
    let prompt = match rest.get("prompt") {
        None | Some(Value::Null) => None,
        Some(p) => Some(read_str("prompt", p)?.to_string()),
    };
    let d = &defaults.options;
    let options = GenerateOptions {
        max_tokens: opts.max_tokens.or(d.max_tokens),
        temperature: opts.temperature.or(d.temperature),
        top_p: opts.top_p.or(d.top_p),
        top_k: opts.top_k.or(d.top_k),
        repetition_penalty: opts.repetition_penalty.or(d.repetition_penalty),
        seed: opts.seed.or(d.seed),
        stop: opts.stop.or_else(|| d.stop.clone()),
        messages: if opts.messages.is_empty() { d.messages.clone() } else { opts.messages },
        chat: opts.chat || d.chat,
    };
    let prompt = match prompt {
        Some(p) => p,
        None if !options.messages.is_empty() => String::new(),
        None => {
            return Err(Error::invalid(
                "the config frame has no \"prompt\" (a string; or give \"messages\" for a chat)",
            ));
        }
    };
    if prompt.is_empty() && options.messages.is_empty() {
        return Err(Error::invalid("\"prompt\" is empty"));
    }
    let mut stream = StreamOptions::default();
    if let Some(m) = &defaults.stream {
        stream = read_stream(m, stream)?;
    }
    match rest.get("options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => stream = read_stream(m, stream)?,
        Some(other) => return Err(value::type_error("options", "an object", other)),
    }
    Ok(Request { prompt, options, stream })
}

/// The `options` object over `base`.
fn read_stream(m: &Map<String, Value>, base: StreamOptions) -> Result<StreamOptions> {
    let mut s = base;
    for (key, val) in value::keys("options", m)? {
        let field = format!("options.{}", key.written);
        if val.is_null() {
            continue;
        }
        match key.canonical.as_str() {
            "stream" => s.stream = read_bool(&field, val)?,
            "echo_prompt" => s.echo_prompt = read_bool(&field, val)?,
            "include_timing" => s.include_timing = read_bool(&field, val)?,
            other => return Err(value::unknown_key("options", key.written, other, STREAM_KEYS)),
        }
    }
    Ok(s)
}

fn parse_control(map: &Map<String, Value>) -> Result<Control> {
    for k in map.keys() {
        if k != "type" && k != "action" {
            return Err(Error::invalid(format!(
                "unknown key {} in a control frame: it has only \"type\" and \"action\"",
                value::quote(k)
            )));
        }
    }
    let action = match map.get("action") {
        None => return Err(Error::invalid("the control frame has no \"action\" (\"stop\", \"pause\" or \"resume\")")),
        Some(a) => read_str("action", a)?,
    };
    match action {
        "stop" => Ok(Control::Stop),
        "pause" => Ok(Control::Pause),
        "resume" => Ok(Control::Resume),
        other => Err(value::value_error("action", value::quote(other), "\"stop\", \"pause\" or \"resume\"")),
    }
}

/// What `init` says about the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// The GPU weight format in force (fp32, fp16, int8, int4).
    pub quantization: String,
    /// Tokens the KV cache holds (prompt + generated).
    pub context_length: usize,
}

/// Token counts of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// Measured times of one request (over all its segments when it was paused).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// From the start of the first segment to the first token.
    pub first_token_latency_ms: f64,
    /// GPU generation time, summed over segments (time spent paused or waiting for other
    /// requests is not included).
    pub generation_time_ms: f64,
    /// Tokens after the first per second of decode time.
    pub tokens_per_second: f64,
    /// Engine calls the request took: 1 plus one per resume or turn given to another request.
    pub segments: usize,
    /// The most requests it was decoded together with, itself included (continuous batching).
    #[serde(default)]
    pub max_batch_size: usize,
}

/// An engine -> peer frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outgoing {
    /// The request was accepted; the model that serves it.
    Init { model_info: ModelInfo },
    /// Progress of an operation before generation can start (`loading`), or a pause that
    /// took effect (`paused`).
    Status {
        operation: String,
        /// 0..=1, `None` when unknown.
        progress: Option<f64>,
        message: String,
    },
    /// One generated token; a last frame with `token_id: null` and `finished: true` carries
    /// text held back until the end (possibly empty) and closes the stream.
    Token { token: String, token_id: Option<u32>, generated_text: String, finished: bool },
    /// The end of a request.
    Completion {
        generated_text: String,
        usage: Usage,
        /// stop, length, cancelled or timeout.
        finish_reason: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        timing: Option<Timing>,
    },
    /// A failed frame or request; `error` is the code of [`Error::code`].
    Error { error: String, message: String, recoverable: bool },
}

impl Outgoing {
    /// The `error` frame for `e`.
    pub fn error(e: &Error) -> Outgoing {
        Outgoing::Error { error: e.code().to_string(), message: e.to_string(), recoverable: e.recoverable() }
    }

    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        // Serializing these plain structs cannot fail; keep a valid frame if it ever did.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","error":"internal_error","message":"{e}","recoverable":false}}"#)
        })
    }
}
