//! A plain CPU forward pass in f32/f64 for small models: the reference the GPU model is
//! tested against on tiny random models of every supported variant (RoPE layouts, biases,
//! tied or separate output, GQA).

use crate::error::Result;
use crate::model::upload::required_f32;
use crate::model::{ModelSource, RopeLayout, RopeScaling, WeightName};

fn matvec(w: &[f32], x: &[f32], rows: usize) -> Vec<f32> {
    let k = x.len();
    (0..rows).map(|r| w[r * k..(r + 1) * k].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ss: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ss + f64::from(eps)).sqrt();
    x.iter().zip(w).map(|(&v, &g)| (f64::from(v) * inv) as f32 * g).collect()
}

/// Rotate one head in place at position `pos`.
pub fn rope_head(h: &mut [f32], pos: usize, theta: f32, scaling: RopeScaling, layout: RopeLayout) {
    let hd = h.len();
    let half = hd / 2;
    let scale = match scaling {
        RopeScaling::None => 1.0,
        RopeScaling::Linear { factor } => 1.0 / f64::from(factor),
    };
    for i in 0..half {
        let a = pos as f64 * scale * f64::from(theta).powf(-2.0 * i as f64 / hd as f64);
        let (s, c) = a.sin_cos();
        let (ia, ib) = match layout {
            RopeLayout::Adjacent => (2 * i, 2 * i + 1),
            RopeLayout::HalfSplit => (i, i + half),
        };
        let (x, y) = (f64::from(h[ia]), f64::from(h[ib]));
        h[ia] = (x * c - y * s) as f32;
        h[ib] = (x * s + y * c) as f32;
    }
}

/// Logits `[tokens.len(), vocab]` for every position of `tokens`.
pub fn forward_all(src: &dyn ModelSource, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
    forward_windowed(src, tokens, 0, usize::MAX)
}

/// Like [`forward_all`], with the KV cache's sliding window: position `t` attends to
/// positions `0..sinks` and the `window` positions up to `t` (`model::kv_cache`).
pub fn forward_windowed(src: &dyn ModelSource, tokens: &[u32], sinks: usize, window: usize) -> Result<Vec<Vec<f32>>> {
    let c = src.config().clone();
    let (d, hd, nh, nkv, dff, vocab) = (c.d_model, c.head_dim, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size);
    let embd = required_f32(src, WeightName::TokenEmbd, &[vocab, d])?;
    let head = if c.tied_embeddings { embd.clone() } else { required_f32(src, WeightName::Output, &[vocab, d])? };
    let out_norm = required_f32(src, WeightName::OutputNorm, &[d])?;
    let mut xs: Vec<Vec<f32>> = tokens.iter().map(|&t| embd[t as usize * d..(t as usize + 1) * d].to_vec()).collect();
    let group = nh / nkv;
    for l in 0..c.n_layers {
        let wq = required_f32(src, WeightName::AttnQ(l), &[nh * hd, d])?;
        let wk = required_f32(src, WeightName::AttnK(l), &[nkv * hd, d])?;
        let wv = required_f32(src, WeightName::AttnV(l), &[nkv * hd, d])?;
        let wo = required_f32(src, WeightName::AttnOutput(l), &[d, nh * hd])?;
        let (bq, bk, bv) = if c.qkv_bias {
            (
                required_f32(src, WeightName::AttnQBias(l), &[nh * hd])?,
                required_f32(src, WeightName::AttnKBias(l), &[nkv * hd])?,
                required_f32(src, WeightName::AttnVBias(l), &[nkv * hd])?,
            )
        } else {
            (vec![0.0; nh * hd], vec![0.0; nkv * hd], vec![0.0; nkv * hd])
        };
        let an = required_f32(src, WeightName::AttnNorm(l), &[d])?;
        let fnw = required_f32(src, WeightName::FfnNorm(l), &[d])?;
        let wg = required_f32(src, WeightName::FfnGate(l), &[dff, d])?;
        let wu = required_f32(src, WeightName::FfnUp(l), &[dff, d])?;
        let wd = required_f32(src, WeightName::FfnDown(l), &[d, dff])?;
        let mut qs = Vec::new();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for (pos, x) in xs.iter().enumerate() {
            let xn = rmsnorm(x, &an, c.rms_eps);
            let mut q: Vec<f32> = matvec(&wq, &xn, nh * hd).iter().zip(&bq).map(|(a, b)| a + b).collect();
            let mut k: Vec<f32> = matvec(&wk, &xn, nkv * hd).iter().zip(&bk).map(|(a, b)| a + b).collect();
            let v: Vec<f32> = matvec(&wv, &xn, nkv * hd).iter().zip(&bv).map(|(a, b)| a + b).collect();
            for h in q.chunks_mut(hd) {
                rope_head(h, pos, c.rope_theta, c.rope_scaling, c.rope_layout);
            }
            for h in k.chunks_mut(hd) {
                rope_head(h, pos, c.rope_theta, c.rope_scaling, c.rope_layout);
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        let scale = 1.0 / (hd as f64).sqrt();
        for (t, x) in xs.iter_mut().enumerate() {
            let mut att = vec![0.0f32; nh * hd];
            for h in 0..nh {
                let kvh = h / group;
                let q = &qs[t][h * hd..(h + 1) * hd];
                let keys: Vec<usize> = (0..=t).filter(|&j| j < sinks || t - j < window).collect();
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let k = &ks[j][kvh * hd..(kvh + 1) * hd];
                        q.iter().zip(k).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() * scale
                    })
                    .collect();
                let mx = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for dd in 0..hd {
                    let acc: f64 = keys.iter().zip(&e).map(|(&j, e)| e * f64::from(vs[j][kvh * hd + dd])).sum();
                    att[h * hd + dd] = (acc / z) as f32;
                }
            }
            let o = matvec(&wo, &att, d);
            for (a, b) in x.iter_mut().zip(&o) {
                *a += b;
            }
            let xn = rmsnorm(x, &fnw, c.rms_eps);
            let g = matvec(&wg, &xn, dff);
            let u = matvec(&wu, &xn, dff);
            let act: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect();
            let down = matvec(&wd, &act, d);
            for (a, b) in x.iter_mut().zip(&down) {
                *a += b;
            }
        }
    }
    Ok(xs.iter().map(|x| matvec(&head, &rmsnorm(x, &out_norm, c.rms_eps), vocab)).collect())
}
