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
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 64;          // threads per workgroup, power of two
override TPR: u32 = 64;         // threads sharing one group of rows, power of two <= WG
override ROWS: u32 = 4;         // rows per thread group, <= 8
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

var<workgroup> red: array<f32, 1024>;

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

    let k4n = p.k / 4u;
    var acc: array<f32, 8>;
    for (var k4 = lane; k4 < k4n; k4 += TPR) {
        let kb = k4 * 4u;
        var xv = vec4<f32>(xin(xbase, kb), xin(xbase, kb + 1u), xin(xbase, kb + 2u), xin(xbase, kb + 3u));
        if (FUSE_NORM) {
            xv = xv * inv * vec4<f32>(aux[kb], aux[kb + 1u], aux[kb + 2u], aux[kb + 3u]);
        }
        for (var r = 0u; r < ROWS; r++) {
            let row = row0 + r;
            if (row < p.n) {
                acc[r] += dot(load_w4(row, k4, k4n), xv);
            }
        }
    }
    if (TPR > 1u) {
        for (var r = 0u; r < ROWS; r++) {
            red[r * WG + tid] = acc[r];
        }
        workgroupBarrier();
        for (var s = TPR / 2u; s > 0u; s >>= 1u) {
            if (lane < s) {
                for (var r = 0u; r < ROWS; r++) {
                    red[r * WG + tid] += red[r * WG + tid + s];
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < ROWS; r++) {
            acc[r] = red[r * WG + tid];
        }
    }
    if (lane == 0u) {
        for (var r = 0u; r < ROWS; r++) {
            let row = row0 + r;
            if (row < p.n) {
                var v = acc[r];
                if (HAS_BIAS) {
                    v += bias[row];
                }
                let yi = wid.y * p.y_stride + row;
                if (ACCUMULATE) {
                    y[yi] += v;
                } else {
                    y[yi] = v;
                }
            }
        }
    }
}
