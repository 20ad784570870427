// Decode matrix-vector product, one input row per grid y:
//   y[t, n] (+)= sum_k in(t, k) * W[n, k] (+ bias[n])
// where in(t, k) is x[t, k], optionally RMS-normalised (FUSE_NORM, weight in `aux`) or
// SwiGLU-combined from [gate | up] halves (SWIGLU_IN). A workgroup owns ROWS output rows;
// its threads stride over k with vec4 loads and reduce in workgroup memory.
// The weight prelude (weights/*.wgsl) supplies `load_w4` (4 weights), `load_w8` (8
// weights as the columns of a mat2x4, k a multiple of 8), `dot_w8` (8 weights dotted with 8
// inputs given their sum, for the `wide` entry point) and `dot_w32` (the same for 32, for the
// `cpu` entry point); weights/dot_w*_from_w8.wgsl make the last two from `load_w8`.

struct MatParams {
    n: u32,         // output rows
    k: u32,         // input length (multiple of 4)
    x_stride: u32,  // elements between input rows
    y_stride: u32,  // elements between output rows
    eps: f32,       // RMSNorm epsilon
    last_row: u32,  // 1: read only input row state.n_tokens - 1 (lm_head after prefill)
    y_off: u32,     // first output row of this weight shard
    head_dim: u32,  // COMBINE_SPLIT: attention head size of the partials
}

override WG: u32 = 64;          // threads per workgroup, power of two
override TPR: u32 = 64;         // threads sharing one group of rows, power of two <= WG
override ROWS: u32 = 4;         // rows per thread group, 1..=4 (`cpu`: 1..=8)
override FUSE_NORM: bool = false;
override SWIGLU_IN: bool = false;
override ACCUMULATE: bool = false;
override HAS_BIAS: bool = false;
// Input rows per workgroup, 1..=4: with more than 1 (batched decode steps) a workgroup reads
// its weights once for rows wid.y * BATCH .. + BATCH - 1 (those past state.n_tokens are
// computed from the last row and not stored); with 1, the row is the grid's y.
override BATCH: u32 = 1;
// > 0: the input `x` is the split decode attention's partials over this many key splits
// ([rows, n_heads, SPLIT, 4 + hd] f32: max, sum, 0, 0, then hd sums), merged per
// element as the combine kernel would (the o projection then needs no combine dispatch).
override COMBINE_SPLIT: u32 = 0u;

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> aux: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read> state: array<u32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> parts: array<vec4<f32>, 256>;
var<private> out_row: u32;
// Under ACCUMULATE, the output rows' values loaded early by `load_onto` (row0 + i in
// component i), which `store` then adds to instead of loading them after the reduction.
var<private> onto: vec4<f32>;
var<private> onto_loaded: bool;

// Input elements kb..kb+3 of the row at `base` (kb a multiple of 4), SwiGLU-combined when
// the variant asks; RMSNorm is applied in two parts (the weight `aux` here, 1/rms at the end).
fn xin4(base: u32, kb: u32) -> vec4<f32> {
    if (COMBINE_SPLIT > 0u) {
        return combined(base / p.x_stride, kb, false).a;
    }
    var v = x[(base + kb) / 4u];
    if (SWIGLU_IN) {
        let u = x[(base + p.k + kb) / 4u];
        v = v / (1.0 + exp(-v)) * u;
    }
    return v;
}

// Input elements kb..kb+7 (kb a multiple of 8) of the row at `base`, as `xin4` gives them.
fn xin8(base: u32, kb: u32) -> X2 {
    if (COMBINE_SPLIT > 0u && p.head_dim % 8u == 0u) {
        return combined(base / p.x_stride, kb, true);
    }
    return X2(xin4(base, kb), xin4(base, kb + 4u));
}

// Attention output elements of activation row `row` from the partials: kb..kb+3 in `a`, and
// with `eight` kb+4..kb+7 in `b` (one head: hd a multiple of 4, of 8 with `eight`); per
// element the arithmetic of attention.wgsl's `combine`. Every load is issued before any is
// used: none depends on the maximum or sits behind a branch (an empty split adds zeros, the
// same sums), and the split weights serve both vec4. H100, 135M int4 (`wide`, eight at a
// time): the o projection 10.2 -> 8.9 µs per layer in the stream, GPU time per decode step
// 1241 -> 1203 µs.
fn combined(row: u32, kb: u32, eight: bool) -> X2 {
    let hd = p.head_dim;
    let stride = hd / 4u + 1u;
    let h = kb / hd;
    let d4 = (kb % hd) / 4u;
    let b = (row * (p.k / hd) + h) * COMBINE_SPLIT * stride;
    var mx = -3.0e38;
    for (var z = 0u; z < COMBINE_SPLIT; z++) {
        let ml = x[b + z * stride];
        mx = max(mx, select(-3.0e38, ml.x, ml.y > 0.0));
    }
    var l = 0.0;
    var lo = vec4<f32>(0.0);
    var hi = vec4<f32>(0.0);
    for (var z = 0u; z < COMBINE_SPLIT; z++) {
        let o = b + z * stride;
        let ml = x[o];
        let w = select(0.0, exp(ml.x - mx), ml.y > 0.0);
        l += ml.y * w;
        lo += x[o + 1u + d4] * w;
        if (eight) {
            hi += x[o + 2u + d4] * w;
        }
    }
    return X2(lo / l, hi / l);
}

// The input row of this workgroup: the grid's y, or the last prefill token (lm_head).
fn input_row(wid: vec3<u32>) -> u32 {
    out_row = wid.y;
    if (p.last_row != 0u) {
        return max(state[1], 1u) - 1u;
    }
    return wid.y;
}

// Input row `i` of a BATCH workgroup (clamped to the last row: a dead row repeats it).
fn batch_row(wid: vec3<u32>, i: u32) -> u32 {
    return min(wid.y * BATCH + i, max(state[1], 1u) - 1u);
}

// Stores the rows of batch input `i` (skipped when that input row is past the count).
fn finish_batch(wid: vec3<u32>, i: u32, tid: u32, lane: u32, row0: u32, acc: vec4<f32>, ss: f32) {
    out_row = wid.y * BATCH + i;
    finish(tid, lane, row0, acc, ss, out_row < state[1]);
}

// Weights of rows r0..r3 at k4 (one vec4 each): loaded once, dotted with every input row.
struct W4 {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
}

fn load_rows4(r0: u32, r1: u32, r2: u32, r3: u32, k4: u32, k4n: u32) -> W4 {
    var w = W4(load_w4(r0, k4, k4n), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    if (ROWS > 1u) {
        w.b = load_w4(r1, k4, k4n);
    }
    if (ROWS > 2u) {
        w.c = load_w4(r2, k4, k4n);
    }
    if (ROWS > 3u) {
        w.d = load_w4(r3, k4, k4n);
    }
    return w;
}

fn dot_rows4(w: W4, xv: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(w.a, xv), dot(w.b, xv), dot(w.c, xv), dot(w.d, xv));
}

// The (norm-weighted) input elements at vec4 indices ka and kb of input row `base`, with
// their x^2 added to `ss` in the order `main` and `wide` add them (same rounding).
struct X2 {
    a: vec4<f32>,
    b: vec4<f32>,
}

// `g`: the norm weights at ka and kb (loaded once for every input row).
fn xin_pair(base: u32, ka: u32, kb: u32, g: X2, ss: ptr<function, f32>) -> X2 {
    var xa = xin4(base, ka * 4u);
    var xb = xin4(base, kb * 4u);
    if (FUSE_NORM) {
        *ss += dot(xa, xa) + dot(xb, xb);
        xa *= g.a;
        xb *= g.b;
    }
    return X2(xa, xb);
}

fn xin_one(base: u32, k4: u32, g: vec4<f32>, ss: ptr<function, f32>) -> vec4<f32> {
    var v = xin4(base, k4 * 4u);
    if (FUSE_NORM) {
        *ss += dot(v, v);
        v *= g;
    }
    return v;
}

// The norm weights at ka and kb (zeros without FUSE_NORM, where they are unused).
fn norm_pair(ka: u32, kb: u32) -> X2 {
    if (FUSE_NORM) {
        return X2(aux[ka], aux[kb]);
    }
    return X2(vec4<f32>(0.0), vec4<f32>(0.0));
}

// `main`'s two k steps for one input row.
fn dot_pair4(wa: W4, wb: W4, x: X2) -> vec4<f32> {
    return dot_rows4(wa, x.a) + dot_rows4(wb, x.b);
}

// Weights of rows r0..r3 at k4 dotted with the (norm-weighted) input xv.
fn rows4(r0: u32, r1: u32, r2: u32, r3: u32, k4: u32, k4n: u32, xv: vec4<f32>) -> vec4<f32> {
    var d = vec4<f32>(dot(load_w4(r0, k4, k4n), xv), 0.0, 0.0, 0.0);
    if (ROWS > 1u) {
        d.y = dot(load_w4(r1, k4, k4n), xv);
    }
    if (ROWS > 2u) {
        d.z = dot(load_w4(r2, k4, k4n), xv);
    }
    if (ROWS > 3u) {
        d.w = dot(load_w4(r3, k4, k4n), xv);
    }
    return d;
}

// A workgroup owns (WG / TPR) * ROWS rows. TPR = WG suits GPUs (coalesced loads, one
// reduction); TPR = 1 runs no barrier at all (CPU rasterisers, where a workgroup is a SIMD
// loop, use the `cpu` entry point below instead).
// RMSNorm needs no pass of its own: sum_k w x g / rms = (sum_k w x g) / rms, and the
// threads of a row group see every input element once, so they sum x^2 in the same loop and
// reduce it with the dot products; weight loads start at once instead of after a norm phase.
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    let xbase = input_row(wid) * p.x_stride;

    // Accumulate up to 4 rows in the components of one vec4 (no run-time-indexed arrays,
    // which some drivers keep in slow local memory). Rows past the end read the last row
    // and are not stored. Two k steps per iteration keep twice the loads in flight.
    let k4n = p.k / 4u;
    let last = p.n - 1u;
    let r0 = min(row0, last);
    let r1 = min(row0 + 1u, last);
    let r2 = min(row0 + 2u, last);
    let r3 = min(row0 + 3u, last);
    var acc = vec4<f32>(0.0);
    var ss = 0.0;
    var k4 = lane;
    for (; k4 + TPR < k4n; k4 += 2u * TPR) {
        var xa = xin4(xbase, k4 * 4u);
        var xb = xin4(xbase, (k4 + TPR) * 4u);
        if (FUSE_NORM) {
            ss += dot(xa, xa) + dot(xb, xb);
            xa *= aux[k4];
            xb *= aux[k4 + TPR];
        }
        acc += rows4(r0, r1, r2, r3, k4, k4n, xa) + rows4(r0, r1, r2, r3, k4 + TPR, k4n, xb);
    }
    if (k4 < k4n) {
        var xa = xin4(xbase, k4 * 4u);
        if (FUSE_NORM) {
            ss += dot(xa, xa);
            xa *= aux[k4];
        }
        acc += rows4(r0, r1, r2, r3, k4, k4n, xa);
    }
    finish(tid, lane, row0, acc, ss, true);
}

// Weights 8*k8..8*k8+7 of rows r0..r3 dotted with the (norm-weighted) input xa | xb; the
// inputs' sum lets int4's `dot_w8` apply each row's scale and minimum once per 8 weights.
fn rows8(r0: u32, r1: u32, r2: u32, r3: u32, k8: u32, k8n: u32, xa: vec4<f32>, xb: vec4<f32>) -> vec4<f32> {
    let xs = xa + xb;
    let xsum = xs.x + xs.y + xs.z + xs.w;
    var d = vec4<f32>(dot_w8(r0, k8, k8n, xa, xb, xsum), 0.0, 0.0, 0.0);
    if (ROWS > 1u) {
        d.y = dot_w8(r1, k8, k8n, xa, xb, xsum);
    }
    if (ROWS > 2u) {
        d.z = dot_w8(r2, k8, k8n, xa, xb, xsum);
    }
    if (ROWS > 3u) {
        d.w = dot_w8(r3, k8, k8n, xa, xb, xsum);
    }
    return d;
}

// GPUs, k a multiple of 8: a thread takes 8 consecutive weights per row (`load_w8`: one
// whole u32 of int4 instead of half of one shared with the next lane), so neighbouring
// lanes read neighbouring words and every byte loaded is used.
@compute @workgroup_size(WG)
fn wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    let xbase = input_row(wid) * p.x_stride;

    let k8n = p.k / 8u;
    let last = p.n - 1u;
    let r0 = min(row0, last);
    let r1 = min(row0 + 1u, last);
    let r2 = min(row0 + 2u, last);
    let r3 = min(row0 + 3u, last);
    var acc = vec4<f32>(0.0);
    var ss = 0.0;
    for (var k8 = lane; k8 < k8n; k8 += TPR) {
        let x8 = xin8(xbase, k8 * 8u);
        var xa = x8.a;
        var xb = x8.b;
        if (FUSE_NORM) {
            ss += dot(xa, xa) + dot(xb, xb);
            xa *= aux[2u * k8];
            xb *= aux[2u * k8 + 1u];
        }
        acc += rows8(r0, r1, r2, r3, k8, k8n, xa, xb);
    }
    finish(tid, lane, row0, acc, ss, true);
}

// Accumulators of a batched workgroup: dot products and x^2 sums of its 4 input rows (kept
// in locals while accumulating: naga 30 cannot write pointers to struct members here).
struct BatchAcc {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    s0: f32,
    s1: f32,
    s2: f32,
    s3: f32,
}

// Start of each input row of a batched workgroup, and its ROWS weight rows (clamped).
fn batch_inputs(wid: vec3<u32>) -> vec4<u32> {
    return vec4<u32>(batch_row(wid, 0u), batch_row(wid, 1u), batch_row(wid, 2u), batch_row(wid, 3u)) * p.x_stride;
}

fn clamped_rows(row0: u32) -> vec4<u32> {
    return min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u));
}

fn finish_batch4(wid: vec3<u32>, tid: u32, lane: u32, row0: u32, acc: BatchAcc) {
    finish_batch(wid, 0u, tid, lane, row0, acc.a0, acc.s0);
    if (BATCH > 1u) {
        finish_batch(wid, 1u, tid, lane, row0, acc.a1, acc.s1);
    }
    if (BATCH > 2u) {
        finish_batch(wid, 2u, tid, lane, row0, acc.a2, acc.s2);
    }
    if (BATCH > 3u) {
        finish_batch(wid, 3u, tid, lane, row0, acc.a3, acc.s3);
    }
}

// Batched decode (BATCH > 1, GPUs): like `main`, each weight loaded once for BATCH input
// rows, grid y = rows / BATCH rounded up.
@compute @workgroup_size(WG)
fn batch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    let x = batch_inputs(wid);
    let r = clamped_rows(row0);
    let k4n = p.k / 4u;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var s0 = 0.0;
    var s1 = 0.0;
    var s2 = 0.0;
    var s3 = 0.0;
    var k4 = lane;
    for (; k4 + TPR < k4n; k4 += 2u * TPR) {
        let wa = load_rows4(r.x, r.y, r.z, r.w, k4, k4n);
        let wb = load_rows4(r.x, r.y, r.z, r.w, k4 + TPR, k4n);
        let g = norm_pair(k4, k4 + TPR);
        a0 += dot_pair4(wa, wb, xin_pair(x.x, k4, k4 + TPR, g, &s0));
        if (BATCH > 1u) {
            a1 += dot_pair4(wa, wb, xin_pair(x.y, k4, k4 + TPR, g, &s1));
        }
        if (BATCH > 2u) {
            a2 += dot_pair4(wa, wb, xin_pair(x.z, k4, k4 + TPR, g, &s2));
        }
        if (BATCH > 3u) {
            a3 += dot_pair4(wa, wb, xin_pair(x.w, k4, k4 + TPR, g, &s3));
        }
    }
    if (k4 < k4n) {
        let w = load_rows4(r.x, r.y, r.z, r.w, k4, k4n);
        let g = norm_pair(k4, k4).a;
        a0 += dot_rows4(w, xin_one(x.x, k4, g, &s0));
        if (BATCH > 1u) {
            a1 += dot_rows4(w, xin_one(x.y, k4, g, &s1));
        }
        if (BATCH > 2u) {
            a2 += dot_rows4(w, xin_one(x.z, k4, g, &s2));
        }
        if (BATCH > 3u) {
            a3 += dot_rows4(w, xin_one(x.w, k4, g, &s3));
        }
    }
    finish_batch4(wid, tid, lane, row0, BatchAcc(a0, a1, a2, a3, s0, s1, s2, s3));
}

// Batched decode with 8 weights per thread (`wide`'s layout, k a multiple of 8).
@compute @workgroup_size(WG)
fn batch_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    let x = batch_inputs(wid);
    let r = clamped_rows(row0);
    let k8n = p.k / 8u;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var s0 = 0.0;
    var s1 = 0.0;
    var s2 = 0.0;
    var s3 = 0.0;
    for (var k8 = lane; k8 < k8n; k8 += TPR) {
        let w0 = load_w8(r.x, k8, k8n);
        var w1 = w0;
        var w2 = w0;
        var w3 = w0;
        if (ROWS > 1u) {
            w1 = load_w8(r.y, k8, k8n);
        }
        if (ROWS > 2u) {
            w2 = load_w8(r.z, k8, k8n);
        }
        if (ROWS > 3u) {
            w3 = load_w8(r.w, k8, k8n);
        }
        let ka = 2u * k8;
        let kb = ka + 1u;
        let g = norm_pair(ka, kb);
        a0 += dot_rows8(w0, w1, w2, w3, xin_pair(x.x, ka, kb, g, &s0));
        if (BATCH > 1u) {
            a1 += dot_rows8(w0, w1, w2, w3, xin_pair(x.y, ka, kb, g, &s1));
        }
        if (BATCH > 2u) {
            a2 += dot_rows8(w0, w1, w2, w3, xin_pair(x.z, ka, kb, g, &s2));
        }
        if (BATCH > 3u) {
            a3 += dot_rows8(w0, w1, w2, w3, xin_pair(x.w, ka, kb, g, &s3));
        }
    }
    finish_batch4(wid, tid, lane, row0, BatchAcc(a0, a1, a2, a3, s0, s1, s2, s3));
}

fn dot_rows8(w0: mat2x4<f32>, w1: mat2x4<f32>, w2: mat2x4<f32>, w3: mat2x4<f32>, x: X2) -> vec4<f32> {
    return vec4<f32>(
        dot(w0[0], x.a) + dot(w0[1], x.b),
        dot(w1[0], x.a) + dot(w1[1], x.b),
        dot(w2[0], x.a) + dot(w2[1], x.b),
        dot(w3[0], x.a) + dot(w3[1], x.b),
    );
}

// Reduce the TPR partial sums (dot products and, with FUSE_NORM, x^2) of each row group and
// store its rows. Uniform control flow.
fn finish(tid: u32, lane: u32, row0: u32, partial: vec4<f32>, partial_ss: f32, live: bool) -> vec4<f32> {
    let t = tree_sums(tid, lane, RowSums(partial, partial_ss), 1u);
    return store_reduced(lane, row0, t.acc, t.ss, live);
}

// A row group's sums and (FUSE_NORM) sum of squares.
struct RowSums {
    acc: vec4<f32>,
    ss: f32,
}

// The reduction tree's levels from TPR / 2 lanes apart down to `lowest` through workgroup
// memory, lane l < s adding lane l + s (every thread calls it: barriers); the sums lanes
// 0..lowest hold then. TPR 1: `v` as it is.
fn tree_sums(tid: u32, lane: u32, v: RowSums, lowest: u32) -> RowSums {
    if (TPR <= lowest) {
        return v;
    }
    parts[tid] = v.acc;
    red[tid] = v.ss;
    workgroupBarrier();
    for (var s = TPR / 2u; s >= lowest; s >>= 1u) {
        if (lane < s) {
            parts[tid] += parts[tid + s];
            if (FUSE_NORM) {
                red[tid] += red[tid + s];
            }
        }
        workgroupBarrier();
    }
    return RowSums(parts[tid], red[tid]);
}

// `finish` after the reduction: the row group's sums `acc` and (FUSE_NORM) `ss`.
fn store_reduced(lane: u32, row0: u32, total: vec4<f32>, ss: f32, live: bool) -> vec4<f32> {
    var acc = total;
    if (FUSE_NORM) {
        acc *= inverseSqrt(ss / f32(p.k) + p.eps);
    }
    if (lane == 0u && live) {
        store4(row0, 0u, acc);
    }
    return acc;
}

// Rows row0 + i of a thread group's ROWS rows from acc[i], for the rows first + i < ROWS
// (`first`: the place of row0 among them; 4 for the `cpu` entry point's second vec4).
fn store4(row0: u32, first: u32, acc: vec4<f32>) {
    store(row0, acc.x, onto.x);
    if (ROWS > first + 1u) {
        store(row0 + 1u, acc.y, onto.y);
    }
    if (ROWS > first + 2u) {
        store(row0 + 2u, acc.z, onto.z);
    }
    if (ROWS > first + 3u) {
        store(row0 + 3u, acc.w, onto.w);
    }
}

// Output row `row` <- v (+ bias), added to the row's value under ACCUMULATE: `early`, when
// `load_onto` loaded it, else loaded here.
fn store(row: u32, v: f32, early: f32) {
    if (row >= p.n) {
        return;
    }
    var o = v;
    if (HAS_BIAS) {
        o += bias[p.y_off + row];
    }
    let yi = out_row * p.y_stride + p.y_off + row;
    if (ACCUMULATE) {
        var prev = early;
        if (!onto_loaded) {
            prev = y[yi];
        }
        y[yi] = prev + o;
    } else {
        y[yi] = o;
    }
}

// Under ACCUMULATE, load the values of output rows row0.. (the first ROWS, within p.n) that
// `store` adds to, so that the load is in flight with the weights' and not a round trip after
// the reduction (`out_row` set). The same sums: the rows are not written before `store`.
fn load_onto(row0: u32) {
    if (!ACCUMULATE) {
        return;
    }
    let base = out_row * p.y_stride + p.y_off;
    let last = p.n - 1u;
    let r = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
    onto = vec4<f32>(y[base + r.x], y[base + r.y], y[base + r.z], y[base + r.w]);
    onto_loaded = true;
}

// The 32 (norm-weighted) input elements of weight group `g` of the row at `base`, as the
// columns of two mat4x4 (4 consecutive k each), with their sum for `dot_w32`; their x^2 is
// added to `ss` under FUSE_NORM.
struct X32 {
    a: mat4x4<f32>,
    b: mat4x4<f32>,
    sum: f32,
}

fn x32(base: u32, g: u32, ss: ptr<function, f32>) -> X32 {
    let kb = g * 32u;
    var xa = mat4x4<f32>(xin4(base, kb), xin4(base, kb + 4u), xin4(base, kb + 8u), xin4(base, kb + 12u));
    var xb = mat4x4<f32>(xin4(base, kb + 16u), xin4(base, kb + 20u), xin4(base, kb + 24u), xin4(base, kb + 28u));
    if (FUSE_NORM) {
        let sq = xa[0] * xa[0] + xa[1] * xa[1] + xa[2] * xa[2] + xa[3] * xa[3] + xb[0] * xb[0] + xb[1] * xb[1]
            + xb[2] * xb[2] + xb[3] * xb[3];
        *ss += sq.x + sq.y + sq.z + sq.w;
        let a = g * 8u;
        xa = mat4x4<f32>(xa[0] * aux[a], xa[1] * aux[a + 1u], xa[2] * aux[a + 2u], xa[3] * aux[a + 3u]);
        xb = mat4x4<f32>(xb[0] * aux[a + 4u], xb[1] * aux[a + 5u], xb[2] * aux[a + 6u], xb[3] * aux[a + 7u]);
    }
    let xs4 = xa[0] + xa[1] + xa[2] + xa[3] + xb[0] + xb[1] + xb[2] + xb[3];
    return X32(xa, xb, xs4.x + xs4.y + xs4.z + xs4.w);
}

// The rows of ROWS (<= 8) rows starting at row0 (clamped to the last row).
struct Rows8 {
    a: vec4<u32>,
    b: vec4<u32>,
}

fn rows8_from(row0: u32) -> Rows8 {
    let last = vec4<u32>(p.n - 1u);
    let r = vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u);
    return Rows8(min(r, last), min(r + vec4<u32>(4u), last));
}

// CPU rasterisers (lavapipe, SwiftShader) run a workgroup as a loop over SIMD vectors of
// invocations and load storage buffers lane by lane: each scalar loaded costs about the same
// whatever its address, so the kernel is built to load few scalars. Each invocation owns ROWS
// whole rows: it reads every input element once for all of them, reads weights 32 at a time
// with the fewest words the format allows (`dot_w32`), and uses no workgroup memory or
// barrier: staging the normed or SwiGLU inputs once per workgroup in workgroup memory was
// slower on lavapipe (int4 3072x576 with norm: 0.29 vs 0.26 ns/weight), as workgroup loads
// go lane by lane too and barriers cost. k % 32 != 0 (fp32/fp16 only) ends with a vec4 tail.
@compute @workgroup_size(WG)
fn cpu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.x * WG + lid.x) * ROWS;
    let xbase = input_row(wid) * p.x_stride;
    let r = rows8_from(row0);
    let k4n = p.k / 4u;
    let gn = p.k / 32u;
    var acc_a = vec4<f32>(0.0);
    var acc_b = vec4<f32>(0.0);
    var ss = 0.0;
    for (var g = 0u; g < gn; g++) {
        let xg = x32(xbase, g, &ss);
        let xa = xg.a;
        let xb = xg.b;
        let xsum = xg.sum;
        acc_a.x += dot_w32(r.a.x, g, k4n, xa, xb, xsum);
        if (ROWS > 1u) {
            acc_a.y += dot_w32(r.a.y, g, k4n, xa, xb, xsum);
        }
        if (ROWS > 2u) {
            acc_a.z += dot_w32(r.a.z, g, k4n, xa, xb, xsum);
        }
        if (ROWS > 3u) {
            acc_a.w += dot_w32(r.a.w, g, k4n, xa, xb, xsum);
        }
        if (ROWS > 4u) {
            acc_b.x += dot_w32(r.b.x, g, k4n, xa, xb, xsum);
        }
        if (ROWS > 5u) {
            acc_b.y += dot_w32(r.b.y, g, k4n, xa, xb, xsum);
        }
        if (ROWS > 6u) {
            acc_b.z += dot_w32(r.b.z, g, k4n, xa, xb, xsum);
        }
        if (ROWS > 7u) {
            acc_b.w += dot_w32(r.b.w, g, k4n, xa, xb, xsum);
        }
    }
    for (var k4 = gn * 8u; k4 < k4n; k4++) {
        var xv = xin4(xbase, k4 * 4u);
        if (FUSE_NORM) {
            ss += dot(xv, xv);
            xv *= aux[k4];
        }
        acc_a += rows4(r.a.x, r.a.y, r.a.z, r.a.w, k4, k4n, xv);
        if (ROWS > 4u) {
            acc_b += rows4(r.b.x, r.b.y, r.b.z, r.b.w, k4, k4n, xv);
        }
    }
    if (FUSE_NORM) {
        let inv = inverseSqrt(ss / f32(p.k) + p.eps);
        acc_a *= inv;
        acc_b *= inv;
    }
    store4(row0, 0u, acc_a);
    if (ROWS > 4u) {
        store4(row0 + 4u, 4u, acc_b);
    }
}
