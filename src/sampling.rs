//! Sampling settings and the CPU reference of the GPU sampler (shaders/sample.wgsl).
//! The reference follows the kernel step by step (same penalty rule, same threshold search
//! with the same grid points and the same order of additions, same chunked inverse CDF,
//! same counter-based RNG) so that tests can compare picks.

use crate::gpu::params::SampleParams;

/// Sampling settings of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleSettings {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// How many recent ids the penalty looks at.
    pub repetition_window: u32,
    pub seed: u64,
}

impl Default for SampleSettings {
    fn default() -> Self {
        SampleSettings {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: 0,
        }
    }
}

impl SampleSettings {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// The GPU uniform for these settings.
    pub fn to_params(&self, vocab: u32, last_row: bool) -> SampleParams {
        self.params_with_mode(vocab, u32::from(last_row))
    }

    /// The uniform of the every-row sampler: one workgroup per logits row, row `r` writing
    /// the id at `pos + r + 1` with the RNG of that position (verification of drafts).
    pub fn to_every_row_params(&self, vocab: u32) -> SampleParams {
        self.params_with_mode(vocab, SAMPLE_EVERY_ROW)
    }

    fn params_with_mode(&self, vocab: u32, mode: u32) -> SampleParams {
        SampleParams {
            vocab,
            temperature: self.temperature.max(0.0),
            top_k: self.top_k,
            top_p: if self.top_p > 0.0 && self.top_p < 1.0 { self.top_p } else { 1.0 },
            rep_penalty: if self.repetition_penalty > 0.0 { self.repetition_penalty } else { 1.0 },
            rep_window: self.repetition_window,
            seed_lo: self.seed as u32,
            seed_hi: (self.seed >> 32) as u32,
            last_row: mode,
            _pad: [0; 3],
        }
    }
}

/// `SampleParams::last_row` value of the every-row mode (shaders/sample.wgsl).
pub const SAMPLE_EVERY_ROW: u32 = 2;

const WG: usize = 256;
/// The threshold search splits [lo, hi] into GRID parts per pass (GRID - 1 inner points).
const GRID: usize = 16;
const PTS: usize = GRID - 1;
const SEARCH_PASSES: usize = 8;

/// `f` summed over ids `0..n` as the kernel's workgroup does: thread t adds ids t, t + WG,
/// ... in order, then a tree (level s: thread t < s adds thread t + s) combines the threads.
fn workgroup_sum<const N: usize>(n: usize, f: impl Fn(usize, &mut [f32; N])) -> [f32; N] {
    let mut per_thread = [[0.0f32; N]; WG];
    for (t, acc) in per_thread.iter_mut().enumerate() {
        for i in (t..n).step_by(WG) {
            f(i, acc);
        }
    }
    let mut s = WG / 2;
    while s > 0 {
        let (low, high) = per_thread.split_at_mut(s);
        for (a, b) in low.iter_mut().zip(high.iter()) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += *y;
            }
        }
        s /= 2;
    }
    per_thread[0]
}

/// The kernel's grid points of `[lo, hi]`: repeated additions of (hi - lo) / GRID, capped at hi.
fn grid_points(lo: f32, hi: f32) -> [f32; PTS] {
    let step = (hi - lo) * (1.0 / GRID as f32);
    let mut v = lo;
    std::array::from_fn(|_| {
        v = (v + step).min(hi);
        v
    })
}

/// The new (lo, hi) of a search pass: the highest passing point and the one above it.
fn narrow(lo: f32, hi: f32, g: &[f32; PTS], pass: impl Fn(usize) -> bool) -> (f32, f32) {
    let j = (0..PTS).rev().find(|&j| pass(j)).map_or(0, |j| j + 1);
    let new_lo = if j > 0 { g[j - 1] } else { lo };
    let new_hi = if j < PTS { g[j] } else { hi };
    (new_lo, new_hi)
}

fn pcg(v: u32) -> u32 {
    let s = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277_803_737);
    (w >> 22) ^ w
}

/// The sampler's uniform random number for the id written at `index`.
pub fn uniform01(seed: u64, index: u32) -> f32 {
    let h = pcg((seed as u32) ^ pcg(((seed >> 32) as u32) ^ pcg(index)));
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// CPU reference: the id the GPU sampler picks from `logits` (modified in place by the
/// repetition penalty) given the ids so far (`history`, whose length is the index written).
pub fn sample_reference(logits: &mut [f32], history: &[u32], s: &SampleSettings) -> u32 {
    let vocab = logits.len();
    let next = history.len();
    if s.repetition_penalty != 1.0 && s.repetition_penalty > 0.0 && s.repetition_window > 0 {
        let w = (s.repetition_window as usize).min(next);
        let window = &history[next - w..];
        for (i, &id) in window.iter().enumerate() {
            if window[..i].contains(&id) || id as usize >= vocab {
                continue;
            }
            let l = &mut logits[id as usize];
            *l = if *l > 0.0 { *l / s.repetition_penalty } else { *l * s.repetition_penalty };
        }
    }
    let mut argmax = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[argmax] {
            argmax = i;
        }
    }
    if s.temperature <= 0.0 {
        return argmax as u32;
    }
    let mx = logits[argmax];
    let inv_t = 1.0 / s.temperature;
    let p = |l: f32| ((l - mx) * inv_t).exp();
    let [total] = workgroup_sum(vocab, |i, z: &mut [f32; 1]| z[0] += p(logits[i]));
    let floor_v = mx - 60.0 * s.temperature;
    let (mut lo_k, mut hi_k, mut lo_p, mut hi_p) = (floor_v, mx, floor_v, mx);
    let top_p = if s.top_p > 0.0 && s.top_p < 1.0 { s.top_p } else { 1.0 };
    let use_k = s.top_k > 0 && (s.top_k as usize) < vocab;
    let use_p = top_p < 1.0;
    if use_k || use_p {
        let target_mass = top_p * total;
        for _ in 0..SEARCH_PASSES {
            let (gk, gp) = (grid_points(lo_k, hi_k), grid_points(lo_p, hi_p));
            let mut cnt = [0usize; PTS];
            if use_k {
                for &l in logits.iter() {
                    for j in 0..PTS {
                        cnt[j] += usize::from(l >= gk[j]);
                    }
                }
            }
            let mass = workgroup_sum(vocab, |i, m: &mut [f32; PTS]| {
                let l = logits[i];
                if use_p && l >= gp[0] {
                    let e = p(l);
                    for j in 0..PTS {
                        if l >= gp[j] {
                            m[j] += e;
                        }
                    }
                }
            });
            (lo_k, hi_k) = narrow(lo_k, hi_k, &gk, |j| cnt[j] >= s.top_k as usize);
            (lo_p, hi_p) = narrow(lo_p, hi_p, &gp, |j| mass[j] >= target_mass);
        }
    }
    let mut thr = floor_v;
    if use_k {
        thr = thr.max(lo_k);
    }
    if use_p {
        thr = thr.max(lo_p);
    }
    let chunk = vocab.div_ceil(WG);
    let parts: Vec<f32> = (0..WG)
        .map(|t| {
            let c0 = (t * chunk).min(vocab);
            let c1 = (c0 + chunk).min(vocab);
            logits[c0..c1].iter().filter(|&&l| l >= thr).map(|&l| p(l)).sum()
        })
        .collect();
    let kept: f32 = parts.iter().sum();
    let u = uniform01(s.seed, next as u32) * kept;
    let mut acc = 0.0;
    let mut owner = None;
    let mut last_nonzero = 0;
    let mut rest = 0.0;
    for (i, &part) in parts.iter().enumerate() {
        if part > 0.0 {
            last_nonzero = i;
            if owner.is_none() && u < acc + part {
                owner = Some(i);
                rest = u - acc;
            }
        }
        acc += part;
    }
    let owner = owner.unwrap_or_else(|| {
        rest = parts[last_nonzero];
        last_nonzero
    });
    let c0 = (owner * chunk).min(vocab);
    let c1 = (c0 + chunk).min(vocab);
    let mut acc = 0.0;
    let mut pick = argmax;
    for (i, &l) in logits.iter().enumerate().take(c1).skip(c0) {
        if l >= thr {
            acc += p(l);
            pick = i;
            if rest < acc {
                break;
            }
        }
    }
    pick as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_argmax_lowest_id_on_ties() {
        let mut l = vec![0.0, 3.0, 1.0, 3.0];
        assert_eq!(sample_reference(&mut l, &[], &SampleSettings::greedy()), 1);
    }

    #[test]
    fn repetition_penalty_moves_the_argmax() {
        let mut l = vec![0.0, 3.0, 2.9, -1.0];
        let s = SampleSettings { repetition_penalty: 1.3, ..SampleSettings::greedy() };
        assert_eq!(sample_reference(&mut l, &[1, 1], &s), 2);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        // Distinct values: with ties at the top, top_k = 1 keeps every tied id.
        let mut l: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() + i as f32 * 1e-4).collect();
        let best = sample_reference(&mut l.clone(), &[], &SampleSettings::greedy());
        for seed in 0..20 {
            let s = SampleSettings { temperature: 1.5, top_k: 1, seed, ..Default::default() };
            assert_eq!(sample_reference(&mut l, &[7; 3], &s), best);
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // Two tokens with probabilities 0.75 / 0.25 at temperature 1.
        let base = vec![(3.0f32).ln(), 0.0, -100.0];
        let mut hits = 0;
        let n = 4000;
        for i in 0..n {
            let s = SampleSettings { temperature: 1.0, seed: 42, ..Default::default() };
            let hist = vec![0u32; i];
            if sample_reference(&mut base.clone(), &hist, &s) == 0 {
                hits += 1;
            }
        }
        let f = hits as f64 / n as f64;
        assert!((f - 0.75).abs() < 0.03, "frequency {f}");
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // probabilities ~ 0.5, 0.3, 0.2: top_p 0.6 keeps the first two only.
        let base = vec![(0.5f32).ln(), (0.3f32).ln(), (0.2f32).ln()];
        for seed in 0..200 {
            let s = SampleSettings { temperature: 1.0, top_p: 0.6, seed, ..Default::default() };
            assert_ne!(sample_reference(&mut base.clone(), &[], &s), 2);
        }
    }

    #[test]
    fn same_seed_same_pick() {
        let base: Vec<f32> = (0..500).map(|i| (i as f32 * 0.37).sin()).collect();
        let s = SampleSettings { temperature: 0.8, top_p: 0.9, top_k: 40, seed: 7, ..Default::default() };
        let a = sample_reference(&mut base.clone(), &[1, 2, 3], &s);
        let b = sample_reference(&mut base.clone(), &[1, 2, 3], &s);
        assert_eq!(a, b);
    }
}
