// Weight prelude: int2 matrices, row-major [rows, k], k a multiple of the group (asymmetric).
// `w`: 16 codes per u32, k ascending from the low bits: the 4 weights of vec4 f (f = row *
// k/4 + k/4) are byte f % 4 of word f / 4.
// `s`: per group of QG4 * 4 weights one u32: f16 scale (low half), f16 min (high half).
// Weight = q * scale + min (q * scale exact in f32), or the kept column's (weights/kept.wgsl).
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> s: array<u32>;
override QG4: u32;  // vec4s per scale group (quant::gpu_formats::INT2_GROUP / 4)

// Weights 4*k4..4*k4+3 of a row as the groups give them (`load_w4` / `load_w8`, which put
// the kept columns in, are in weights/kept.wgsl).
fn group_w4(row: u32, k4: u32, k4_per_row: u32) -> vec4<f32> {
    let f = row * k4_per_row + k4;
    let dm = unpack2x16float(s[f / QG4]);
    let q = (vec4<u32>(w[f >> 2u] >> ((f & 3u) * 8u)) >> vec4<u32>(0u, 2u, 4u, 6u)) & vec4<u32>(3u);
    return vec4<f32>(q) * dm.x + dm.y;
}
