// Kept columns of int3 / int2 (quant::kept): a few input columns keep their weights at f16
// outside the groups. `kept`: [0] K; [1 + g] bit c % 32 of each kept column c of group g
// (32 columns); [1 + G + g] kept columns before group g (G groups per row); from 1 + 2G,
// per row the K kept weights as f16, two per word, in column order.
@group(0) @binding(17) var<storage, read> kept: array<u32>;

// Weights 4*k4..4*k4+3 of `row`, `v` from the groups, with the kept ones put in their place.
fn with_kept(row: u32, k4: u32, k4_per_row: u32, v: vec4<f32>) -> vec4<f32> {
    let g = k4 >> 3u;
    let shift = (k4 & 7u) * 4u;
    let mask = kept[1u + g];
    let here = (mask >> shift) & 15u;
    if (here == 0u) {
        return v;
    }
    let gn = k4_per_row >> 3u;
    var h = 2u * (1u + 2u * gn) + kept[0] * row + kept[1u + gn + g] + countOneBits(mask & ((1u << shift) - 1u));
    var out = v;
    for (var i = 0u; i < 4u; i++) {
        if ((here & (1u << i)) != 0u) {
            out[i] = unpack2x16float(kept[h >> 1u])[h & 1u];
            h++;
        }
    }
    return out;
}
