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
    _pad0: u32,
    _pad1: u32,
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

var<workgroup> xs: array<f32, 512>;   // [TM][BK]
var<workgroup> ws: array<f32, 512>;   // [TN][BK]
var<workgroup> invs: array<f32, 32>;  // per-token 1/rms

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

    let tx = tid % 8u;
    let ty = tid / 8u;
    var acc: array<f32, 16>;
    let k4n = p.k / 4u;
    if (!TILED) {
        var xinv: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) {
            xinv[i] = 1.0;
            if (FUSE_NORM) {
                xinv[i] = invs[ty * 4u + i];
            }
        }
        for (var k4 = 0u; k4 < k4n; k4++) {
            let kb = k4 * 4u;
            var wv: array<vec4<f32>, 4>;
            for (var j = 0u; j < 4u; j++) {
                let row = min(n0 + tx * 4u + j, p.n - 1u);
                wv[j] = load_w4(row, k4, k4n);
            }
            var nv = vec4<f32>(1.0);
            if (FUSE_NORM) {
                nv = vec4<f32>(aux[kb], aux[kb + 1u], aux[kb + 2u], aux[kb + 3u]);
            }
            for (var i = 0u; i < 4u; i++) {
                let t = min(t0 + ty * 4u + i, n_tok - 1u);
                let base = t * p.x_stride;
                let xv = vec4<f32>(xin(base, kb), xin(base, kb + 1u), xin(base, kb + 2u), xin(base, kb + 3u)) * nv * xinv[i];
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += dot(xv, wv[j]);
                }
            }
        }
    }
    for (var k0 = 0u; TILED && k0 < p.k; k0 += BK) {
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
            xs[idx] = v;
        }
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
            let o = r * BK + c4 * 4u;
            ws[o] = wv.x;
            ws[o + 1u] = wv.y;
            ws[o + 2u] = wv.z;
            ws[o + 3u] = wv.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[(ty * 4u + i) * BK + kk];
                b[i] = ws[(tx * 4u + i) * BK + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let t = t0 + ty * 4u + i;
        if (t >= n_tok) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let row = n0 + tx * 4u + j;
            if (row >= p.n) {
                continue;
            }
            var v = acc[i * 4u + j];
            if (HAS_BIAS) {
                v += bias[row];
            }
            let yi = t * p.y_stride + row;
            if (ACCUMULATE) {
                y[yi] += v;
            } else {
                y[yi] = v;
            }
        }
    }
}
