// Prefill on CPU rasterisers, int4 weights (appended to matmul.wgsl after the int4 prelude;
// entry point `cpu_int4`, with `untiled`'s tiles and thread layout: 8 rows x 4 tokens a
// thread). `untiled` loads a weight word and a scale per row and step of 4 weights; here
// the weights come a group of 32 at a time, 5 words per row read once for the 4 tokens, and
// the 32 inputs per token plus 32 norm weights once for the 8 rows: 200 scalars per 1,024
// multiply-adds. RMSNorm's 1/rms scales each token's sums at the end. lavapipe, SmolLM2 int4,
// first token (4 x 4 `untiled` -> this): 11-token prompt 305 -> 203 ms, 32 tokens 693 ->
// 526 ms.

struct In32 {
    a: mat4x4<f32>,  // inputs 0..15 of the group, columns of 4 consecutive k
    b: mat4x4<f32>,  // inputs 16..31
    sum: f32,
}

// Group g of the input row at `base`, norm-weighted by na | nb.
fn in32(base: u32, g: u32, na: mat4x4<f32>, nb: mat4x4<f32>) -> In32 {
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
    let dm = group_dm(i);
    return vec4<f32>(dot_q32(q, dm, x0.a, x0.b, x0.sum), dot_q32(q, dm, x1.a, x1.b, x1.sum),
        dot_q32(q, dm, x2.a, x2.b, x2.sum), dot_q32(q, dm, x3.a, x3.b, x3.sum));
}

@compute @workgroup_size(64)
fn cpu_int4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = cpu_tile(wid, lid.x);
    if (!t.live) {
        return;
    }
    let k4n = p.k / 4u;
    // Per row, its 4 tokens' sums.
    var c: Rows8Acc;
    let one = vec4<f32>(1.0);
    var na = mat4x4<f32>(one, one, one, one);
    var nb = na;
    for (var g = 0u; g < k4n / 8u; g++) {
        if (FUSE_NORM) {
            let a = 8u * g;
            na = mat4x4<f32>(aux[a], aux[a + 1u], aux[a + 2u], aux[a + 3u]);
            nb = mat4x4<f32>(aux[a + 4u], aux[a + 5u], aux[a + 6u], aux[a + 7u]);
        }
        let x0 = in32(t.x.x, g, na, nb);
        let x1 = in32(t.x.y, g, na, nb);
        let x2 = in32(t.x.z, g, na, nb);
        let x3 = in32(t.x.w, g, na, nb);
        c.c0 += row_tokens(t.r.a.x, g, k4n, x0, x1, x2, x3);
        c.c1 += row_tokens(t.r.a.y, g, k4n, x0, x1, x2, x3);
        c.c2 += row_tokens(t.r.a.z, g, k4n, x0, x1, x2, x3);
        c.c3 += row_tokens(t.r.a.w, g, k4n, x0, x1, x2, x3);
        c.c4 += row_tokens(t.r.b.x, g, k4n, x0, x1, x2, x3);
        c.c5 += row_tokens(t.r.b.y, g, k4n, x0, x1, x2, x3);
        c.c6 += row_tokens(t.r.b.z, g, k4n, x0, x1, x2, x3);
        c.c7 += row_tokens(t.r.b.w, g, k4n, x0, x1, x2, x3);
    }
    store_rows8(t, c);
}
