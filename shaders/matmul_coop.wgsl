// Prefill matrix-matrix product on tensor cores (entry point `coop`; appended to matmul.wgsl
// after the weight prelude, with `enable f16` and `enable wgpu_cooperative_matrix` first):
//   y[t, n] (+)= sum_k in(t, k) * W[n, k] (+ bias[n])   for t < state.n_tokens
// the modes, tiles (64 tokens x 64 rows) and grid of the tiled kernel. Per K slab of 32 the
// workgroup stores the inputs (norm-weighted) and the weights (dequantised by the prelude's
// `load_w4`) as f16 in workgroup memory; each of its 4 subgroups of 32 lanes then multiplies
// 32 tokens x 32 rows of the tile as 2 x 2 blocks of 16 x 16 with f32 accumulators
// (`coop_mat16x16`), which the end stores through workgroup memory for the tile's epilogue
// (1/rms, bias, accumulate). Inputs and dequantised weights pass through f16 (11-bit
// significands, a relative 2^-11 each): the price of the tensor cores.

const CK: u32 = 32u;        // K per slab
const CS: u32 = CK + 8u;    // f16 per stored row: 16-byte aligned rows, off the bank period
const OS: u32 = 64u + 4u;   // f32 per row of the output tile

var<workgroup> xa: array<f16, 64u * CS>;   // [token][k] of the slab: matrix A, row-major
var<workgroup> wb: array<f16, 64u * CS>;   // [row][k]: matrix B (k x rows), column-major
var<workgroup> ot: array<f32, 64u * OS>;   // [token][row]: the tile's sums
var<workgroup> tss: array<f32, 128>;       // x^2 partials: token t's are 2t and 2t + 1

// Stores input vec4 `xv` and weight vec4 `wv` as f16 at `i` of xa and wb.
fn put(i: u32, xv: vec4<f32>, wv: vec4<f32>) {
    let x = vec4<f16>(xv);
    let w = vec4<f16>(wv);
    xa[i] = x.x;
    xa[i + 1u] = x.y;
    xa[i + 2u] = x.z;
    xa[i + 3u] = x.w;
    wb[i] = w.x;
    wb[i + 1u] = w.y;
    wb[i + 2u] = w.z;
    wb[i + 3u] = w.w;
}

// Input vec4 i of the thread's part of the slab at k0 (k k0 + lk + 4 i; zero past the ends),
// raw: the caller applies the norm.
fn coop_x(k0: u32, lk: u32, i: u32, t: u32, live: bool) -> vec4<f32> {
    let k4 = (k0 + lk) / 4u + i;
    if (live && k4 < p.k / 4u) {
        return xin4(t * p.x_stride, k4 * 4u);
    }
    return vec4<f32>(0.0);
}

// Weight vec4 i of the thread's part of the slab: row `row`, the same k.
fn coop_w(k0: u32, lk: u32, i: u32, row: u32, live: bool) -> vec4<f32> {
    let k4 = (k0 + lk) / 4u + i;
    if (live && k4 < p.k / 4u) {
        return load_w4(row, k4, p.k / 4u);
    }
    return vec4<f32>(0.0);
}

@compute @workgroup_size(128)
fn coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(subgroup_id) sg: u32) {
    let tid = lid.x;
    let n_tok = state[1];
    let t0 = wid.y * 64u;
    let n0 = wid.x * 64u;
    if (t0 >= n_tok) {
        return;
    }
    // Loads: thread tid takes token (and weight row) tid / 2, k 16 (tid % 2) .. + 15 of a slab.
    let lt = tid / 2u;
    let lk = 16u * (tid % 2u);
    let t = t0 + lt;
    let row = n0 + lt;
    let k4n = p.k / 4u;
    let live_t = t < n_tok;
    let live_r = row < p.n;
    // The subgroup's quarter of the tile.
    let st = (sg / 2u) * 32u;
    let sr = (sg % 2u) * 32u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    var ss = 0.0;
    // The next slab's operands wait in registers while this slab's products run (plain
    // variables, as in the tiled kernel), so their memory latency hides behind them.
    var x0 = coop_x(0u, lk, 0u, t, live_t);
    var x1 = coop_x(0u, lk, 1u, t, live_t);
    var x2 = coop_x(0u, lk, 2u, t, live_t);
    var x3 = coop_x(0u, lk, 3u, t, live_t);
    var w0 = coop_w(0u, lk, 0u, row, live_r);
    var w1 = coop_w(0u, lk, 1u, row, live_r);
    var w2 = coop_w(0u, lk, 2u, row, live_r);
    var w3 = coop_w(0u, lk, 3u, row, live_r);
    for (var k0 = 0u; k0 < p.k; k0 += CK) {
        if (FUSE_NORM) {
            ss += dot(x0, x0) + dot(x1, x1) + dot(x2, x2) + dot(x3, x3);
            let a4 = (k0 + lk) / 4u;
            let last = k4n - 1u;
            x0 *= aux[min(a4, last)];
            x1 *= aux[min(a4 + 1u, last)];
            x2 *= aux[min(a4 + 2u, last)];
            x3 *= aux[min(a4 + 3u, last)];
        }
        let o = lt * CS + lk;
        put(o, x0, w0);
        put(o + 4u, x1, w1);
        put(o + 8u, x2, w2);
        put(o + 12u, x3, w3);
        workgroupBarrier();
        if (k0 + CK < p.k) {
            let k1 = k0 + CK;
            x0 = coop_x(k1, lk, 0u, t, live_t);
            x1 = coop_x(k1, lk, 1u, t, live_t);
            x2 = coop_x(k1, lk, 2u, t, live_t);
            x3 = coop_x(k1, lk, 3u, t, live_t);
            w0 = coop_w(k1, lk, 0u, row, live_r);
            w1 = coop_w(k1, lk, 1u, row, live_r);
            w2 = coop_w(k1, lk, 2u, row, live_r);
            w3 = coop_w(k1, lk, 3u, row, live_r);
        }
        for (var kk = 0u; kk < CK; kk += 16u) {
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&xa[st * CS + kk], CS);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&xa[(st + 16u) * CS + kk], CS);
            let b0 = coopLoad<coop_mat16x16<f16, B>>(&wb[sr * CS + kk], CS);
            let b1 = coopLoad<coop_mat16x16<f16, B>>(&wb[(sr + 16u) * CS + kk], CS);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
        }
        workgroupBarrier();
    }
    // Named values: naga 30's SPIR-V writer wants coopStore's operands emitted before it.
    let o00 = c00;
    let o01 = c01;
    let o10 = c10;
    let o11 = c11;
    let i00 = st * OS + sr;
    let i01 = i00 + 16u;
    let i10 = i00 + 16u * OS;
    let i11 = i10 + 16u;
    let stride = OS;
    coopStoreT(o00, &ot[i00], stride);
    coopStoreT(o01, &ot[i01], stride);
    coopStoreT(o10, &ot[i10], stride);
    coopStoreT(o11, &ot[i11], stride);
    tss[tid] = ss;
    workgroupBarrier();
    // Epilogue: consecutive threads take consecutive rows of a token.
    let kf = f32(p.k);
    for (var j = tid; j < 64u * 64u; j += 128u) {
        let jt = j / 64u;
        let jr = j % 64u;
        if (t0 + jt < n_tok) {
            var v = ot[jt * OS + jr];
            if (FUSE_NORM) {
                v *= inverseSqrt((tss[2u * jt] + tss[2u * jt + 1u]) / kf + p.eps);
            }
            store1(t0 + jt, n0 + jr, v);
        }
    }
}
