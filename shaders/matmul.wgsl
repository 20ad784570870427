// Prefill matrix-matrix product over all prompt tokens of a chunk:
//   y[t, n] (+)= sum_k in(t, k) * W[n, k] (+ bias[n])   for t < state.n_tokens
// Same input modes as matvec.wgsl. Tiles of 32 tokens x 32 rows, K in slabs of 16 through
// workgroup memory; 64 threads, each computing 4 x 4 outputs.
// The weight prelude (weights/*.wgsl) supplies `load_w4`.

struct MatParams {
    n: u32,
    k: u32,
    x_stride: u32,
    y_stride: u32,
    eps: f32,
    last_row: u32,
    y_off: u32,     // first output row of this weight shard
    _pad0: u32,
}

override FUSE_NORM: bool = false;
override SWIGLU_IN: bool = false;
override ACCUMULATE: bool = false;
override HAS_BIAS: bool = false;
// false: no workgroup memory and no barriers in the K loop, every thread reads its 4 x 4
// operands straight from storage (CPU rasterisers, where barriers cost more than loads).
override TILED: bool = true;

const TM: u32 = 32u;
const TN: u32 = 32u;
const BK: u32 = 16u;

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> aux: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read> state: array<u32>;

var<workgroup> xs: array<f32, 512>;   // [BK][TM], k-major: a thread's 4 tokens are adjacent
var<workgroup> ws: array<f32, 512>;   // [BK][TN], k-major: a thread's 4 rows are adjacent
var<workgroup> invs: array<f32, 32>;  // per-token 1/rms

fn xin4(base: u32, kb: u32) -> vec4<f32> {
    return vec4<f32>(xin(base, kb), xin(base, kb + 1u), xin(base, kb + 2u), xin(base, kb + 3u));
}

fn xin(base: u32, k: u32) -> f32 {
    if (SWIGLU_IN) {
        let g = x[base + k];
        let u = x[base + p.k + k];
        return g / (1.0 + exp(-g)) * u;
    }
    return x[base + k];
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let n_tok = state[1];
    let t0 = wid.y * TM;
    let n0 = wid.x * TN;
    if (t0 >= n_tok) {
        return;
    }

    if (FUSE_NORM) {
        if (tid < TM) {
            let t = t0 + tid;
            var ss = 0.0;
            if (t < n_tok) {
                for (var k = 0u; k < p.k; k++) {
                    let v = x[t * p.x_stride + k];
                    ss += v * v;
                }
            }
            invs[tid] = inverseSqrt(ss / f32(p.k) + p.eps);
        }
        workgroupBarrier();
    }

    // Accumulators are four vec4s (token i, rows j in the components): no arrays indexed
    // at run time, which some drivers would keep in slow local memory.
    let tx = tid % 8u;
    let ty = tid / 8u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let k4n = p.k / 4u;
    if (!TILED) {
        let rmax = p.n - 1u;
        let r0 = n0 + tx * 4u;
        let tb = min(t0 + ty * 4u, n_tok - 1u);
        let t1 = min(tb + 1u, n_tok - 1u);
        let t2 = min(tb + 2u, n_tok - 1u);
        let t3 = min(tb + 3u, n_tok - 1u);
        var s0 = 1.0;
        var s1 = 1.0;
        var s2 = 1.0;
        var s3 = 1.0;
        if (FUSE_NORM) {
            s0 = invs[ty * 4u];
            s1 = invs[ty * 4u + 1u];
            s2 = invs[ty * 4u + 2u];
            s3 = invs[ty * 4u + 3u];
        }
        for (var k4 = 0u; k4 < k4n; k4++) {
            let kb = k4 * 4u;
            let w0 = load_w4(min(r0, rmax), k4, k4n);
            let w1 = load_w4(min(r0 + 1u, rmax), k4, k4n);
            let w2 = load_w4(min(r0 + 2u, rmax), k4, k4n);
            let w3 = load_w4(min(r0 + 3u, rmax), k4, k4n);
            var nv = vec4<f32>(1.0);
            if (FUSE_NORM) {
                nv = vec4<f32>(aux[kb], aux[kb + 1u], aux[kb + 2u], aux[kb + 3u]);
            }
            let x0 = xin4(tb * p.x_stride, kb) * nv * s0;
            let x1 = xin4(t1 * p.x_stride, kb) * nv * s1;
            let x2 = xin4(t2 * p.x_stride, kb) * nv * s2;
            let x3 = xin4(t3 * p.x_stride, kb) * nv * s3;
            acc0 += vec4<f32>(dot(x0, w0), dot(x0, w1), dot(x0, w2), dot(x0, w3));
            acc1 += vec4<f32>(dot(x1, w0), dot(x1, w1), dot(x1, w2), dot(x1, w3));
            acc2 += vec4<f32>(dot(x2, w0), dot(x2, w1), dot(x2, w2), dot(x2, w3));
            acc3 += vec4<f32>(dot(x3, w0), dot(x3, w1), dot(x3, w2), dot(x3, w3));
        }
    }
    for (var k0 = 0u; TILED && k0 < p.k; k0 += BK) {
        // X tile: 32 tokens x 16 k, stored k-major.
        for (var i = 0u; i < 8u; i++) {
            let idx = tid + i * 64u;
            let r = idx / BK;
            let c = idx % BK;
            let t = t0 + r;
            let k = k0 + c;
            var v = 0.0;
            if (t < n_tok && k < p.k) {
                v = xin(t * p.x_stride, k);
                if (FUSE_NORM) {
                    v = v * invs[r] * aux[k];
                }
            }
            xs[c * TM + r] = v;
        }
        // W tile: 32 rows x 16 k (4 vec4 per row), stored k-major.
        for (var i = 0u; i < 2u; i++) {
            let idx = tid + i * 64u;
            let r = idx / 4u;
            let c4 = idx % 4u;
            let row = n0 + r;
            let k4 = k0 / 4u + c4;
            var wv = vec4<f32>(0.0);
            if (row < p.n && k4 < k4n) {
                wv = load_w4(row, k4, k4n);
            }
            let c = c4 * 4u;
            ws[c * TN + r] = wv.x;
            ws[(c + 1u) * TN + r] = wv.y;
            ws[(c + 2u) * TN + r] = wv.z;
            ws[(c + 3u) * TN + r] = wv.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let xo = kk * TM + ty * 4u;
            let wo = kk * TN + tx * 4u;
            let b = vec4<f32>(ws[wo], ws[wo + 1u], ws[wo + 2u], ws[wo + 3u]);
            acc0 += xs[xo] * b;
            acc1 += xs[xo + 1u] * b;
            acc2 += xs[xo + 2u] * b;
            acc3 += xs[xo + 3u] * b;
        }
        workgroupBarrier();
    }

    let tb = t0 + ty * 4u;
    let rb = n0 + tx * 4u;
    store4(tb, rb, n_tok, acc0);
    store4(tb + 1u, rb, n_tok, acc1);
    store4(tb + 2u, rb, n_tok, acc2);
    store4(tb + 3u, rb, n_tok, acc3);
}

fn store1(t: u32, row: u32, v: f32) {
    if (row >= p.n) {
        return;
    }
    var o = v;
    if (HAS_BIAS) {
        o += bias[p.y_off + row];
    }
    let yi = t * p.y_stride + p.y_off + row;
    if (ACCUMULATE) {
        y[yi] += o;
    } else {
        y[yi] = o;
    }
}

fn store4(t: u32, row: u32, n_tok: u32, v: vec4<f32>) {
    if (t >= n_tok) {
        return;
    }
    store1(t, row, v.x);
    store1(t, row + 1u, v.y);
    store1(t, row + 2u, v.z);
    store1(t, row + 3u, v.w);
}
