// Weight prelude: int4 matrices, row-major [rows, k], k a multiple of 32 (Q4_0/Q4_1-compatible).
// `w`: 8 nibbles per u32, k ascending from the low nibble, so 4 consecutive k share one
// 16-bit half: weights 4f..4f+3 (f = row * k/4 + k/4) are half f % 2 of word f / 2. Bound as
// vec4<u32> (one vec4 per group of 32 weights).
// `s`: per group of 32 weights along k one u32: f16 scale (low half), f16 min (high half);
// with INT4_SYM (Q4_0's layout, 4.5 bits per weight) one f16 scale per group, two per u32
// (group g in half g % 2 of word g / 2), and min = -8 scale.
// Weight = q * scale + min; q * scale is exact in f32 (4-bit times 11-bit mantissa), so a
// fused multiply-add gives the same bits as the separate operations.
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> s: array<u32>;

override INT4_SYM: bool = false;

// (scale, min) of group g (the g-th run of 32 weights of the matrix).
fn group_dm(g: u32) -> vec2<f32> {
    if (INT4_SYM) {
        let d = unpack2x16float(s[g >> 1u] >> ((g & 1u) * 16u)).x;
        return vec2<f32>(d, -8.0 * d);
    }
    return unpack2x16float(s[g]);
}

fn nibbles(h: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(h) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
}

fn load_w4(row: u32, k4: u32, k4_per_row: u32) -> vec4<f32> {
    let f = row * k4_per_row + k4;
    let dm = group_dm(f >> 3u);
    let h = w[f >> 3u][(f >> 1u) & 3u] >> ((f & 1u) * 16u);
    return nibbles(h) * dm.x + dm.y;
}

// Weights 8*k8..8*k8+7 of a row: one whole word (k a multiple of 8).
fn load_w8(row: u32, k8: u32, k8_per_row: u32) -> mat2x4<f32> {
    let f = row * k8_per_row + k8;
    let dm = group_dm(f >> 2u);
    let word = w[f >> 2u][f & 3u];
    return mat2x4<f32>(nibbles(word) * dm.x + dm.y, nibbles(word >> 16u) * dm.x + dm.y);
}

// Weights 8*k8..8*k8+7 of a row dotted with xa | xb whose sum is `xsum`: the codes' dot
// product first, then the group's scale and minimum once, sum_j (q_j d + m) x_j =
// d sum_j q_j x_j + m sum_j x_j (two FMAs per weight fewer than dequantising each; H100,
// 12288x4096 with norm: 1183 -> 1273 GB/s). Nibble j is masked in place, n_j 16^j, and
// meets x_j 16^-j: the same products bit for bit (power-of-two scaling is exact while
// x_j 2^-28 stays a normal float, |x_j| > 1e-29) without a shift per weight; the scaled
// inputs are the same values for every row, computed once. The matvec is ALU-bound on the
// H100, so each instruction shows: 7B int4 decode 235.6 -> 248.8 tok/s.
fn dot_w8(row: u32, k8: u32, k8_per_row: u32, xa: vec4<f32>, xb: vec4<f32>, xsum: f32) -> f32 {
    let f = row * k8_per_row + k8;
    let dm = group_dm(f >> 2u);
    let word = vec4<u32>(w[f >> 2u][f & 3u]);
    let lo = vec4<f32>(word & vec4<u32>(0xfu, 0xf0u, 0xf00u, 0xf000u));
    let hi = vec4<f32>(word & vec4<u32>(0xf0000u, 0xf00000u, 0xf000000u, 0xf0000000u));
    let sa = xa * vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
    let sb = xb * vec4<f32>(1.52587890625e-5, 9.5367431640625e-7, 5.9604644775390625e-8, 3.725290298461914e-9);
    return (dot(lo, sa) + dot(hi, sb)) * dm.x + xsum * dm.y;
}

// Nibble j (0..7) of each word of q: weights j, 8 + j, 16 + j, 24 + j of a group. Signed
// conversion: x86 without AVX-512 has no unsigned one, and the values are below 16.
fn nibble_j(q: vec4<u32>, j: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>((q >> vec4<u32>(4u * j)) & vec4<u32>(15u)));
}

// 32 weights of a row (one group: one vec4 of words and one scale) dotted with the inputs
// xa | xb (columns of 4 consecutive k) whose sum is `xsum`:
// sum_j (q_j d + m) x_j = d sum_j q_j x_j + m sum_j x_j. The inputs are regrouped to match
// `nibble_j` (free on CPU rasterisers, where each vector component is its own register).
fn dot_w32(row: u32, g: u32, k4_per_row: u32, xa: mat4x4<f32>, xb: mat4x4<f32>, xsum: f32) -> f32 {
    let i = (row * k4_per_row) / 8u + g;
    return dot_q32(w[i], group_dm(i), xa, xb, xsum);
}

// The same with the group's words `q` and (scale, min) `dm` already loaded (the CPU prefill
// kernel loads them once for several tokens).
fn dot_q32(q: vec4<u32>, dm: vec2<f32>, xa: mat4x4<f32>, xb: mat4x4<f32>, xsum: f32) -> f32 {
    let ta = transpose(xa);
    let tb = transpose(xb);
    let qx = dot(nibble_j(q, 0u), vec4<f32>(ta[0].xz, tb[0].xz)) + dot(nibble_j(q, 1u), vec4<f32>(ta[1].xz, tb[1].xz))
        + dot(nibble_j(q, 2u), vec4<f32>(ta[2].xz, tb[2].xz)) + dot(nibble_j(q, 3u), vec4<f32>(ta[3].xz, tb[3].xz))
        + dot(nibble_j(q, 4u), vec4<f32>(ta[0].yw, tb[0].yw)) + dot(nibble_j(q, 5u), vec4<f32>(ta[1].yw, tb[1].yw))
        + dot(nibble_j(q, 6u), vec4<f32>(ta[2].yw, tb[2].yw)) + dot(nibble_j(q, 7u), vec4<f32>(ta[3].yw, tb[3].yw));
    return qx * dm.x + xsum * dm.y;
}
