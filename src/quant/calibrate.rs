//! Calibration pass for the weighted fit of int3 / int2: a CPU forward over a short built-in
//! text (not any evaluation text) that records the mean square of every layer matrix's input
//! per column. An error in weight column `j` moves the product by `error * x_j`, so the
//! expected squared output error of a group is `sum_j E[x_j^2] * error_j^2`: that mean square
//! is the importance the fit weights each column by.
//!
//! The forward is the plain one of `model::reference` (same RoPE, norms, GQA, biases),
//! batched over the tokens with vectorisable dot products and split over threads natively,
//! since it runs at every load that quantises to int3 or int2 (a few hundred ms for a 135M
//! model; it grows with parameters x tokens, like one prefill on the CPU).

use crate::error::Result;
use crate::gpu::WeightFormat;
use crate::model::reference::rope_head;
use crate::model::upload::required_f32;
use crate::model::{ModelSource, WeightName};
use crate::quant::fit::Quantizer;

/// Fixed calibration text: plain prose, dialogue, technical and numeric lines.
pub const CALIBRATION_TEXT: &str = "The old lighthouse stood at the edge of the cliff, its white paint \
peeling after decades of salt and wind. Every evening the keeper climbed the spiral stairs \
to light the lamp, counting the steps as his father had taught him. In the village below, \
fishermen mended their nets and children ran along the harbour wall. Scientists measure the \
temperature of the ocean with buoys that report every hour; the data show that the water \
has warmed by almost one degree since 1950. To install the package, run the command below \
and restart your computer. If the error persists, check that the file exists and that you \
have permission to read it. She asked him, \"Why do you always leave before the end?\" He \
smiled and said nothing, because the answer was too long for one evening.";

/// Mean square per input column of the four matrices of one layer.
/// qkv, gate_up: `[d_model]`; o: `[n_heads * head_dim]`; down: `[d_ff]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerImportance {
    pub qkv: Vec<f32>,
    pub o: Vec<f32>,
    pub gate_up: Vec<f32>,
    pub down: Vec<f32>,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent sums, so the compiler can vectorise the loop.
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `x @ w^T`: x `[n, k]`, w `[rows, k]` -> `[n, rows]`.
fn matmul(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    let (n, rows) = (x.len() / k, w.len() / k);
    let mut out = vec![0f32; n * rows];
    let fill = |r0: usize, part: &mut [f32]| {
        // part holds rows r0.. of the transposed output: [rows_part, n].
        for (i, o) in part.chunks_exact_mut(n).enumerate() {
            let wr = &w[(r0 + i) * k..(r0 + i + 1) * k];
            for (t, v) in o.iter_mut().enumerate() {
                *v = dot(&x[t * k..(t + 1) * k], wr);
            }
        }
    };
    let mut tr = vec![0f32; n * rows];
    #[cfg(not(target_arch = "wasm32"))]
    {
        let threads = std::thread::available_parallelism().map_or(1, |v| v.get()).clamp(1, 8);
        let per = rows.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (c, part) in tr.chunks_mut(per * n).enumerate() {
                s.spawn(move || fill(c * per, part));
            }
        });
    }
    #[cfg(target_arch = "wasm32")]
    fill(0, &mut tr);
    for r in 0..rows {
        for t in 0..n {
            out[t * rows + r] = tr[r * n + t];
        }
    }
    out
}

fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for r in x.chunks_exact(w.len()) {
        let ss = r.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        out.extend(r.iter().zip(w).map(|(v, g)| v * inv * g));
    }
    out
}

fn add_squares(acc: &mut [f64], x: &[f32]) {
    for r in x.chunks_exact(acc.len()) {
        for (a, v) in acc.iter_mut().zip(r) {
            *a += f64::from(*v) * f64::from(*v);
        }
    }
}

/// Token ids of the calibration text (ids spread over the vocabulary where the model has no
/// usable tokenizer, as tiny test models may not).
pub fn calibration_tokens(src: &dyn ModelSource) -> Vec<u32> {
    let vocab = src.config().vocab_size.max(1) as u32;
    match src.tokenizer().and_then(|t| t.encode(CALIBRATION_TEXT)) {
        Ok(ids) if !ids.is_empty() && ids.iter().all(|&i| i < vocab) => ids,
        _ => (0..128u32).map(|i| i.wrapping_mul(2_654_435_761) % vocab).collect(),
    }
}

/// Runs the layers over `tokens` and returns the final hidden states `[n, d_model]` and,
/// per layer, the mean square of each matrix input.
pub fn forward(src: &dyn ModelSource, tokens: &[u32]) -> Result<(Vec<f32>, Vec<LayerImportance>)> {
    let c = src.config().clone();
    let (d, hd, nh, nkv, dff, vocab) = (c.d_model, c.head_dim, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size);
    let n = tokens.len();
    let embd = required_f32(src, WeightName::TokenEmbd, &[vocab, d])?;
    let mut x: Vec<f32> = Vec::with_capacity(n * d);
    for &t in tokens {
        let t = (t as usize).min(vocab.saturating_sub(1));
        x.extend_from_slice(&embd[t * d..(t + 1) * d]);
    }
    drop(embd);
    let (qdim, kvdim) = (nh * hd, nkv * hd);
    let group = (nh / nkv.max(1)).max(1);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let mut sq = [vec![0f64; d], vec![0f64; qdim], vec![0f64; d], vec![0f64; dff]];
        let an = required_f32(src, WeightName::AttnNorm(l), &[d])?;
        let xn = rmsnorm_rows(&x, &an, c.rms_eps);
        add_squares(&mut sq[0], &xn);
        let proj = |name, rows, bias: Option<WeightName>| -> Result<Vec<f32>> {
            let mut y = matmul(&xn, &required_f32(src, name, &[rows, d])?, d);
            if let Some(b) = bias.filter(|_| c.qkv_bias) {
                let b = required_f32(src, b, &[rows])?;
                for r in y.chunks_exact_mut(rows) {
                    r.iter_mut().zip(&b).for_each(|(v, b)| *v += b);
                }
            }
            Ok(y)
        };
        let mut q = proj(WeightName::AttnQ(l), qdim, Some(WeightName::AttnQBias(l)))?;
        let mut k = proj(WeightName::AttnK(l), kvdim, Some(WeightName::AttnKBias(l)))?;
        let v = proj(WeightName::AttnV(l), kvdim, Some(WeightName::AttnVBias(l)))?;
        for (pos, (qr, kr)) in q.chunks_exact_mut(qdim).zip(k.chunks_exact_mut(kvdim)).enumerate() {
            for h in qr.chunks_exact_mut(hd).chain(kr.chunks_exact_mut(hd)) {
                rope_head(h, pos, c.rope_theta, c.rope_scaling, c.rope_layout);
            }
        }
        let mut att = vec![0f32; n * qdim];
        let mut p = vec![0f32; n];
        for t in 0..n {
            for h in 0..nh {
                let kvh = h / group;
                let qh = &q[t * qdim + h * hd..t * qdim + (h + 1) * hd];
                let mut mx = f32::NEG_INFINITY;
                for (j, pj) in p[..=t].iter_mut().enumerate() {
                    *pj = dot(qh, &k[j * kvdim + kvh * hd..j * kvdim + (kvh + 1) * hd]) * scale;
                    mx = mx.max(*pj);
                }
                let mut z = 0.0;
                for pj in &mut p[..=t] {
                    *pj = (*pj - mx).exp();
                    z += *pj;
                }
                let o = &mut att[t * qdim + h * hd..t * qdim + (h + 1) * hd];
                for (j, pj) in p[..=t].iter().enumerate() {
                    let vj = &v[j * kvdim + kvh * hd..j * kvdim + (kvh + 1) * hd];
                    o.iter_mut().zip(vj).for_each(|(a, b)| *a += pj / z * b);
                }
            }
        }
        add_squares(&mut sq[1], &att);
        let o = matmul(&att, &required_f32(src, WeightName::AttnOutput(l), &[d, qdim])?, qdim);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let fnw = required_f32(src, WeightName::FfnNorm(l), &[d])?;
        let xn = rmsnorm_rows(&x, &fnw, c.rms_eps);
        add_squares(&mut sq[2], &xn);
        let g = matmul(&xn, &required_f32(src, WeightName::FfnGate(l), &[dff, d])?, d);
        let u = matmul(&xn, &required_f32(src, WeightName::FfnUp(l), &[dff, d])?, d);
        let act: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect();
        add_squares(&mut sq[3], &act);
        let down = matmul(&act, &required_f32(src, WeightName::FfnDown(l), &[d, dff])?, dff);
        x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        let [a, b, cc, dd] = sq.map(|s| mean_square(&s, n));
        out.push(LayerImportance { qkv: a, o: b, gate_up: cc, down: dd });
    }
    Ok((x, out))
}

/// Sums of squares over `n` rows -> importance: the mean square, scaled to mean 1 (so the
/// fit's sums stay in range whatever the activations' size), floored at 1e-3 so that no
/// column is ignored. (Its square helped int3 alone and hurt int2 and mixed: README.)
fn mean_square(s: &[f64], n: usize) -> Vec<f32> {
    let n = n.max(1) as f64;
    let mean = s.iter().sum::<f64>() / n / s.len().max(1) as f64;
    if mean <= 0.0 || !mean.is_finite() {
        return vec![1.0; s.len()];
    }
    s.iter().map(|v| ((v / n / mean) as f32).max(1e-3)).collect()
}

/// Per-layer importance from the calibration text.
pub fn importance(src: &dyn ModelSource) -> Result<Vec<LayerImportance>> {
    Ok(forward(src, &calibration_tokens(src))?.1)
}

/// The importance for a load whose layer matrices take `formats`: calibrated where one of
/// them is int3 or int2 under the refined quantiser (where the weighted fit pays for the
/// pass), else None (the fit's own weights `mean|x| + |x_i|`).
pub fn for_load(
    src: &dyn ModelSource,
    formats: &[WeightFormat],
    quantizer: Quantizer,
) -> Result<Option<Vec<LayerImportance>>> {
    let low = formats.iter().any(|f| matches!(f, WeightFormat::Int3 | WeightFormat::Int2));
    if !low || quantizer != Quantizer::Refined {
        return Ok(None);
    }
    importance(src).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgufSource;
    use crate::model::gguf_write::{TinySpec, tiny_gguf};
    use crate::model::{Arch, HostFormat};

    fn tiny(arch: Arch) -> GgufSource {
        let spec = TinySpec {
            n_layers: 2,
            d_model: 64,
            n_heads: 4,
            n_kv_heads: 2,
            d_ff: 96,
            vocab: 300,
            context: 64,
            tied: false,
        };
        GgufSource::from_bytes(tiny_gguf(&spec, arch, 3, HostFormat::F32).expect("tiny")).expect("parse")
    }

    #[test]
    fn calibration_forward_gives_the_reference_logits() {
        // Llama (GQA, separate head) and Qwen2 (biases): the batched forward is the plain one.
        for arch in [Arch::Llama, Arch::Qwen2] {
            let src = tiny(arch);
            let c = src.config().clone();
            let tokens = [5u32, 77, 3, 200, 41, 9, 120];
            let (hidden, _) = forward(&src, &tokens).expect("forward");
            let want = crate::model::reference::forward_all(&src, &tokens).expect("reference");
            let head = required_f32(&src, WeightName::Output, &[c.vocab_size, c.d_model]).expect("head");
            let norm = required_f32(&src, WeightName::OutputNorm, &[c.d_model]).expect("norm");
            let h = rmsnorm_rows(&hidden, &norm, c.rms_eps);
            let got = matmul(&h, &head, c.d_model);
            let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
            for (g, w) in got.chunks(c.vocab_size).zip(&want) {
                for (a, b) in g.iter().zip(w) {
                    assert!((a - b).abs() <= 1e-4 * scale, "{arch:?}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn importance_has_one_positive_weight_per_input_column_with_mean_one() {
        let src = tiny(Arch::Llama);
        let c = src.config().clone();
        let imp = importance(&src).expect("calibrate");
        assert_eq!(imp.len(), c.n_layers);
        for l in &imp {
            let widths = [c.d_model, c.n_heads * c.head_dim, c.d_model, c.d_ff];
            for (v, w) in [&l.qkv, &l.o, &l.gate_up, &l.down].into_iter().zip(widths) {
                assert_eq!(v.len(), w);
                assert!(v.iter().all(|x| x.is_finite() && *x >= 1e-3));
                let mean = v.iter().sum::<f32>() / w as f32;
                assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
            }
        }
        // Calibration runs only where int3 or int2 is quantised by the refined quantiser.
        let run = |f: &[WeightFormat], q| for_load(&src, f, q).expect("for_load").is_some();
        assert!(run(&[WeightFormat::Int4, WeightFormat::Int3], Quantizer::Refined));
        assert!(!run(&[WeightFormat::Int4, WeightFormat::Int8], Quantizer::Refined));
        assert!(!run(&[WeightFormat::Int2], Quantizer::Rtn));
    }
}
