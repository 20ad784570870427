//! The model's weights repacked for the CPU, its KV cache, and the forward pass of one
//! token (the same arithmetic as `model::reference`, with 16-bit activations into
//! the matrix products).

use super::kernels::{Matrix, QuantVec, TOKENS};
use crate::config::{Quantization, StreamingConfig};
use crate::error::{Error, Result};
use crate::model::{HostFormat, HostTensor, ModelConfig, ModelSource, RopeLayout, RopeScaling, WeightName};
use crate::quant::ggml;

/// Longest context the KV cache grows to when the model allows more (as on the GPU).
const MAX_CONTEXT: usize = 4096;

/// The CPU's weight formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Int4,
    Int8,
}

impl Format {
    fn of(q: Quantization) -> Result<Format> {
        match q {
            Quantization::Int4 => Ok(Format::Int4),
            Quantization::Int8 => Ok(Format::Int8),
            other => Err(Error::invalid(format!(
                "the cpu device runs int4 and int8 weights, not {other}; set \"quantization\" to int4 or int8 (or \"device\": \"gpu\")"
            ))),
        }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    /// `[n_heads * hd]`, `[n_kv * hd]`, `[n_kv * hd]` (qwen2).
    bias: Option<[Vec<f32>; 3]>,
    wo: Matrix,
    wg: Matrix,
    wu: Matrix,
    wd: Matrix,
    /// `[positions, n_kv * hd]` each, grown one position at a time.
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Activations of one step, allocated once.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    scores: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    /// `[t, hd / 2]` RoPE (sin, cos) of the chunk's positions.
    rot: Vec<(f32, f32)>,
    /// One per token of the chunk.
    xq: Vec<QuantVec>,
    hq: Vec<QuantVec>,
}

/// Weights in CPU formats and a KV cache that grows with the context.
pub struct CpuModel {
    pub config: ModelConfig,
    /// Positions the KV cache may hold.
    pub context: usize,
    layers: Vec<Layer>,
    embd: Matrix,
    /// `None` when tied to the embeddings.
    head: Option<Matrix>,
    out_norm: Vec<f32>,
    /// `[hd / 2]` RoPE frequencies with the position scaling applied.
    inv_freq: Vec<f64>,
    /// Ids whose keys and values the cache holds, in order.
    cached: Vec<u32>,
    s: Scratch,
    weight_bytes: u64,
    name: &'static str,
}

fn vector(src: &dyn ModelSource, name: WeightName, n: usize) -> Result<Vec<f32>> {
    let t = tensor(src, name)?;
    if t.numel() != n {
        return Err(Error::ModelLoading(format!("{} has {} values, expected {n}", t.name, t.numel())));
    }
    t.to_f32()
}

fn tensor(src: &dyn ModelSource, name: WeightName) -> Result<HostTensor<'_>> {
    src.tensor(name)?.ok_or_else(|| Error::ModelLoading(format!("the model has no {}", name.gguf_name())))
}

/// A matrix in `format`: GGUF blocks of that format are taken bit for bit; anything else
/// is dequantised and rounded to nearest in 32-weight groups.
fn matrix(t: &HostTensor<'_>, rows: usize, cols: usize, format: Format) -> Result<Matrix> {
    if t.rows_cols() != (rows, cols) {
        return Err(Error::ModelLoading(format!("{} is {:?}, expected [{rows}, {cols}]", t.name, t.shape)));
    }
    match (format, t.format) {
        (Format::Int4, HostFormat::Q4_1) => Matrix::from_q4_1(&t.bytes, rows, cols),
        (Format::Int4, HostFormat::Q4_0) => Matrix::from_q4_0(&t.bytes, rows, cols),
        (Format::Int8, HostFormat::Q8_0) => Matrix::from_q8_0(&t.bytes, rows, cols),
        (Format::Int4, _) => Matrix::from_q4_1(&ggml::quantize_q4_1(&t.to_f32()?)?, rows, cols),
        (Format::Int8, _) => Matrix::from_q8_0(&ggml::quantize_q8_0(&t.to_f32()?)?, rows, cols),
    }
}

/// The embedding (and a separate output head): the file's int4 or int8 blocks as they are,
/// anything else in int8.
fn embedding(t: &HostTensor<'_>, rows: usize, cols: usize) -> Result<Matrix> {
    let format = if matches!(t.format, HostFormat::Q4_1 | HostFormat::Q4_0) { Format::Int4 } else { Format::Int8 };
    matrix(t, rows, cols, format)
}

impl CpuModel {
    /// Reads and repacks every weight: attention and feed-forward matrices in the config's
    /// precisions, the embeddings and output head in the file's int4 / int8 blocks or int8.
    pub fn load(
        src: &dyn ModelSource,
        config: &StreamingConfig,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CpuModel> {
        let c = src.config().clone();
        let (attn, ffn) = config.matrix_precisions();
        let (attn, ffn) = (Format::of(attn)?, Format::of(ffn)?);
        let (d, hd, nh, nkv, dff, vocab) = (c.d_model, c.head_dim, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size);
        if !nh.is_multiple_of(nkv) || !hd.is_multiple_of(2) {
            return Err(Error::ModelLoading(format!("{nh} heads over {nkv} KV heads of {hd} dimensions")));
        }
        let total = (c.n_layers + 1) as u64;
        progress(0, total);
        let embd = embedding(&tensor(src, WeightName::TokenEmbd)?, vocab, d)?;
        let head = match c.tied_embeddings {
            true => None,
            false => Some(embedding(&tensor(src, WeightName::Output)?, vocab, d)?),
        };
        progress(1, total);
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let m = |name, rows, cols, f| matrix(&tensor(src, name)?, rows, cols, f);
            let bias = match c.qkv_bias {
                true => Some([
                    vector(src, WeightName::AttnQBias(l), nh * hd)?,
                    vector(src, WeightName::AttnKBias(l), nkv * hd)?,
                    vector(src, WeightName::AttnVBias(l), nkv * hd)?,
                ]),
                false => None,
            };
            layers.push(Layer {
                attn_norm: vector(src, WeightName::AttnNorm(l), d)?,
                ffn_norm: vector(src, WeightName::FfnNorm(l), d)?,
                wq: m(WeightName::AttnQ(l), nh * hd, d, attn)?,
                wk: m(WeightName::AttnK(l), nkv * hd, d, attn)?,
                wv: m(WeightName::AttnV(l), nkv * hd, d, attn)?,
                bias,
                wo: m(WeightName::AttnOutput(l), d, nh * hd, attn)?,
                wg: m(WeightName::FfnGate(l), dff, d, ffn)?,
                wu: m(WeightName::FfnUp(l), dff, d, ffn)?,
                wd: m(WeightName::FfnDown(l), d, dff, ffn)?,
                k: Vec::new(),
                v: Vec::new(),
            });
            progress(l as u64 + 2, total);
        }
        let scale = match c.rope_scaling {
            RopeScaling::None => 1.0,
            RopeScaling::Linear { factor } => 1.0 / f64::from(factor),
        };
        let inv_freq = (0..hd / 2).map(|i| scale * f64::from(c.rope_theta).powf(-2.0 * i as f64 / hd as f64)).collect();
        let mut weight_bytes = (embd.bytes() + head.as_ref().map_or(0, Matrix::bytes)) as u64;
        for l in &layers {
            let mats = [&l.wq, &l.wk, &l.wv, &l.wo, &l.wg, &l.wu, &l.wd];
            weight_bytes += mats.iter().map(|m| m.bytes() as u64).sum::<u64>();
            weight_bytes += 4 * (l.attn_norm.len() + l.ffn_norm.len()) as u64;
        }
        let name = match (attn, ffn) {
            (Format::Int4, Format::Int4) => "int4",
            (Format::Int8, Format::Int8) => "int8",
            _ => "mixed",
        };
        // f32 keys and values of every layer; `max_kv_cache_mb` caps the positions.
        let per_position = 2 * c.n_layers * nkv * hd * 4;
        let mut context = c.context_length.clamp(16, MAX_CONTEXT);
        if let Some(mb) = config.max_kv_cache_mb {
            context = context.min(mb as usize * 1_048_576 / per_position);
            if context < 2 {
                return Err(Error::invalid(format!(
                    "max_kv_cache_mb {mb} holds {context} positions of the cpu KV cache ({per_position} bytes each); \
                     it needs at least 2"
                )));
            }
        }
        Ok(CpuModel {
            context,
            out_norm: vector(src, WeightName::OutputNorm, d)?,
            config: c,
            layers,
            embd,
            head,
            inv_freq,
            cached: Vec::new(),
            s: Scratch::default(),
            weight_bytes,
            name,
        })
    }

    /// Bytes of (weights, KV cache, activations).
    pub fn memory_bytes(&self) -> (u64, u64, u64) {
        let kv: usize = self.layers.iter().map(|l| l.k.capacity() + l.v.capacity()).sum();
        let s = &self.s;
        let floats = [&s.x, &s.xn, &s.q, &s.k, &s.v, &s.att, &s.scores, &s.o, &s.g, &s.u];
        let quant: usize = s.xq.iter().chain(&s.hq).map(QuantVec::bytes).sum();
        let act: usize = floats.iter().map(|v| 4 * v.capacity()).sum::<usize>() + quant + 8 * s.rot.capacity();
        (self.weight_bytes, 4 * kv as u64, act as u64)
    }

    pub fn quantization_name(&self) -> &'static str {
        self.name
    }

    /// Ids the KV cache holds.
    pub fn cached(&self) -> &[u32] {
        &self.cached
    }

    /// Drops the cache's positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        let kv_dim = self.config.n_kv_heads * self.config.head_dim;
        for l in &mut self.layers {
            l.k.truncate(len * kv_dim);
            l.v.truncate(len * kv_dim);
        }
        self.cached.truncate(len);
    }

    /// Runs `token` at the next position; with `logits` (`[vocab]`) also the output head.
    pub fn step(&mut self, token: u32, logits: Option<&mut Vec<f32>>) -> Result<()> {
        self.steps(&[token], logits)
    }

    /// Runs `tokens` at the next positions, [`TOKENS`] at a time through the matrices (the
    /// same bits as one at a time); with `logits` (`[vocab]`) also the head for the last.
    pub fn steps(&mut self, tokens: &[u32], mut logits: Option<&mut Vec<f32>>) -> Result<()> {
        let c = &self.config;
        if self.cached.len() + tokens.len() > self.context {
            return Err(Error::ContextLengthExceeded(format!(
                "the cpu KV cache holds {} positions; {} are used and {} more asked",
                self.context,
                self.cached.len(),
                tokens.len()
            )));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::invalid(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        let n_chunks = tokens.len().div_ceil(TOKENS);
        for (i, chunk) in tokens.chunks(TOKENS).enumerate() {
            let last = i + 1 == n_chunks;
            self.chunk(chunk, if last { logits.take() } else { None })?;
        }
        Ok(())
    }

    /// Up to [`TOKENS`] tokens through every layer.
    fn chunk(&mut self, tokens: &[u32], logits: Option<&mut Vec<f32>>) -> Result<()> {
        let c = &self.config;
        let t = tokens.len();
        let pos0 = self.cached.len();
        let (d, hd, nh, nkv, dff) = (c.d_model, c.head_dim, c.n_heads, c.n_kv_heads, c.d_ff);
        let (eps, layout) = (c.rms_eps, c.rope_layout);
        let s = &mut self.s;
        s.x.resize(t * d, 0.0);
        s.xn.resize(t * d, 0.0);
        s.q.resize(t * nh * hd, 0.0);
        s.k.resize(t * nkv * hd, 0.0);
        s.v.resize(t * nkv * hd, 0.0);
        s.att.resize(t * nh * hd, 0.0);
        s.o.resize(t * d, 0.0);
        s.g.resize(t * dff, 0.0);
        s.u.resize(t * dff, 0.0);
        s.xq.resize(t, QuantVec::default());
        s.hq.resize(t, QuantVec::default());
        for (&id, x) in tokens.iter().zip(s.x.chunks_exact_mut(d)) {
            self.embd.row_into(id as usize, x)?;
        }
        // (sin, cos) per token and frequency, `[t, hd / 2]`, in the step's scratch.
        s.rot.clear();
        for i in 0..t {
            let pos = (pos0 + i) as f64;
            s.rot.extend(self.inv_freq.iter().map(|f| {
                let (sn, cs) = (pos * f).sin_cos();
                (sn as f32, cs as f32)
            }));
        }
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        for l in &mut self.layers {
            norm_and_quantize(&s.x, &l.attn_norm, eps, &mut s.xn, &mut s.xq);
            l.wq.matmul(&s.xq, &mut s.q)?;
            l.wk.matmul(&s.xq, &mut s.k)?;
            l.wv.matmul(&s.xq, &mut s.v)?;
            let rows =
                s.q.chunks_exact_mut(nh * hd).zip(s.k.chunks_exact_mut(nkv * hd)).zip(s.v.chunks_exact_mut(nkv * hd));
            for (((q, k), v), rot) in rows.zip(s.rot.chunks_exact(hd / 2)) {
                if let Some([bq, bk, bv]) = &l.bias {
                    add(q, bq);
                    add(k, bk);
                    add(v, bv);
                }
                for h in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                    rope(h, rot, layout);
                }
            }
            l.k.extend_from_slice(&s.k);
            l.v.extend_from_slice(&s.v);
            for i in 0..t {
                // Token i sees positions 0..=pos0 + i.
                let n = pos0 + i + 1;
                s.scores.resize(n, 0.0);
                for h in 0..nh {
                    let kv = (h / group) * hd;
                    let q = &s.q[(i * nh + h) * hd..][..hd];
                    let mut mx = f32::NEG_INFINITY;
                    for (j, sc) in s.scores.iter_mut().enumerate() {
                        let k = &l.k[j * nkv * hd + kv..][..hd];
                        *sc = dot(q, k) * scale;
                        // A compare, not `f32::max`, which is a libm call (fmaxf) in wasm.
                        if *sc > mx {
                            mx = *sc;
                        }
                    }
                    let mut z = 0.0f32;
                    for sc in s.scores.iter_mut() {
                        *sc = (*sc - mx).exp();
                        z += *sc;
                    }
                    let out = &mut s.att[(i * nh + h) * hd..][..hd];
                    out.fill(0.0);
                    for (j, &e) in s.scores.iter().enumerate() {
                        let v = &l.v[j * nkv * hd + kv..][..hd];
                        for (o, &vv) in out.iter_mut().zip(v) {
                            *o += e * vv;
                        }
                    }
                    let inv = 1.0 / z;
                    out.iter_mut().for_each(|o| *o *= inv);
                }
            }
            for (a, hq) in s.att.chunks_exact(nh * hd).zip(s.hq.iter_mut()) {
                hq.quantize(a);
            }
            l.wo.matmul(&s.hq, &mut s.o)?;
            add(&mut s.x, &s.o);
            norm_and_quantize(&s.x, &l.ffn_norm, eps, &mut s.xn, &mut s.xq);
            l.wg.matmul(&s.xq, &mut s.g)?;
            l.wu.matmul(&s.xq, &mut s.u)?;
            for (g, &u) in s.g.iter_mut().zip(&s.u) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            for (g, hq) in s.g.chunks_exact(dff).zip(s.hq.iter_mut()) {
                hq.quantize(g);
            }
            l.wd.matmul(&s.hq, &mut s.o)?;
            add(&mut s.x, &s.o);
        }
        self.cached.extend_from_slice(tokens);
        if let Some(logits) = logits {
            let x = &s.x[(t - 1) * d..][..d];
            rmsnorm(x, &self.out_norm, eps, &mut s.xn[..d]);
            s.xq[0].quantize(&s.xn[..d]);
            logits.resize(c.vocab_size, 0.0);
            self.head.as_ref().unwrap_or(&self.embd).matvec(&s.xq[0], logits)?;
        }
        Ok(())
    }
}

/// RMSNorm of each token's row of `x` (`[t, d]`) into `xn`, then quantised into `xq[t]`.
fn norm_and_quantize(x: &[f32], w: &[f32], eps: f32, xn: &mut [f32], xq: &mut [QuantVec]) {
    let d = w.len();
    for ((x, xn), q) in x.chunks_exact(d).zip(xn.chunks_exact_mut(d)).zip(xq.iter_mut()) {
        rmsnorm(x, w, eps, xn);
        q.quantize(xn);
    }
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * inv * g;
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums, so the loop vectorises.
    let mut acc = [0.0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a.chunks_exact(8).remainder().iter().zip(b.chunks_exact(8).remainder()).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Rotates one head by the position's `(sin, cos)` per frequency.
fn rope(h: &mut [f32], rot: &[(f32, f32)], layout: RopeLayout) {
    let half = h.len() / 2;
    for (i, &(s, c)) in rot.iter().enumerate() {
        let (a, b) = match layout {
            RopeLayout::Adjacent => (2 * i, 2 * i + 1),
            RopeLayout::HalfSplit => (i, i + half),
        };
        let (x, y) = (h[a], h[b]);
        h[a] = x * c - y * s;
        h[b] = x * s + y * c;
    }
}
