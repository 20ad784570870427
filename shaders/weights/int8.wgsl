// Weight prelude: int8 matrices, row-major [rows, k], k a multiple of 32 (Q8_0-compatible).
// `w`: 4 signed bytes per u32, k ascending from the low byte: word f = row * k/4 + k/4;
// bound as vec4<u32> (two per group of 32 weights).
// `s`: per group of 32 weights along k one f16 scale, two per u32 (group g in half g % 2
// of word g / 2). Weight = q * scale, exact in f32 (8-bit times 11-bit mantissa).
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> s: array<u32>;

// Arithmetic right shifts sign-extend each byte.
fn bytes4(word: u32) -> vec4<f32> {
    let b = bitcast<i32>(word);
    return vec4<f32>(vec4<i32>(b << 24u, b << 16u, b << 8u, b) >> vec4<u32>(24u));
}

fn load_w4(row: u32, k4: u32, k4_per_row: u32) -> vec4<f32> {
    let f = row * k4_per_row + k4;
    let g = f >> 3u;
    let scale = unpack2x16float(s[g >> 1u])[g & 1u];
    return bytes4(w[f >> 2u][f & 3u]) * scale;
}

// Weights 8*k8..8*k8+7 of a row: two words (k a multiple of 8).
fn load_w8(row: u32, k8: u32, k8_per_row: u32) -> mat2x4<f32> {
    let f = row * k8_per_row + k8;
    let g = f >> 2u;
    let scale = unpack2x16float(s[g >> 1u])[g & 1u];
    let q = w[f >> 1u];
    let h = (f & 1u) * 2u;
    return mat2x4<f32>(bytes4(q[h]) * scale, bytes4(q[h + 1u]) * scale);
}

// 32 weights of a row (one group: two vec4s of words and one scale) dotted with the inputs
// xa | xb (columns of 4 consecutive k).
fn dot_w32(row: u32, g: u32, k4_per_row: u32, xa: mat4x4<f32>, xb: mat4x4<f32>, xsum: f32) -> f32 {
    let gi = (row * k4_per_row) / 8u + g;
    let scale = unpack2x16float(s[gi >> 1u])[gi & 1u];
    let qa = w[2u * gi];
    let qb = w[2u * gi + 1u];
    let lo = dot(bytes4(qa.x), xa[0]) + dot(bytes4(qa.y), xa[1]) + dot(bytes4(qa.z), xa[2]) + dot(bytes4(qa.w), xa[3]);
    let hi = dot(bytes4(qb.x), xb[0]) + dot(bytes4(qb.y), xb[1]) + dot(bytes4(qb.z), xb[2]) + dot(bytes4(qb.w), xb[3]);
    return (lo + hi) * scale;
}
