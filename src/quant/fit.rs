//! Per-group quantiser of the integer GPU formats (CPU reference of `shaders/quantize.wgsl`,
//! which follows it operation by operation).
//!
//! A group of `g` weights `x` is stored as codes `q` with f16 parameters: asymmetric
//! (int4, int3, int2) `x ~ q * d + m`, `q` in `0..=L` (`L = 2^bits - 1`); symmetric (int8)
//! `x ~ q * d`, `q` in `-127..=127`.
//!
//! [`Quantizer::Rtn`] rounds to the nearest level of the min/max (or max-abs) grid.
//! [`Quantizer::Refined`] minimises a weighted squared error instead (weight `mean|x| +
//! |x_i|`, so the large weights that dominate a product are kept closest): from several
//! starting grids (the min/max range shrunk by 0, 10, 20, 30%, which lets outliers clip),
//! it alternates re-rounding the codes with a weighted least-squares fit of `d` and `m` to
//! those codes (the closed-form 2x2 normal equations), and keeps the best pair seen. The
//! first step is round-to-nearest, so the result is never worse than it in that error
//! (at f32 parameters); the codes are re-rounded once more against the f16 parameters.

use half::f16;

/// How the per-group parameters are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Quantizer {
    /// Round to nearest on the min/max grid.
    Rtn,
    /// Least-squares refinement of scale and offset from several starting ranges.
    #[default]
    Refined,
}

/// Starting ranges of the refined quantiser (the shrink of the min/max range).
pub const STARTS: u32 = 4;
/// Alternations of re-rounding and least-squares fitting per start.
pub const ITERS: u32 = 6;

impl Quantizer {
    /// (starting ranges, iterations per start): the shader's override constants.
    pub fn schedule(self) -> (u32, u32) {
        match self {
            Quantizer::Rtn => (1, 0),
            Quantizer::Refined => (STARTS, ITERS),
        }
    }
}

/// One fitted group: f16 bits of `d` and `m` (0 when symmetric) and the codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fit {
    pub d: u16,
    pub m: u16,
    /// Unsigned codes (asymmetric) or two's-complement bytes (symmetric).
    pub q: Vec<i32>,
}

fn code(x: f32, d: f32, m: f32, lo: f32, hi: f32) -> f32 {
    if d == 0.0 { 0.0 } else { ((x - m) / d).round_ties_even().clamp(lo, hi) }
}

/// Weighted squared error of `x` under `(d, m)` and the weighted sums of the least-squares
/// refit. Each weight is the importance `imp[i]` of the element's input column where given
/// (`quant::calibrate`: the mean square of that input, so the sum is the expected squared
/// error of the product), else `av + |x_i|` (`av` = mean |x|: large weights, whose errors
/// move a product most, count more). Returns (err, sum w, sum w q, sum w q^2,
/// sum w x, sum w q x).
fn sweep(x: &[f32], imp: Option<&[f32]>, av: f32, d: f32, m: f32, lo: f32, hi: f32) -> [f32; 6] {
    let mut s = [0f32; 6];
    for (i, &v) in x.iter().enumerate() {
        let w = imp.map_or(av + v.abs(), |c| c[i]);
        let q = code(v, d, m, lo, hi);
        let e = q * d + m - v;
        s[0] += w * e * e;
        s[1] += w;
        s[2] += w * q;
        s[3] += w * q * q;
        s[4] += w * v;
        s[5] += w * q * v;
    }
    s
}

/// Fit one group of `x` at `bits` (2, 3, 4 asymmetric; 8 symmetric).
pub fn fit_group(x: &[f32], bits: u32, quantizer: Quantizer) -> Fit {
    fit_group_weighted(x, None, bits, quantizer)
}

/// [`fit_group`] with the importance of each element's input column, `imp` (`[x.len()]`),
/// as the error weights instead of `mean|x| + |x_i|`.
pub fn fit_group_weighted(x: &[f32], imp: Option<&[f32]>, bits: u32, quantizer: Quantizer) -> Fit {
    let symmetric = bits == 8;
    let (lo, hi) = if symmetric { (-127.0, 127.0) } else { (0.0, ((1u32 << bits) - 1) as f32) };
    let (mut mn, mut mx, mut amax, mut sa) = (f32::MAX, f32::MIN, 0f32, 0f32);
    for &v in x {
        mn = mn.min(v);
        mx = mx.max(v);
        amax = amax.max(v.abs());
        sa += v.abs();
    }
    let av = sa / x.len() as f32;
    let (starts, iters) = quantizer.schedule();
    let (mut best_d, mut best_m, mut best_err) = (0f32, 0f32, f32::MAX);
    for s in 0..starts {
        let shrink = 1.0 - 0.1 * s as f32;
        let (mut d, mut m) = if symmetric {
            (amax * shrink / hi, 0.0)
        } else {
            ((mx - mn) * shrink / hi, mn + (mx - mn) * (1.0 - shrink) * 0.5)
        };
        for it in 0..=iters {
            let [err, sw, swq, swqq, swx, swqx] = sweep(x, imp, av, d, m, lo, hi);
            if err < best_err {
                (best_d, best_m, best_err) = (d, m, err);
            }
            if it == iters {
                break;
            }
            if symmetric {
                if swqq <= 0.0 {
                    break;
                }
                d = swqx / swqq;
            } else {
                let det = sw * swqq - swq * swq;
                if det <= 0.0 {
                    break;
                }
                d = (sw * swqx - swq * swx) / det;
                m = (swx - d * swq) / sw;
            }
        }
    }
    let (d16, m16) = (f16::from_f32(best_d), f16::from_f32(best_m));
    let (d, m) = (d16.to_f32(), m16.to_f32());
    let q = x.iter().map(|&v| code(v, d, m, lo, hi) as i32).collect();
    Fit { d: d16.to_bits(), m: if symmetric { 0 } else { m16.to_bits() }, q }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let u = s as f32 / u32::MAX as f32 - 0.5;
                u * u * u * 8.0 // heavy-tailed, like real weights
            })
            .collect()
    }

    fn sse(x: &[f32], f: &Fit, bits: u32) -> f32 {
        let (d, m) = (f16::from_bits(f.d).to_f32(), f16::from_bits(f.m).to_f32());
        let _ = bits;
        x.iter().zip(&f.q).map(|(v, q)| (*q as f32 * d + m - v).powi(2)).sum()
    }

    #[test]
    fn refined_groups_have_lower_error_than_round_to_nearest() {
        for bits in [2, 3, 4, 8] {
            let (mut rtn, mut refined) = (0f32, 0f32);
            for g in 0..64 {
                let x = values(64, g + 1);
                rtn += sse(&x, &fit_group(&x, bits, Quantizer::Rtn), bits);
                refined += sse(&x, &fit_group(&x, bits, Quantizer::Refined), bits);
            }
            assert!(refined < rtn * if bits == 8 { 1.0 } else { 0.9 }, "{bits} bits: {refined} vs {rtn}");
        }
    }

    #[test]
    fn column_weights_lower_the_weighted_error() {
        // Importance over three decades: the weighted fit trades unimportant columns' error
        // for the important ones'.
        let imp: Vec<f32> = values(32, 77).iter().map(|v| 10f32.powf(3.0 * v.abs().min(1.0))).collect();
        for bits in [2, 3] {
            let werr = |x: &[f32], f: &Fit| {
                let (d, m) = (f16::from_bits(f.d).to_f32(), f16::from_bits(f.m).to_f32());
                x.iter().zip(&f.q).zip(&imp).map(|((v, q), w)| w * (*q as f32 * d + m - v).powi(2)).sum::<f32>()
            };
            let (mut plain, mut weighted) = (0f32, 0f32);
            for g in 0..64 {
                let x = values(32, g + 100);
                plain += werr(&x, &fit_group(&x, bits, Quantizer::Refined));
                weighted += werr(&x, &fit_group_weighted(&x, Some(&imp), bits, Quantizer::Refined));
            }
            assert!(weighted < plain * 0.9, "{bits} bits: {weighted} vs {plain}");
        }
    }

    #[test]
    fn codes_stay_in_range_and_constant_groups_are_exact() {
        let x = values(32, 9);
        for bits in [2, 3, 4] {
            let f = fit_group(&x, bits, Quantizer::Refined);
            assert!(f.q.iter().all(|q| (0..1 << bits).contains(q)), "{bits}: {:?}", f.q);
        }
        let f = fit_group(&x, 8, Quantizer::Refined);
        assert!(f.q.iter().all(|q| (-127..=127).contains(q)));
        let c = fit_group(&[0.5; 32], 3, Quantizer::Refined);
        assert_eq!(sse(&[0.5; 32], &c, 3), 0.0);
    }
}
