// Decode matrix-vector product, one input row per grid y:
//   y[t, n] (+)= sum_k in(t, k) * W[n, k] (+ bias[n])
// where in(t, k) is x[t, k], optionally RMS-normalised (FUSE_NORM, weight in `aux`) or
// SwiGLU-combined from [gate | up] halves (SWIGLU_IN). A workgroup owns ROWS output rows;
// its threads stride over k with vec4 loads and reduce in workgroup memory.
// The weight prelude (weights/*.wgsl) supplies `load_w4`.

struct MatParams {
    n: u32,         // output rows
    k: u32,         // input length (multiple of 4)
    x_stride: u32,  // elements between input rows
    y_stride: u32,  // elements between output rows
    eps: f32,       // RMSNorm epsilon
    last_row: u32,  // 1: read only input row state.n_tokens - 1 (lm_head after prefill)
    y_off: u32,     // first output row of this weight shard
    _pad0: u32,
}

override WG: u32 = 64;          // threads per workgroup, power of two
override TPR: u32 = 64;         // threads sharing one group of rows, power of two <= WG
override ROWS: u32 = 4;         // rows per thread group, 1..=4
override FUSE_NORM: bool = false;
override SWIGLU_IN: bool = false;
override ACCUMULATE: bool = false;
override HAS_BIAS: bool = false;

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> aux: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read> state: array<u32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> parts: array<vec4<f32>, 256>;
var<private> out_row: u32;

fn xin(base: u32, k: u32) -> f32 {
    if (SWIGLU_IN) {
        let g = x[base + k];
        let u = x[base + p.k + k];
        return g / (1.0 + exp(-g)) * u;
    }
    return x[base + k];
}

// A workgroup owns (WG / TPR) * ROWS rows. TPR = WG suits GPUs (coalesced loads, one
// reduction); TPR = 1 suits CPU rasterisers (lavapipe, SwiftShader), where a workgroup is a
// SIMD loop and every barrier is costly: then no barrier runs at all.
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let group = tid / TPR;
    let lane = tid % TPR;
    var t = wid.y;
    if (p.last_row != 0u) {
        t = max(state[1], 1u) - 1u;
    }
    let row0 = (wid.x * (WG / TPR) + group) * ROWS;
    out_row = wid.y;
    let xbase = t * p.x_stride;

    var inv = 1.0;
    if (FUSE_NORM) {
        var ss = 0.0;
        if (TPR == 1u) {
            // One barrier: strided partial sums, then every thread adds all of them.
            for (var k = tid; k < p.k; k += WG) {
                let v = x[xbase + k];
                ss += v * v;
            }
            red[tid] = ss;
            workgroupBarrier();
            var total = 0.0;
            for (var i = 0u; i < WG; i++) {
                total += red[i];
            }
            inv = inverseSqrt(total / f32(p.k) + p.eps);
        } else {
            for (var k = tid; k < p.k; k += WG) {
                let v = x[xbase + k];
                ss += v * v;
            }
            red[tid] = ss;
            workgroupBarrier();
            for (var s = WG / 2u; s > 0u; s >>= 1u) {
                if (tid < s) {
                    red[tid] += red[tid + s];
                }
                workgroupBarrier();
            }
            inv = inverseSqrt(red[0] / f32(p.k) + p.eps);
            workgroupBarrier();
        }
    }

    // Accumulate up to 4 rows in the components of one vec4 (no run-time-indexed arrays,
    // which some drivers keep in slow local memory). Rows past the end read the last row
    // and are not stored.
    let k4n = p.k / 4u;
    let last = p.n - 1u;
    let r0 = min(row0, last);
    let r1 = min(row0 + 1u, last);
    let r2 = min(row0 + 2u, last);
    let r3 = min(row0 + 3u, last);
    var acc = vec4<f32>(0.0);
    for (var k4 = lane; k4 < k4n; k4 += TPR) {
        let kb = k4 * 4u;
        var xv = vec4<f32>(xin(xbase, kb), xin(xbase, kb + 1u), xin(xbase, kb + 2u), xin(xbase, kb + 3u));
        if (FUSE_NORM) {
            xv = xv * inv * vec4<f32>(aux[kb], aux[kb + 1u], aux[kb + 2u], aux[kb + 3u]);
        }
        acc.x += dot(load_w4(r0, k4, k4n), xv);
        if (ROWS > 1u) {
            acc.y += dot(load_w4(r1, k4, k4n), xv);
        }
        if (ROWS > 2u) {
            acc.z += dot(load_w4(r2, k4, k4n), xv);
        }
        if (ROWS > 3u) {
            acc.w += dot(load_w4(r3, k4, k4n), xv);
        }
    }
    if (TPR > 1u) {
        parts[tid] = acc;
        workgroupBarrier();
        for (var s = TPR / 2u; s > 0u; s >>= 1u) {
            if (lane < s) {
                parts[tid] += parts[tid + s];
            }
            workgroupBarrier();
        }
        acc = parts[tid];
    }
    if (lane == 0u) {
        store(row0, acc.x);
        if (ROWS > 1u) {
            store(row0 + 1u, acc.y);
        }
        if (ROWS > 2u) {
            store(row0 + 2u, acc.z);
        }
        if (ROWS > 3u) {
            store(row0 + 3u, acc.w);
        }
    }
}

fn store(row: u32, v: f32) {
    if (row >= p.n) {
        return;
    }
    var o = v;
    if (HAS_BIAS) {
        o += bias[p.y_off + row];
    }
    let yi = out_row * p.y_stride + p.y_off + row;
    if (ACCUMULATE) {
        y[yi] += o;
    } else {
        y[yi] = o;
    }
}
