// Prefill matrix-matrix product over all prompt tokens of a chunk:
//   y[t, n] (+)= sum_k in(t, k) * W[n, k] (+ bias[n])   for t < state.n_tokens
// Same input modes as matvec.wgsl. TILED (GPUs): tiles of 64 tokens x 64 rows, K in slabs of
// 16 through workgroup memory, 64 threads each computing 8 tokens x 8 rows (4 vec4 loads
// from workgroup memory feed 64 multiply-adds). Untiled (CPU rasterisers): 32 x 32 tiles,
// each thread reads its 4 x 4 operands straight from storage, no barriers.
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

const BK: u32 = 16u;

@group(0) @binding(0) var<uniform> p: MatParams;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> aux: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read> state: array<u32>;

// Tiled: [BK][64 / 4] vec4s, k-major, so a thread's 4 consecutive tokens (rows) are one
// vec4; each k row takes SK vec4 (one of padding), so that the four threads storing the same
// token's k 4 c4 .. 4 c4 + 3 (c4 = 0..3) meet in two banks instead of one.
// After the K loop `xs` holds the per-token partial sums of x^2 (RMSNorm).
const SK: u32 = 17u;
var<workgroup> xs: array<vec4<f32>, 272>;
var<workgroup> ws: array<vec4<f32>, 272>;
var<workgroup> invs: array<f32, 32>;  // untiled: per-token 1/rms

// Input elements kb..kb+3 of the row at `base` (kb a multiple of 4), SwiGLU-combined when
// the variant asks (norm applied by the caller).
fn xin4(base: u32, kb: u32) -> vec4<f32> {
    var v = x[(base + kb) / 4u];
    if (SWIGLU_IN) {
        let u = x[(base + p.k + kb) / 4u];
        v = v / (1.0 + exp(-v)) * u;
    }
    return v;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    if (TILED) {
        tiled(wid, lid.x);
    } else {
        untiled(wid, lid.x);
    }
}

// Input vec4 i of a K slab of the tiled kernel for this thread: token t0 + tid / 4 + 16 i,
// k 4 (tid % 4) of the slab (zero past the ends), raw (the caller applies the norm).
fn slab_x(k0: u32, t0: u32, tid: u32, n_tok: u32, i: u32) -> vec4<f32> {
    let k4 = k0 / 4u + tid % 4u;
    let t = t0 + tid / 4u + 16u * i;
    if (t < n_tok && k4 < p.k / 4u) {
        return xin4(t * p.x_stride, k4 * 4u);
    }
    return vec4<f32>(0.0);
}

// Weight vec4 i of a K slab: row n0 + tid / 4 + 16 i, the same k.
fn slab_w(k0: u32, n0: u32, tid: u32, i: u32) -> vec4<f32> {
    let k4 = k0 / 4u + tid % 4u;
    let row = n0 + tid / 4u + 16u * i;
    if (row < p.n && k4 < p.k / 4u) {
        return load_w4(row, k4, p.k / 4u);
    }
    return vec4<f32>(0.0);
}

// Stores input and weight vec4 i of the slab into workgroup memory, k-major.
fn slab_store(tid: u32, i: u32, v: vec4<f32>, wv: vec4<f32>) {
    let r = tid / 4u + 16u * i;
    let xo = 4u * (tid % 4u) * SK + r / 4u;
    xs[xo][r % 4u] = v.x;
    xs[xo + SK][r % 4u] = v.y;
    xs[xo + 2u * SK][r % 4u] = v.z;
    xs[xo + 3u * SK][r % 4u] = v.w;
    ws[xo][r % 4u] = wv.x;
    ws[xo + SK][r % 4u] = wv.y;
    ws[xo + 2u * SK][r % 4u] = wv.z;
    ws[xo + 3u * SK][r % 4u] = wv.w;
}

// The tiled kernel. RMSNorm: 1/rms of a token scales its whole output row, so it is applied
// after the K loop from x^2 summed while the X tiles are loaded (no pass over K before).
fn tiled(wid: vec3<u32>, tid: u32) {
    let n_tok = state[1];
    let t0 = wid.y * 64u;
    let n0 = wid.x * 64u;
    if (t0 >= n_tok) {
        return;
    }
    let tx = tid % 8u;  // rows n0 + 8 tx ..
    let ty = tid / 8u;  // tokens t0 + 8 ty ..
    // Token j of the thread's 8, rows 0-3 (a) and 4-7 (b): no run-time-indexed arrays.
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    var a4 = vec4<f32>(0.0);
    var a5 = vec4<f32>(0.0);
    var a6 = vec4<f32>(0.0);
    var a7 = vec4<f32>(0.0);
    var b0 = vec4<f32>(0.0);
    var b1 = vec4<f32>(0.0);
    var b2 = vec4<f32>(0.0);
    var b3 = vec4<f32>(0.0);
    var b4 = vec4<f32>(0.0);
    var b5 = vec4<f32>(0.0);
    var b6 = vec4<f32>(0.0);
    var b7 = vec4<f32>(0.0);
    // x^2 partials of the 4 tokens this thread loads (tokens tid / 4 + 16 i).
    var ss = vec4<f32>(0.0);
    let c4 = tid % 4u;
    // The next slab's operands are loaded into registers (plain variables: as arrays in a
    // struct they went to local memory, 7B chunk 474 -> 801 ms) before this slab's products,
    // so their memory latency hides behind the multiply-adds: H100 512-token chunk, first
    // token 7B 474 -> 440 ms, 135M 31.4 -> 29.3.
    var x0 = slab_x(0u, t0, tid, n_tok, 0u);
    var x1 = slab_x(0u, t0, tid, n_tok, 1u);
    var x2 = slab_x(0u, t0, tid, n_tok, 2u);
    var x3 = slab_x(0u, t0, tid, n_tok, 3u);
    var w0 = slab_w(0u, n0, tid, 0u);
    var w1 = slab_w(0u, n0, tid, 1u);
    var w2 = slab_w(0u, n0, tid, 2u);
    var w3 = slab_w(0u, n0, tid, 3u);
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        if (FUSE_NORM) {
            ss += vec4<f32>(dot(x0, x0), dot(x1, x1), dot(x2, x2), dot(x3, x3));
            let nw = aux[k0 / 4u + c4];
            x0 *= nw;
            x1 *= nw;
            x2 *= nw;
            x3 *= nw;
        }
        slab_store(tid, 0u, x0, w0);
        slab_store(tid, 1u, x1, w1);
        slab_store(tid, 2u, x2, w2);
        slab_store(tid, 3u, x3, w3);
        workgroupBarrier();
        if (k0 + BK < p.k) {
            let k1 = k0 + BK;
            x0 = slab_x(k1, t0, tid, n_tok, 0u);
            x1 = slab_x(k1, t0, tid, n_tok, 1u);
            x2 = slab_x(k1, t0, tid, n_tok, 2u);
            x3 = slab_x(k1, t0, tid, n_tok, 3u);
            w0 = slab_w(k1, n0, tid, 0u);
            w1 = slab_w(k1, n0, tid, 1u);
            w2 = slab_w(k1, n0, tid, 2u);
            w3 = slab_w(k1, n0, tid, 3u);
        }
        for (var kk = 0u; kk < BK; kk++) {
            let xa = xs[kk * SK + ty * 2u];
            let xb = xs[kk * SK + ty * 2u + 1u];
            let wa = ws[kk * SK + tx * 2u];
            let wb = ws[kk * SK + tx * 2u + 1u];
            a0 += xa.x * wa;
            b0 += xa.x * wb;
            a1 += xa.y * wa;
            b1 += xa.y * wb;
            a2 += xa.z * wa;
            b2 += xa.z * wb;
            a3 += xa.w * wa;
            b3 += xa.w * wb;
            a4 += xb.x * wa;
            b4 += xb.x * wb;
            a5 += xb.y * wa;
            b5 += xb.y * wb;
            a6 += xb.z * wa;
            b6 += xb.z * wb;
            a7 += xb.w * wa;
            b7 += xb.w * wb;
        }
        workgroupBarrier();
    }
    // Per-token 1/rms of the thread's 8 tokens (all 1 without FUSE_NORM).
    var inv_a = vec4<f32>(1.0);
    var inv_b = vec4<f32>(1.0);
    if (FUSE_NORM) {
        // xs[r] = the 4 partials of token r (one per k column c4).
        for (var i = 0u; i < 4u; i++) {
            xs[tid / 4u + 16u * i][c4] = ss[i];
        }
        workgroupBarrier();
        let kf = f32(p.k);
        let one = vec4<f32>(1.0);
        for (var j = 0u; j < 4u; j++) {
            inv_a[j] = inverseSqrt(dot(xs[ty * 8u + j], one) / kf + p.eps);
            inv_b[j] = inverseSqrt(dot(xs[ty * 8u + 4u + j], one) / kf + p.eps);
        }
    }
    let tb = t0 + ty * 8u;
    let ra = n0 + tx * 8u;
    let rb = ra + 4u;
    store4(tb, ra, n_tok, a0 * inv_a.x);
    store4(tb, rb, n_tok, b0 * inv_a.x);
    store4(tb + 1u, ra, n_tok, a1 * inv_a.y);
    store4(tb + 1u, rb, n_tok, b1 * inv_a.y);
    store4(tb + 2u, ra, n_tok, a2 * inv_a.z);
    store4(tb + 2u, rb, n_tok, b2 * inv_a.z);
    store4(tb + 3u, ra, n_tok, a3 * inv_a.w);
    store4(tb + 3u, rb, n_tok, b3 * inv_a.w);
    store4(tb + 4u, ra, n_tok, a4 * inv_b.x);
    store4(tb + 4u, rb, n_tok, b4 * inv_b.x);
    store4(tb + 5u, ra, n_tok, a5 * inv_b.y);
    store4(tb + 5u, rb, n_tok, b5 * inv_b.y);
    store4(tb + 6u, ra, n_tok, a6 * inv_b.z);
    store4(tb + 6u, rb, n_tok, b6 * inv_b.z);
    store4(tb + 7u, ra, n_tok, a7 * inv_b.w);
    store4(tb + 7u, rb, n_tok, b7 * inv_b.w);
}

// FUSE_NORM: 1/rms of tokens t0..t0+31 into `invs`, one thread a token, in one pass over K
// (every thread calls it: a barrier).
fn token_inv_rms(t0: u32, tid: u32, n_tok: u32) {
    if (!FUSE_NORM) {
        return;
    }
    if (tid < 32u) {
        let t = t0 + tid;
        var ss = 0.0;
        if (t < n_tok) {
            for (var k4 = 0u; k4 < p.k / 4u; k4++) {
                let v = xin4(t * p.x_stride, k4 * 4u);
                ss += dot(v, v);
            }
        }
        invs[tid] = inverseSqrt(ss / f32(p.k) + p.eps);
    }
    workgroupBarrier();
}

// The untiled kernel (CPU rasterisers, which load storage lane by lane, one scalar at a
// time, so the cost follows the scalars loaded per multiply-add): tiles of 32 tokens x 64
// rows, each thread 8 rows x 4 tokens straight from storage. Per step of 4 weights a thread
// loads 8 weight vec4s and 4 input vec4s for 128 multiply-adds (with 4 rows: 4 and 4 for 64).
// The 8 threads of a token group take consecutive row groups, so a SIMD vector of 8 is full
// for any prompt length. lavapipe, SmolLM2 fp16, first token of an 11-token prompt (4 x 4
// per thread in 32 x 32 tiles -> this): 269 -> 206 ms.
fn untiled(wid: vec3<u32>, tid: u32) {
    let t = cpu_tile(wid, tid);
    // A thread whose 4 tokens all lie past n_tok has nothing to store (no barrier follows):
    // a few-row chunk (a verification of drafts) then costs its rows, not a whole tile.
    if (!t.live) {
        return;
    }
    let k4n = p.k / 4u;
    // Per row, its 4 tokens' sums: no arrays indexed at run time, which some drivers would
    // keep in slow local memory.
    var c: Rows8Acc;
    for (var k4 = 0u; k4 < k4n; k4++) {
        let kb = k4 * 4u;
        var nv = vec4<f32>(1.0);
        if (FUSE_NORM) {
            nv = aux[k4];
        }
        let x0 = xin4(t.x.x, kb) * nv;
        let x1 = xin4(t.x.y, kb) * nv;
        let x2 = xin4(t.x.z, kb) * nv;
        let x3 = xin4(t.x.w, kb) * nv;
        let w0 = load_w4(t.r.a.x, k4, k4n);
        let w1 = load_w4(t.r.a.y, k4, k4n);
        let w2 = load_w4(t.r.a.z, k4, k4n);
        let w3 = load_w4(t.r.a.w, k4, k4n);
        let w4 = load_w4(t.r.b.x, k4, k4n);
        let w5 = load_w4(t.r.b.y, k4, k4n);
        let w6 = load_w4(t.r.b.z, k4, k4n);
        let w7 = load_w4(t.r.b.w, k4, k4n);
        c.c0 += vec4<f32>(dot(x0, w0), dot(x1, w0), dot(x2, w0), dot(x3, w0));
        c.c1 += vec4<f32>(dot(x0, w1), dot(x1, w1), dot(x2, w1), dot(x3, w1));
        c.c2 += vec4<f32>(dot(x0, w2), dot(x1, w2), dot(x2, w2), dot(x3, w2));
        c.c3 += vec4<f32>(dot(x0, w3), dot(x1, w3), dot(x2, w3), dot(x3, w3));
        c.c4 += vec4<f32>(dot(x0, w4), dot(x1, w4), dot(x2, w4), dot(x3, w4));
        c.c5 += vec4<f32>(dot(x0, w5), dot(x1, w5), dot(x2, w5), dot(x3, w5));
        c.c6 += vec4<f32>(dot(x0, w6), dot(x1, w6), dot(x2, w6), dot(x3, w6));
        c.c7 += vec4<f32>(dot(x0, w7), dot(x1, w7), dot(x2, w7), dot(x3, w7));
    }
    store_rows8(t, c);
}

// Rows row0..row0+7 of a 64-row tile, clamped to the last row (loads only: stores skip them).
struct Rows8 {
    a: vec4<u32>,
    b: vec4<u32>,
}

// A thread's part of an untiled tile: rows row0..row0+7 (`r` clamped for loads) for tokens
// tb..tb+3 of token group ty (`x` their input-row offsets, clamped to the last token);
// `live` while tb is before n_tok.
struct CpuTile {
    row0: u32,
    r: Rows8,
    tb: u32,
    ty: u32,
    x: vec4<u32>,
    n_tok: u32,
    live: bool,
}

// Every thread calls it (with FUSE_NORM a barrier: the tokens' 1/rms into `invs`). The 8
// threads of a token group take consecutive row groups.
fn cpu_tile(wid: vec3<u32>, tid: u32) -> CpuTile {
    let n_tok = state[1];
    let t0 = wid.y * 32u;
    token_inv_rms(t0, tid, n_tok);
    let row0 = wid.x * 64u + (tid % 8u) * 8u;
    let last = vec4<u32>(p.n - 1u);
    let r = Rows8(min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), last), min(vec4<u32>(row0) + vec4<u32>(4u, 5u, 6u, 7u), last));
    let ty = tid / 8u;
    let tb = t0 + ty * 4u;
    let x = min(vec4<u32>(tb) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(max(n_tok, 1u) - 1u)) * p.x_stride;
    return CpuTile(row0, r, tb, ty, x, n_tok, tb < n_tok);
}

// Per row of 8, its sums over the 4 tokens of token group `ty`.
struct Rows8Acc {
    c0: vec4<f32>,
    c1: vec4<f32>,
    c2: vec4<f32>,
    c3: vec4<f32>,
    c4: vec4<f32>,
    c5: vec4<f32>,
    c6: vec4<f32>,
    c7: vec4<f32>,
}

// Stores the tile's rows for its tokens (those before n_tok), scaled by the tokens' 1/rms
// with FUSE_NORM.
fn store_rows8(t: CpuTile, c: Rows8Acc) {
    var sc = vec4<f32>(1.0);
    if (FUSE_NORM) {
        let i = t.ty * 4u;
        sc = vec4<f32>(invs[i], invs[i + 1u], invs[i + 2u], invs[i + 3u]);
    }
    store_row(t.tb, t.row0, t.n_tok, c.c0 * sc);
    store_row(t.tb, t.row0 + 1u, t.n_tok, c.c1 * sc);
    store_row(t.tb, t.row0 + 2u, t.n_tok, c.c2 * sc);
    store_row(t.tb, t.row0 + 3u, t.n_tok, c.c3 * sc);
    store_row(t.tb, t.row0 + 4u, t.n_tok, c.c4 * sc);
    store_row(t.tb, t.row0 + 5u, t.n_tok, c.c5 * sc);
    store_row(t.tb, t.row0 + 6u, t.n_tok, c.c6 * sc);
    store_row(t.tb, t.row0 + 7u, t.n_tok, c.c7 * sc);
}

// Row `row`'s outputs for tokens tb..tb+3 (those before n_tok).
fn store_row(tb: u32, row: u32, n_tok: u32, v: vec4<f32>) {
    if (tb < n_tok) {
        store1(tb, row, v.x);
    }
    if (tb + 1u < n_tok) {
        store1(tb + 1u, row, v.y);
    }
    if (tb + 2u < n_tok) {
        store1(tb + 2u, row, v.z);
    }
    if (tb + 3u < n_tok) {
        store1(tb + 3u, row, v.w);
    }
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
