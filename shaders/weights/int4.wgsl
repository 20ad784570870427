// Weight prelude: int4 matrices, row-major [rows, k], k a multiple of 32 (Q4_0/Q4_1-compatible).
// `w`: 8 nibbles per u32, k ascending from the low nibble, so 4 consecutive k share one
// 16-bit half: weights 4f..4f+3 (f = row * k/4 + k/4) are half f % 2 of word f / 2. Bound as
// vec4<u32> (one vec4 per group of 32 weights).
// `s`: per group of 32 weights along k one u32: f16 scale (low half), f16 min (high half).
// Weight = q * scale + min; q * scale is exact in f32 (4-bit times 11-bit mantissa), so a
// fused multiply-add gives the same bits as the separate operations.
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> s: array<u32>;

fn nibbles(h: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(h) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
}

fn load_w4(row: u32, k4: u32, k4_per_row: u32) -> vec4<f32> {
    let f = row * k4_per_row + k4;
    let dm = unpack2x16float(s[f >> 3u]);
    let h = w[f >> 3u][(f >> 1u) & 3u] >> ((f & 1u) * 16u);
    return nibbles(h) * dm.x + dm.y;
}

// Weights 8*k8..8*k8+7 of a row: one whole word (k a multiple of 8).
fn load_w8(row: u32, k8: u32, k8_per_row: u32) -> mat2x4<f32> {
    let f = row * k8_per_row + k8;
    let dm = unpack2x16float(s[f >> 2u]);
    let word = w[f >> 2u][f & 3u];
    return mat2x4<f32>(nibbles(word) * dm.x + dm.y, nibbles(word >> 16u) * dm.x + dm.y);
}
