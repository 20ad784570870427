// One group of 32 float values quantised to int8 (appended before matvec_q8in.wgsl and
// attention_q8.wgsl): scale d = max|v| / 127, codes round(v / d) in -127..=127, packed so that
// byte j of the even word of pair w holds element 8w + 2j and of the odd word element
// 8w + 2j + 1 (the layout of an int4 weight word's low and high nibbles), and the exact sum
// of the values. A packed input group in a buffer is three vec4<u32>: `lo`, `hi`, and the
// bits of (d, sum, 0, 0).

fn pack_pair(a: vec4<f32>, b: vec4<f32>, inv: f32) -> vec2<u32> {
    let qa = vec4<i32>(round(a * inv));
    let qb = vec4<i32>(round(b * inv));
    return vec2<u32>(pack4xI8(vec4<i32>(qa.x, qa.z, qb.x, qb.z)), pack4xI8(vec4<i32>(qa.y, qa.w, qb.y, qb.w)));
}

// One group of 32 values (v0..v7, consecutive) as int8: scale d = max|v| / 127, the code
// words in the layout above (`lo` words 0..3, `hi` words 4..7), and the exact sum of v.
struct QGroup {
    lo: vec4<u32>,
    hi: vec4<u32>,
    d: f32,
    sum: f32,
}

fn quant_group(
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
    v4: vec4<f32>,
    v5: vec4<f32>,
    v6: vec4<f32>,
    v7: vec4<f32>,
) -> QGroup {
    let m4 = max(max(max(abs(v0), abs(v1)), max(abs(v2), abs(v3))), max(max(abs(v4), abs(v5)), max(abs(v6), abs(v7))));
    let amax = max(max(m4.x, m4.y), max(m4.z, m4.w));
    let inv = select(0.0, 127.0 / amax, amax > 0.0);
    // Summed by halves, as the two threads of `q8in`'s quantiser sum theirs (equal bits).
    let s4 = (v0 + v1 + v2 + v3) + (v4 + v5 + v6 + v7);
    return QGroup(
        vec4<u32>(pack_pair(v0, v1, inv), pack_pair(v2, v3, inv)),
        vec4<u32>(pack_pair(v4, v5, inv), pack_pair(v6, v7, inv)),
        amax / 127.0,
        s4.x + s4.y + s4.z + s4.w,
    );
}

// One row's int4 group (code words q, scale and min dm) against the packed inputs xa | xb
// with their (d_x, sum x): the codes of 8 weights meet 8 input bytes in two `dot4I8Packed`
// (the low nibbles of a word with the even word of a pair, the high with the odd).
fn q8_group(q: vec4<u32>, dm: vec2<f32>, xa: vec4<u32>, xb: vec4<u32>, xs: vec4<f32>) -> f32 {
    let lo = q & vec4<u32>(0x0f0f0f0fu);
    let hi = (q >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);
    let c = dot4I8Packed(lo.x, xa.x) + dot4I8Packed(hi.x, xa.y) + dot4I8Packed(lo.y, xa.z) + dot4I8Packed(hi.y, xa.w)
        + dot4I8Packed(lo.z, xb.x) + dot4I8Packed(hi.z, xb.y) + dot4I8Packed(lo.w, xb.z) + dot4I8Packed(hi.w, xb.w);
    return f32(c) * (dm.x * xs.x) + dm.y * xs.y;
}
