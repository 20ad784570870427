// KV-cache writes and RoPE (after the kv_cache.wgsl prelude), shared by rope_kv.wgsl and
// the fused decode entry of attention.wgsl. The kernel file also declares `qkv` (the QKV
// activations, array<f32>), `rope` (array<vec2<f32>>) and the caches read_write.
//   rope: [rope_rows + extra, hd / 2] (cos, sin) in f64 on the CPU: rows < rope_rows are
//         positions 0.., the rest multiples of rope_rows, so any position P is
//         P % rope_rows rotated by (P / rope_rows) * rope_rows (angle addition).
// ADJACENT pairs (2i, 2i+1) (GGUF's permuted Q/K); otherwise (i, i + hd/2) (Hugging Face).

override ADJACENT: bool = true;

fn rope_cs(pos: u32, i: u32) -> vec2<f32> {
    let half = p.hd / 2u;
    if (pos < p.rope_rows) {
        return rope[pos * half + i];
    }
    let lo = rope[(pos % p.rope_rows) * half + i];
    let hi = rope[(p.rope_rows + pos / p.rope_rows) * half + i];
    return vec2<f32>(lo.x * hi.x - lo.y * hi.y, lo.y * hi.x + lo.x * hi.y);
}

// Value e of the head starting at qkv[src], rotated to position `pos` when `rotate`.
fn head_value(src: u32, e: u32, pos: u32, rotate: bool) -> f32 {
    let x = qkv[src + e];
    if (!rotate) {
        return x;
    }
    let half = p.hd / 2u;
    var pair = e % half;
    var first = e < half;
    var partner = select(e - half, e + half, first);
    if (ADJACENT) {
        pair = e / 2u;
        partner = e ^ 1u;
        first = (e & 1u) == 0u;
    }
    let y = qkv[src + partner];
    let cs = rope_cs(pos, pair);
    if (first) {
        return x * cs.x - y * cs.y;
    }
    return y * cs.y + x * cs.x;
}

// Values e..e+3 of the head starting at qkv[src], rotated when `rotate`. ADJACENT pairs lie
// inside the four: each value loaded once and each pair's (cos, sin) once, with the same
// products as `head_value` (figures in README, session 19).
fn head_value4(src: u32, e: u32, pos: u32, rotate: bool) -> vec4<f32> {
    if (ADJACENT && rotate) {
        let x = vec4<f32>(qkv[src + e], qkv[src + e + 1u], qkv[src + e + 2u], qkv[src + e + 3u]);
        let a = rope_cs(pos, e / 2u);
        let b = rope_cs(pos, e / 2u + 1u);
        return vec4<f32>(x.x * a.x - x.y * a.y, x.x * a.y + x.y * a.x, x.z * b.x - x.w * b.y, x.z * b.y + x.w * b.x);
    }
    return vec4<f32>(
        head_value(src, e, pos, rotate),
        head_value(src, e + 1u, pos, rotate),
        head_value(src, e + 2u, pos, rotate),
        head_value(src, e + 3u, pos, rotate),
    );
}

fn put(is_v: bool, i: u32, w: u32) {
    if (is_v) {
        v_cache[i] = w;
    } else {
        k_cache[i] = w;
    }
}

// Store values e..e+3 of head h into slot `s`; `amax` is the head's max |x| (int8 scale).
fn store4(is_v: bool, s: KvSlot, h: u32, e: u32, x: vec4<f32>, amax: f32) {
    let o = h * p.hd + e;
    if (s.fmt == 0u) {
        let w = bitcast<vec4<u32>>(x);
        put(is_v, s.base + o, w.x);
        put(is_v, s.base + o + 1u, w.y);
        put(is_v, s.base + o + 2u, w.z);
        put(is_v, s.base + o + 3u, w.w);
    } else if (s.fmt == 1u) {
        put(is_v, s.base + o / 2u, pack2x16float(x.xy));
        put(is_v, s.base + o / 2u + 1u, pack2x16float(x.zw));
    } else {
        let inv = select(0.0, 1.0 / amax, amax > 0.0);
        put(is_v, s.base + o / 4u, pack4x8snorm(x * inv));
        if (e == 0u) {
            put(is_v, s.base + p.n_kv * p.hd / 4u + h, bitcast<u32>(amax));
        }
    }
}

// What kv_load4 reads back after store4(.., x, amax) in format `fmt` (int8: unscaled codes,
// the scale being amax): attention uses a key it writes exactly as a later read sees it.
fn stored4(fmt: u32, x: vec4<f32>, amax: f32) -> vec4<f32> {
    if (fmt == 0u) {
        return x;
    }
    if (fmt == 1u) {
        return vec4<f32>(unpack2x16float(pack2x16float(x.xy)), unpack2x16float(pack2x16float(x.zw)));
    }
    let inv = select(0.0, 1.0 / amax, amax > 0.0);
    return unpack4x8snorm(pack4x8snorm(x * inv));
}

// The int8 scale of a head whose thread `tid` holds values x at e = 4 tid (hd <= 4 WG): max
// |x| over the threads with `mine`; 0 for the float formats. Every thread calls it (barriers).
fn head_amax(tid: u32, mine: bool, fmt: u32, x: vec4<f32>) -> f32 {
    if (fmt != 2u) {
        return 0.0;
    }
    let a = abs(x);
    return reduce_max(tid, select(0.0, max(max(a.x, a.y), max(a.z, a.w)), mine));
}

// Store a head: each thread its 4 values `x` at e = 4 tid (hd <= 4 WG), reducing max |x|
// over the head first for int8. Every thread calls it (barriers); only `live` ones write.
fn store_head(tid: u32, live: bool, is_v: bool, s: KvSlot, h: u32, x: vec4<f32>) {
    let e = 4u * tid;
    let mine = live && e < p.hd;
    let amax = head_amax(tid, mine, s.fmt, x);
    if (mine) {
        store4(is_v, s, h, e, x, amax);
    }
}
