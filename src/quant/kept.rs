//! Kept columns of the low-bit formats (int3, int2): the few input columns whose calibrated
//! importance (`quant::calibrate`, the mean square of the input) is largest keep their
//! source weights at f16 in every row, outside the groups.
//!
//! The residual stream has a few outlier channels (one input column of a layer's q/k/v
//! holds 373x the mean square in SmolLM2-135M): at 3 bits their weights dominate the
//! products' error, and a group that holds one is fitted around it. Measured in numpy
//! (`scripts/experiments/int3/outlier.py`, GPL-3 / held-out perplexity, fp32 18.83 / 15.92):
//! int3 25.22 / 21.91; 4 kept columns 23.93 / 21.08; 8: 22.89 / 20.82; 16: 22.08 / 19.97;
//! 32: 22.40 / 19.63.
//!
//! A kept column is left out of its group's fit (error weight 0, and its value replaced by
//! the mean of the group's other weights so that it does not widen the starting range);
//! the shader then replaces the group's value at that column with the kept one
//! (`shaders/weights/kept.wgsl`). Storage per matrix shard, u32 words (`[rows, cols]`,
//! `G = cols / 32` groups of 32 columns, `K` kept columns, K even):
//! - `[0]`: K;
//! - `[1 .. 1 + G]`: per group, bit `c % 32` set for each kept column `c` of the group;
//! - `[1 + G .. 1 + 2G]`: kept columns in the groups before it;
//! - then per row the K kept weights as f16, two per word, in column order.

use half::f16;

use crate::error::{Error, Result};
use crate::gpu::WeightFormat;
use crate::quant::fit::Quantizer;
use crate::quant::gpu_formats;

/// Kept columns per matrix at load (`LoadOptions::kept_columns`): 16 measured best on
/// held-out text (module doc); +0.44 bits per weight on a 576-wide matrix, +0.06 at 4096.
pub const DEFAULT_COLUMNS: usize = 16;

/// Columns of the mask words (one per group of 32 columns).
const MASK_GROUP: usize = 32;

/// The `k` columns of largest importance (ascending column order), or none when `k` is 0,
/// the importance is missing, or the width is not whole mask groups. `k` is capped at one
/// per 32 columns (so that narrow matrices stay below the next format's bits: 128 columns
/// keep 4, +0.5 bits per weight) and rounded down to an even count (two f16 per word).
pub fn columns(imp: Option<&[f32]>, k: usize) -> Vec<usize> {
    let Some(imp) = imp else { return Vec::new() };
    let k = (k.min(imp.len() / MASK_GROUP)) & !1;
    if k == 0 || !imp.len().is_multiple_of(MASK_GROUP) {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..imp.len()).collect();
    order.sort_by(|&a, &b| imp[b].total_cmp(&imp[a]).then(a.cmp(&b)));
    let mut cols = order[..k].to_vec();
    cols.sort_unstable();
    cols
}

/// The fit's error weights with the kept columns at 0.
pub fn fit_weights(imp: &[f32], kept: &[usize]) -> Vec<f32> {
    let mut w = imp.to_vec();
    for &c in kept {
        w[c] = 0.0;
    }
    w
}

/// Takes the kept columns out of `x` (`[rows, cols]`): returns their f16 bits (`[rows, K]`)
/// and replaces each in `x` by the mean of its group's other weights (`group` columns per
/// quantisation group).
pub fn take(x: &mut [f32], cols: usize, kept: &[usize], group: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(x.len() / cols.max(1) * kept.len());
    if kept.is_empty() {
        return out;
    }
    // (first column of a group, the kept columns inside it)
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for &c in kept {
        let g0 = c / group * group;
        match groups.last_mut() {
            Some((s, v)) if *s == g0 => v.push(c),
            _ => groups.push((g0, vec![c])),
        }
    }
    for row in x.chunks_exact_mut(cols) {
        out.extend(kept.iter().map(|&c| f16::from_f32(row[c]).to_bits()));
        for (g0, inside) in &groups {
            let others = group - inside.len();
            let sum: f32 = (*g0..g0 + group).filter(|c| !inside.contains(c)).map(|c| row[c]).sum();
            let mean = if others > 0 { sum / others as f32 } else { 0.0 };
            for &c in inside {
                row[c] = mean;
            }
        }
    }
    out
}

/// The kept-column buffer of rows `r0..r1` (module doc), from the f16 bits `values`
/// (`[rows, K]`) that [`take`] returned.
pub fn words(cols: usize, kept: &[usize], values: &[u16], r0: usize, r1: usize) -> Result<Vec<u32>> {
    let k = kept.len();
    if !cols.is_multiple_of(MASK_GROUP) || !k.is_multiple_of(2) || values.len() < r1 * k {
        return Err(Error::internal(format!("kept columns: {k} of {cols} for rows {r0}..{r1}")));
    }
    let g = cols / MASK_GROUP;
    let mut w = vec![0u32; 1 + 2 * g];
    w[0] = k as u32;
    for &c in kept {
        w[1 + c / MASK_GROUP] |= 1 << (c % MASK_GROUP);
    }
    let mut before = 0;
    for i in 0..g {
        w[1 + g + i] = before;
        before += w[1 + i].count_ones();
    }
    w.extend(values[r0 * k..r1 * k].chunks_exact(2).map(|p| u32::from(p[0]) | (u32::from(p[1]) << 16)));
    Ok(w)
}

/// CPU reference of the shader's replacement: the kept weights put back into dequantised
/// `x` (`[rows, cols]`).
pub fn restore(x: &mut [f32], cols: usize, kept: &[usize], values: &[u16]) {
    if kept.is_empty() {
        return;
    }
    for (row, v) in x.chunks_exact_mut(cols).zip(values.chunks_exact(kept.len())) {
        for (&c, &h) in kept.iter().zip(v) {
            row[c] = f16::from_bits(h).to_f32();
        }
    }
}

/// CPU reference of a low-bit matrix as the load stores it (`x`: `[rows, cols]`, `imp`: the
/// calibrated importance of each column): the `k` kept columns at f16, the rest fitted in
/// `format`'s groups with the kept columns' error weights at 0.
pub fn quantize_dequantize(
    format: WeightFormat,
    x: &[f32],
    cols: usize,
    imp: Option<&[f32]>,
    k: usize,
    quantizer: Quantizer,
) -> Result<Vec<f32>> {
    let kept = columns(imp, k);
    let mut x = x.to_vec();
    let values = take(&mut x, cols, &kept, gpu_formats::group(format));
    let fit = imp.map(|imp| fit_weights(imp, &kept));
    let mut y = gpu_formats::quantize_dequantize_weighted(format, &x, fit.as_deref(), quantizer)?;
    restore(&mut y, cols, &kept, &values);
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_important_columns_are_kept_in_column_order() {
        let mut imp = vec![1.0f32; 64];
        imp[40] = 9.0;
        imp[3] = 7.0;
        imp[17] = 8.0;
        assert_eq!(columns(Some(&imp), 2), vec![17, 40]);
        assert_eq!(columns(Some(&imp), 3), vec![17, 40], "rounded down to an even count");
        assert!(columns(None, 16).is_empty());
        assert!(columns(Some(&imp[..36]), 2).is_empty(), "not whole groups of 32");
    }

    #[test]
    fn taken_columns_leave_their_group_mean_and_come_back_at_f16() {
        let cols = 64;
        let mut x: Vec<f32> = (0..2 * cols).map(|i| i as f32 * 0.5).collect();
        let src = x.clone();
        let kept = [1, 33];
        let v = take(&mut x, cols, &kept, 32);
        assert_eq!(v.len(), 4);
        // Row 0, group 0 without column 1: mean of 0.5 * (0, 2..=31).
        let mean0 = (0..32).filter(|&c| c != 1).map(|c| c as f32 * 0.5).sum::<f32>() / 31.0;
        assert_eq!(x[1], mean0);
        let mut back = x.clone();
        restore(&mut back, cols, &kept, &v);
        assert_eq!(back, src);
        let w = words(cols, &kept, &v, 1, 2).expect("words");
        assert_eq!(w[..5], [2, 1 << 1, 1 << 1, 0, 1]);
        assert_eq!(w[5], u32::from(v[2]) | (u32::from(v[3]) << 16));
    }
}
