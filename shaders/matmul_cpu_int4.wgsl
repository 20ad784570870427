// Prefill on CPU rasterisers, int4 weights (appended to matmul.wgsl after the int4 prelude;
// entry point `cpu`; tiles of 64 rows x 32 tokens, `matmul_row_tile`). lavapipe and SwiftShader load
// storage lane by lane, one scalar at a time, so the cost follows the scalars loaded per
// multiply-add. `untiled` loads 28 per 64 (4 rows x 4 tokens per step of 4 weights, a weight
// word and a scale per row and step). Here a thread owns 8 rows x 4 tokens and takes the
// weights a group of 32 at a time: per group 5 words per row (read once for the 4 tokens)
// and 32 inputs per token plus 32 norm weights (read once for the 8 rows), 200 scalars per
// 1,024 multiply-adds. The 8 threads of a token group take consecutive row groups, so a
// SIMD vector of 8 is full however few tokens there are. RMSNorm's 1/rms scales each
// token's sums at the end. lavapipe, SmolLM2 int4, first token (`untiled` -> this): 11-token
// prompt 339 -> 246 ms, 32 tokens 734 -> 496 ms.

struct In32 {
    a: mat4x4<f32>,  // inputs 0..15 of the group, columns of 4 consecutive k
    b: mat4x4<f32>,  // inputs 16..31
    sum: f32,
}

// Group g of token t's input row, norm-weighted by na | nb.
fn in32(t: u32, g: u32, na: mat4x4<f32>, nb: mat4x4<f32>) -> In32 {
    let base = t * p.x_stride;
    let kb = g * 32u;
    let a = mat4x4<f32>(xin4(base, kb) * na[0], xin4(base, kb + 4u) * na[1], xin4(base, kb + 8u) * na[2],
        xin4(base, kb + 12u) * na[3]);
    let b = mat4x4<f32>(xin4(base, kb + 16u) * nb[0], xin4(base, kb + 20u) * nb[1], xin4(base, kb + 24u) * nb[2],
        xin4(base, kb + 28u) * nb[3]);
    let s4 = a[0] + a[1] + a[2] + a[3] + b[0] + b[1] + b[2] + b[3];
    return In32(a, b, s4.x + s4.y + s4.z + s4.w);
}

// Group g of `row` (its words and scale loaded once) against the 4 tokens' inputs.
fn row_tokens(row: u32, g: u32, k4n: u32, x0: In32, x1: In32, x2: In32, x3: In32) -> vec4<f32> {
    let i = (row * k4n) / 8u + g;
    let q = w[i];
    let dm = unpack2x16float(s[i]);
    return vec4<f32>(dot_q32(q, dm, x0.a, x0.b, x0.sum), dot_q32(q, dm, x1.a, x1.b, x1.sum),
        dot_q32(q, dm, x2.a, x2.b, x2.sum), dot_q32(q, dm, x3.a, x3.b, x3.sum));
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

@compute @workgroup_size(64)
fn cpu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let n_tok = state[1];
    let t0 = wid.y * 32u;
    let n0 = wid.x * 64u;
    if (t0 >= n_tok) {
        return;
    }
    let k4n = p.k / 4u;
    token_inv_rms(t0, tid, n_tok);
    let tx = tid % 8u;  // rows n0 + 8 tx ..
    let ty = tid / 8u;  // tokens t0 + 4 ty ..
    let tb = t0 + ty * 4u;
    if (tb >= n_tok) {
        return;
    }
    let last = vec4<u32>(p.n - 1u);
    let r0 = n0 + tx * 8u;
    let ra = min(vec4<u32>(r0) + vec4<u32>(0u, 1u, 2u, 3u), last);
    let rb = min(vec4<u32>(r0) + vec4<u32>(4u, 5u, 6u, 7u), last);
    let tl = n_tok - 1u;
    let t1 = min(tb + 1u, tl);
    let t2 = min(tb + 2u, tl);
    let t3 = min(tb + 3u, tl);
    // Per row, its 4 tokens' sums.
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    let one = vec4<f32>(1.0);
    var na = mat4x4<f32>(one, one, one, one);
    var nb = na;
    for (var g = 0u; g < k4n / 8u; g++) {
        if (FUSE_NORM) {
            let a = 8u * g;
            na = mat4x4<f32>(aux[a], aux[a + 1u], aux[a + 2u], aux[a + 3u]);
            nb = mat4x4<f32>(aux[a + 4u], aux[a + 5u], aux[a + 6u], aux[a + 7u]);
        }
        let x0 = in32(tb, g, na, nb);
        let x1 = in32(t1, g, na, nb);
        let x2 = in32(t2, g, na, nb);
        let x3 = in32(t3, g, na, nb);
        c0 += row_tokens(ra.x, g, k4n, x0, x1, x2, x3);
        c1 += row_tokens(ra.y, g, k4n, x0, x1, x2, x3);
        c2 += row_tokens(ra.z, g, k4n, x0, x1, x2, x3);
        c3 += row_tokens(ra.w, g, k4n, x0, x1, x2, x3);
        c4 += row_tokens(rb.x, g, k4n, x0, x1, x2, x3);
        c5 += row_tokens(rb.y, g, k4n, x0, x1, x2, x3);
        c6 += row_tokens(rb.z, g, k4n, x0, x1, x2, x3);
        c7 += row_tokens(rb.w, g, k4n, x0, x1, x2, x3);
    }
    var sc = one;
    if (FUSE_NORM) {
        let i = ty * 4u;
        sc = vec4<f32>(invs[i], invs[i + 1u], invs[i + 2u], invs[i + 3u]);
    }
    store_row(tb, r0, n_tok, c0 * sc);
    store_row(tb, r0 + 1u, n_tok, c1 * sc);
    store_row(tb, r0 + 2u, n_tok, c2 * sc);
    store_row(tb, r0 + 3u, n_tok, c3 * sc);
    store_row(tb, r0 + 4u, n_tok, c4 * sc);
    store_row(tb, r0 + 5u, n_tok, c5 * sc);
    store_row(tb, r0 + 6u, n_tok, c6 * sc);
    store_row(tb, r0 + 7u, n_tok, c7 * sc);
}
