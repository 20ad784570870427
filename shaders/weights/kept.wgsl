// Kept columns of int3 / int2 (quant::kept): a few input columns keep their weights at f16
// outside the groups. `kept`: [0] K; [1 + g] bit c % 32 of each kept column c of group g
// (32 columns); [1 + G + g] kept columns before group g (G groups per row); from 1 + 2G,
// per row the K kept weights as f16, two per word, in column order. The format's prelude
// supplies `group_w4` (4 weights from the groups); this file its `load_w4` and `load_w8`.
@group(0) @binding(17) var<storage, read> kept: array<u32>;

fn load_w4(row: u32, k4: u32, k4_per_row: u32) -> vec4<f32> {
    return with_kept(row, k4, k4_per_row, group_w4(row, k4, k4_per_row));
}

// Weights 8*k8..8*k8+7 of a row (k a multiple of 8).
fn load_w8(row: u32, k8: u32, k8_per_row: u32) -> mat2x4<f32> {
    let k4n = 2u * k8_per_row;
    return with_kept8(row, k8, k4n, mat2x4<f32>(group_w4(row, 2u * k8, k4n), group_w4(row, 2u * k8 + 1u, k4n)));
}

// The kept weight at half `i` of `kept`.
fn kept_half(i: u32) -> f32 {
    let u = unpack2x16float(kept[i >> 1u]);
    return select(u.x, u.y, (i & 1u) == 1u);
}

// Weights 4*k4..4*k4+3 of `row`, `v` from the groups, with the kept ones put in their place.
// No run-time-indexed vector and no loop: the common case costs one load and a branch.
fn with_kept(row: u32, k4: u32, k4_per_row: u32, v: vec4<f32>) -> vec4<f32> {
    let g = k4 >> 3u;
    let shift = (k4 & 7u) * 4u;
    let mask = kept[1u + g];
    let here = (mask >> shift) & 15u;
    if (here == 0u) {
        return v;
    }
    let gn = k4_per_row >> 3u;
    let h = 2u * (1u + 2u * gn) + kept[0] * row + kept[1u + gn + g] + countOneBits(mask & ((1u << shift) - 1u));
    // Component i's weight is the kept one after those of components < i (others read h).
    let on = (vec4<u32>(here) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u);
    let at = select(vec4<u32>(h), vec4<u32>(h, h + on.x, h + on.x + on.y, h + on.x + on.y + on.z), on == vec4<u32>(1u));
    let k = vec4<f32>(kept_half(at.x), kept_half(at.y), kept_half(at.z), kept_half(at.w));
    return select(v, k, on == vec4<u32>(1u));
}

// `with_kept` for weights 8*k8..8*k8+7 (the columns of `v`): one mask load for the 8.
fn with_kept8(row: u32, k8: u32, k4_per_row: u32, v: mat2x4<f32>) -> mat2x4<f32> {
    let here = (kept[1u + (k8 >> 2u)] >> ((k8 & 3u) * 8u)) & 255u;
    if (here == 0u) {
        return v;
    }
    return mat2x4<f32>(with_kept(row, 2u * k8, k4_per_row, v[0]), with_kept(row, 2u * k8 + 1u, k4_per_row, v[1]));
}
