//! A GGUF v3 writer (metadata of every value type, tensors in any supported format,
//! aligned), and [`tiny_llama_gguf`]: a complete random llama model with a small
//! byte-level BPE tokenizer, for tests and `wsi synth`.

use crate::error::{Error, Result};
use crate::model::gguf::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufFile, GgufType, GgufValue};
use crate::model::{Arch, HostFormat};
use crate::quant::ggml;

struct PendingTensor {
    name: String,
    /// GGUF order (`ne[0]` contiguous).
    ne: Vec<u64>,
    ggml_type: u32,
    bytes: Vec<u8>,
}

/// Builds a GGUF v3 file in memory.
pub struct GgufWriter {
    alignment: usize,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

/// An array of strings.
pub fn string_array<S: Into<String>>(items: impl IntoIterator<Item = S>) -> GgufValue {
    GgufValue::Array(GgufType::String, items.into_iter().map(|s| GgufValue::String(s.into())).collect())
}

/// An array of f32.
pub fn f32_array(items: impl IntoIterator<Item = f32>) -> GgufValue {
    GgufValue::Array(GgufType::F32, items.into_iter().map(GgufValue::F32).collect())
}

/// An array of i32.
pub fn i32_array(items: impl IntoIterator<Item = i32>) -> GgufValue {
    GgufValue::Array(GgufType::I32, items.into_iter().map(GgufValue::I32).collect())
}

fn check_value(key: &str, v: &GgufValue) -> Result<()> {
    if let GgufValue::Array(t, items) = v {
        for item in items {
            if item.ty() != *t {
                return Err(Error::model(format!("GGUF writer: array {key} declared {t:?} holds a {:?}", item.ty())));
            }
            check_value(key, item)?;
        }
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(t, items) => {
            out.extend_from_slice(&(*t as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn pad_to(out: &mut Vec<u8>, alignment: usize) {
    let rem = out.len() % alignment;
    if rem != 0 {
        out.resize(out.len() + alignment - rem, 0);
    }
}

impl GgufWriter {
    /// An empty file with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter { alignment: DEFAULT_ALIGNMENT, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// A writer holding everything of a parsed file (to edit and write it again).
    /// `bytes` is the file `file` was parsed from.
    pub fn from_parsed(file: &GgufFile, bytes: &[u8]) -> Result<Self> {
        let mut w = GgufWriter {
            alignment: file.alignment,
            metadata: file.metadata.clone(),
            tensors: Vec::with_capacity(file.tensors.len()),
        };
        for t in &file.tensors {
            let format = t.format.ok_or_else(|| {
                Error::model(format!(
                    "GGUF writer: tensor {} has GGML type {}, which this crate does not read",
                    t.name,
                    ggml::ggml_type_name(t.ggml_type)
                ))
            })?;
            let data = bytes
                .get(t.range.clone())
                .ok_or_else(|| Error::model(format!("GGUF writer: tensor {} lies outside the bytes", t.name)))?;
            w.add_tensor(&t.name, &t.shape, format, data.to_vec())?;
        }
        Ok(w)
    }

    /// Remove a metadata key; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<GgufValue> {
        let i = self.metadata.iter().position(|(k, _)| k == key)?;
        Some(self.metadata.remove(i).1)
    }

    /// Remove a tensor; returns whether it was there.
    pub fn remove_tensor(&mut self, name: &str) -> bool {
        let before = self.tensors.len();
        self.tensors.retain(|t| t.name != name);
        self.tensors.len() != before
    }

    /// Use another alignment (a power of two); writes `general.alignment`.
    pub fn set_alignment(&mut self, alignment: usize) -> Result<&mut Self> {
        if !alignment.is_power_of_two() {
            return Err(Error::model(format!("GGUF writer: alignment {alignment} is not a power of two")));
        }
        self.alignment = alignment;
        self.set("general.alignment", GgufValue::U32(alignment as u32))
    }

    /// Set (or replace) a metadata value. Arrays must hold elements of their declared type.
    pub fn set(&mut self, key: &str, value: GgufValue) -> Result<&mut Self> {
        check_value(key, &value)?;
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        Ok(self)
    }

    /// Add a tensor already encoded in `format`. `shape` is in PyTorch order.
    pub fn add_tensor(&mut self, name: &str, shape: &[usize], format: HostFormat, bytes: Vec<u8>) -> Result<&mut Self> {
        if shape.is_empty() || shape.len() > 4 {
            return Err(Error::model(format!("GGUF writer: tensor {name} has {} dimensions (1 to 4)", shape.len())));
        }
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::model(format!("GGUF writer: tensor {name} is too large")))?;
        let row = shape.last().copied().unwrap_or(1);
        if !row.is_multiple_of(ggml::block_elems(format)) {
            return Err(Error::model(format!(
                "GGUF writer: tensor {name} rows of {row} are not whole {format:?} blocks"
            )));
        }
        let expected = ggml::tensor_bytes(format, numel)?;
        if bytes.len() != expected {
            return Err(Error::model(format!(
                "GGUF writer: tensor {name} {shape:?} in {format:?} needs {expected} bytes, got {}",
                bytes.len()
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::model(format!("GGUF writer: tensor {name} added twice")));
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            ne: shape.iter().rev().map(|&d| d as u64).collect(),
            ggml_type: ggml::ggml_type_id(format),
            bytes,
        });
        Ok(self)
    }

    /// Add f32 data encoded in `format` (see `ggml::quantize` for the formats it can
    /// encode). data: `shape` elements, row-major.
    pub fn add_f32(&mut self, name: &str, shape: &[usize], format: HostFormat, data: &[f32]) -> Result<&mut Self> {
        // Blocks are independent: big tensors (benchmark shapes) quantise in parallel chunks
        // of whole 256-element super-blocks, which gives the same bytes as one pass.
        let parts = par_chunks(data.len(), 256, |r| ggml::quantize(format, &data[r]));
        let mut bytes = Vec::new();
        for part in parts {
            bytes.extend(part.map_err(|e| Error::model(format!("GGUF writer: tensor {name}: {e}")))?);
        }
        self.add_tensor(name, shape, format, bytes)
    }

    /// The complete file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&(v.ty() as u32).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + t.bytes.len()).div_ceil(self.alignment) * self.alignment;
        }
        pad_to(&mut out, self.alignment);
        for t in &self.tensors {
            out.extend_from_slice(&t.bytes);
            pad_to(&mut out, self.alignment);
        }
        out
    }
}

/// A small deterministic PRNG (SplitMix64) with uniform and normal draws.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

fn par_threads(n: usize, align: usize) -> usize {
    if cfg!(target_arch = "wasm32") || n < 1 << 22 || !n.is_multiple_of(align) {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |c| c.get().min(32))
    }
}

/// `f` over `0..n` split into ranges (multiples of `align` long, in order): one range
/// below 4M elements or where threads are unavailable (wasm), else one per core.
fn par_chunks<T: Send>(n: usize, align: usize, f: impl Fn(std::ops::Range<usize>) -> T + Sync) -> Vec<T> {
    let threads = par_threads(n, align);
    if threads == 1 {
        return vec![f(0..n)];
    }
    let chunk = n.div_ceil(threads).div_ceil(align) * align;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|a| {
                s.spawn({
                    let f = &f;
                    move || f(a..(a + chunk).min(n))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// Shape of a tiny random llama model.
#[derive(Clone, Debug, PartialEq)]
pub struct TinySpec {
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_ff: usize,
    /// At least [`TinySpec::MIN_VOCAB`]; ids past the tokenizer's tokens are reserved
    /// control tokens.
    pub vocab: usize,
    pub context: usize,
    /// No `output.weight`: the lm head reads `token_embd.weight`.
    pub tied: bool,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            n_layers: 2,
            d_model: 64,
            n_heads: 4,
            n_kv_heads: 2,
            d_ff: 128,
            vocab: 320,
            context: 256,
            tied: true,
        }
    }
}

/// Merges of the tiny tokenizer, in GPT-2 byte-to-unicode space (`Ġ` is a space).
const TINY_MERGES: [(&str, &str); 24] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("r", "e"),
    ("a", "n"),
    ("Ġt", "he"),
    ("Ġ", "s"),
    ("e", "n"),
    ("a", "t"),
    ("o", "r"),
    ("Ġ", "w"),
    ("e", "s"),
    ("Ġ", "o"),
    ("i", "s"),
    ("Ġ", "c"),
    ("i", "t"),
    ("Ġ", "b"),
    ("l", "l"),
    ("Ġ", "f"),
    ("in", "g"),
    ("Ġ", "m"),
];

/// Special tokens of the tiny tokenizer: ids 0, 1, 2.
pub const TINY_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A ChatML template (what SmolLM2-Instruct uses, without its default system prompt).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + \
    message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}\
    {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

impl TinySpec {
    /// Specials + 256 byte tokens + one token per merge.
    pub const MIN_VOCAB: usize = TINY_SPECIALS.len() + 256 + TINY_MERGES.len();

    fn head_dim(&self) -> Result<usize> {
        let bad = |m: &str| Err(Error::invalid(format!("TinySpec {self:?}: {m}")));
        if self.n_layers == 0 || self.d_ff == 0 || self.context == 0 {
            return bad("n_layers, d_ff and context must be positive");
        }
        if self.n_heads == 0 || self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad("n_heads must be a positive multiple of n_kv_heads");
        }
        let cap = 1 << 16;
        if [self.n_layers, self.d_model, self.n_heads, self.d_ff, self.context].iter().any(|&v| v > cap)
            || self.vocab > 1 << 20
        {
            return bad("dimensions above 65536 (vocab above 2^20) are not tiny");
        }
        if !self.d_model.is_multiple_of(2 * self.n_heads) || self.d_model == 0 {
            return bad("d_model must be a positive multiple of 2 * n_heads");
        }
        if self.vocab < Self::MIN_VOCAB {
            return bad("vocab is below TinySpec::MIN_VOCAB");
        }
        Ok(self.d_model / self.n_heads)
    }
}

/// GPT-2's byte-to-unicode map: printable bytes map to themselves, the others to
/// U+0100 upwards, so every byte has a visible one-char token.
pub fn gpt2_byte_char(b: u8) -> char {
    let printable = |c: u8| (33..=126).contains(&c) || (161..=172).contains(&c) || c >= 174;
    if printable(b) {
        char::from(b)
    } else {
        let rank = (0..b).filter(|c| !printable(*c)).count() as u32;
        char::from_u32(256 + rank).unwrap_or('?')
    }
}

/// Tokens, token types and merges of the tiny byte-level BPE tokenizer, padded to `vocab`.
fn tiny_tokenizer(vocab: usize) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = TINY_SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; TINY_SPECIALS.len()];
    for b in 0..=255u8 {
        tokens.push(gpt2_byte_char(b).to_string());
        types.push(1);
    }
    let mut merges = Vec::new();
    for (a, b) in TINY_MERGES {
        merges.push(format!("{a} {b}"));
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    for i in tokens.len()..vocab {
        tokens.push(format!("<|reserved_{i}|>"));
        types.push(3);
    }
    (tokens, types, merges)
}

/// A complete random llama model (GGUF v3): weights ~N(0, σ) with σ = 1/sqrt(fan_in)
/// clamped to [0.02, 0.1], norms 1 ± 0.1, a byte-level BPE tokenizer ("gpt2", pre
/// "smollm", specials `<|endoftext|>` 0 / `<|im_start|>` 1 (bos) / `<|im_end|>` 2 (eos),
/// add_bos false) and a ChatML template. Matrices (and the embeddings) are stored in
/// `format` when their rows are whole blocks of it and it can be encoded, else in F32;
/// norms are F32. The same (spec, seed, format) always gives the same bytes.
///
/// # Panics
/// When the spec is invalid; [`try_tiny_llama_gguf`] returns the error instead.
pub fn tiny_llama_gguf(cfg: &TinySpec, seed: u64, format: HostFormat) -> Vec<u8> {
    match try_tiny_llama_gguf(cfg, seed, format) {
        Ok(b) => b,
        Err(e) => panic!("tiny_llama_gguf: {e}"),
    }
}

/// [`tiny_llama_gguf`] returning an error for an invalid spec.
pub fn try_tiny_llama_gguf(cfg: &TinySpec, seed: u64, format: HostFormat) -> Result<Vec<u8>> {
    tiny_gguf(cfg, Arch::Llama, seed, format)
}

/// A tiny random model of any supported architecture: `Arch::Llama` as
/// [`tiny_llama_gguf`] (GGUF arch "llama", Q/K rows taken as adjacent-pair RoPE order);
/// `Arch::Qwen2` (arch "qwen2": half-split RoPE, Q/K/V biases ~N(0, 0.02) in F32,
/// rope base 1e6, rms eps 1e-6); `Arch::Mistral` (arch "mistral", otherwise as llama).
pub fn tiny_gguf(cfg: &TinySpec, arch: Arch, seed: u64, format: HostFormat) -> Result<Vec<u8>> {
    let head_dim = cfg.head_dim()?;
    let (a, rope_base, eps) = match arch {
        Arch::Llama => ("llama", 10000.0, 1e-5),
        Arch::Mistral => ("mistral", 10000.0, 1e-5),
        Arch::Qwen2 => ("qwen2", 1_000_000.0, 1e-6),
    };
    let mut w = GgufWriter::new();
    let u32v = |v: usize| GgufValue::U32(v as u32);
    let k = |s: &str| format!("{a}.{s}");
    w.set("general.architecture", GgufValue::String(a.into()))?
        .set("general.name", GgufValue::String(format!("tiny-{a}")))?
        .set("general.alignment", u32v(DEFAULT_ALIGNMENT))?
        .set(&k("block_count"), u32v(cfg.n_layers))?
        .set(&k("context_length"), u32v(cfg.context))?
        .set(&k("embedding_length"), u32v(cfg.d_model))?
        .set(&k("feed_forward_length"), u32v(cfg.d_ff))?
        .set(&k("attention.head_count"), u32v(cfg.n_heads))?
        .set(&k("attention.head_count_kv"), u32v(cfg.n_kv_heads))?
        .set(&k("rope.dimension_count"), u32v(head_dim))?
        .set(&k("rope.freq_base"), GgufValue::F32(rope_base))?
        .set(&k("attention.layer_norm_rms_epsilon"), GgufValue::F32(eps))?
        .set(&k("vocab_size"), u32v(cfg.vocab))?;

    let (tokens, types, merges) = tiny_tokenizer(cfg.vocab);
    w.set("tokenizer.ggml.model", GgufValue::String("gpt2".into()))?
        .set("tokenizer.ggml.pre", GgufValue::String("smollm".into()))?
        .set("tokenizer.ggml.tokens", string_array(tokens))?
        .set("tokenizer.ggml.token_type", i32_array(types))?
        .set("tokenizer.ggml.merges", string_array(merges))?
        .set("tokenizer.ggml.bos_token_id", GgufValue::U32(1))?
        .set("tokenizer.ggml.eos_token_id", GgufValue::U32(2))?
        .set("tokenizer.ggml.unknown_token_id", GgufValue::U32(0))?
        .set("tokenizer.ggml.padding_token_id", GgufValue::U32(2))?
        .set("tokenizer.ggml.add_bos_token", GgufValue::Bool(false))?
        .set("tokenizer.chat_template", GgufValue::String(CHATML_TEMPLATE.into()))?;

    let mut rng = SplitMix64(seed);
    let (d, q, kv, ff) = (cfg.d_model, cfg.n_heads * head_dim, cfg.n_kv_heads * head_dim, cfg.d_ff);
    let mut matrix = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize| -> Result<()> {
        let sigma = (1.0 / (cols as f32).sqrt()).clamp(0.02, 0.1);
        // Benchmark shapes draw in parallel, one generator per chunk seeded from the main one;
        // tiny test models keep the single sequential stream.
        let n = rows * cols;
        let data: Vec<f32> = if par_threads(n, 256) > 1 {
            let seed = rng.next_u64();
            par_chunks(n, 256, |r| {
                let mut g = SplitMix64(seed ^ (r.start as u64).wrapping_mul(0x9e37_79b9));
                r.map(|_| g.normal() * sigma).collect::<Vec<f32>>()
            })
            .concat()
        } else {
            (0..n).map(|_| rng.normal() * sigma).collect()
        };
        let fmt = if cols.is_multiple_of(ggml::block_elems(format)) && ggml::quantize(format, &[0.0; 256]).is_ok() {
            format
        } else {
            HostFormat::F32
        };
        w.add_f32(name, &[rows, cols], fmt, &data)?;
        Ok(())
    };
    let mut norm_rng = SplitMix64(seed ^ 0x6e6f_726d);
    let mut norm = |w: &mut GgufWriter, name: &str| -> Result<()> {
        let data: Vec<f32> = (0..d).map(|_| 1.0 + 0.2 * (norm_rng.uniform() - 0.5)).collect();
        w.add_f32(name, &[d], HostFormat::F32, &data)?;
        Ok(())
    };
    let mut bias_rng = SplitMix64(seed ^ 0x6269_6173);
    matrix(&mut w, "token_embd.weight", cfg.vocab, d)?;
    norm(&mut w, "output_norm.weight")?;
    if !cfg.tied {
        matrix(&mut w, "output.weight", cfg.vocab, d)?;
    }
    for l in 0..cfg.n_layers {
        norm(&mut w, &format!("blk.{l}.attn_norm.weight"))?;
        matrix(&mut w, &format!("blk.{l}.attn_q.weight"), q, d)?;
        matrix(&mut w, &format!("blk.{l}.attn_k.weight"), kv, d)?;
        matrix(&mut w, &format!("blk.{l}.attn_v.weight"), kv, d)?;
        if arch == Arch::Qwen2 {
            for (name, n) in [("attn_q", q), ("attn_k", kv), ("attn_v", kv)] {
                let data: Vec<f32> = (0..n).map(|_| 0.02 * bias_rng.normal()).collect();
                w.add_f32(&format!("blk.{l}.{name}.bias"), &[n], HostFormat::F32, &data)?;
            }
        }
        matrix(&mut w, &format!("blk.{l}.attn_output.weight"), d, q)?;
        norm(&mut w, &format!("blk.{l}.ffn_norm.weight"))?;
        matrix(&mut w, &format!("blk.{l}.ffn_gate.weight"), ff, d)?;
        matrix(&mut w, &format!("blk.{l}.ffn_up.weight"), ff, d)?;
        matrix(&mut w, &format!("blk.{l}.ffn_down.weight"), d, ff)?;
    }
    Ok(w.to_bytes())
}

#[cfg(test)]
mod tests;
