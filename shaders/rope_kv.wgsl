// KV-cache writes (after the kv_cache.wgsl prelude). One workgroup per (head, token); token t
// is activation row state.row + t (a lane of a batched step has its own row):
//   main:    RoPE on Q and K and the KV append for t < state.n_tokens at position state.pos + t;
//            grid [n_heads + 2 n_kv, T]: Q heads -> q_out (f32), K heads rotated and V heads
//            copied into this position's slot in the cache's format.
//   requant: progressive only, after `main` wrote the chunk: for each position P of it,
//            P - ring_recent moves from the ring to its main-store row in MAIN_FMT (int8);
//            grid [2 n_kv, T] (K heads, then V heads). The ring keeps the row (ring_rows =
//            ring_recent + the largest chunk), so a rolled-back pass can still read it.
//   qkv:   [T, (n_heads + 2 n_kv) * hd]  (Q heads, then K heads, then V heads)
//   q_out: [T, n_heads * hd]
//   rope:  [rope_rows + extra, hd / 2] (cos, sin) in f64 on the CPU: rows < rope_rows are
//          positions 0.., the rest multiples of rope_rows, so any position P is
//          P % rope_rows rotated by (P / rope_rows) * rope_rows (angle addition).
// ADJACENT pairs (2i, 2i+1) (GGUF's permuted Q/K); otherwise (i, i + hd/2) (Hugging Face).
// One thread per 4 values of a head (hd <= 256): every format writes whole words, no two
// threads share one.

override ADJACENT: bool = true;

@group(0) @binding(0) var<uniform> p: KvParams;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(5) var<storage, read> rope: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read> state: array<u32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

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

// Store a head: each thread its 4 values `x` at e = 4 tid (hd <= 4 WG), reducing max |x|
// over the head first for int8. Every thread calls it (barriers); only `live` ones write.
fn store_head(tid: u32, live: bool, is_v: bool, s: KvSlot, h: u32, x: vec4<f32>) {
    let e = 4u * tid;
    let mine = live && e < p.hd;
    var amax = 0.0;
    if (s.fmt == 2u) {
        let a = abs(x);
        amax = reduce_max(tid, select(0.0, max(max(a.x, a.y), max(a.z, a.w)), mine));
    }
    if (mine) {
        store4(is_v, s, h, e, x, amax);
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let hh = wid.x;
    let t = wid.y;
    let tid = lid.x;
    // No early return: store_head has barriers (int8), so every thread must reach it.
    let live = t < state[1];
    let pos = state[0] + t;
    let row = state[2] + t;
    let src = row * (p.n_heads + 2u * p.n_kv) * p.hd + hh * p.hd;
    let is_v = hh >= p.n_heads + p.n_kv;
    let e = 4u * tid;
    var x = vec4<f32>(0.0);
    if (live && e < p.hd) {
        x = vec4<f32>(
            head_value(src, e, pos, !is_v),
            head_value(src, e + 1u, pos, !is_v),
            head_value(src, e + 2u, pos, !is_v),
            head_value(src, e + 3u, pos, !is_v),
        );
    }
    if (hh < p.n_heads) {
        if (live && e < p.hd) {
            let o = row * p.n_heads * p.hd + hh * p.hd + e;
            q_out[o] = x.x;
            q_out[o + 1u] = x.y;
            q_out[o + 2u] = x.z;
            q_out[o + 3u] = x.w;
        }
        return;
    }
    store_head(tid, live, is_v, kv_write_slot(pos), (hh - p.n_heads) % p.n_kv, x);
}

@compute @workgroup_size(64)
fn requant(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x % p.n_kv;
    let t = wid.y;
    let is_v = wid.x >= p.n_kv;
    let tid = lid.x;
    let pos = state[0] + t;
    let live = t < state[1] && pos >= p.ring_recent;
    let old = select(0u, pos - p.ring_recent, live);
    let ring_slot = KvSlot(ring_base(old % p.ring_rows), RING_FMT);
    var x = vec4<f32>(0.0);
    if (live && 4u * tid < p.hd) {
        x = kv_load4(is_v, ring_slot, h * p.hd + 4u * tid);
    }
    store_head(tid, live, is_v, KvSlot(main_base(main_row_of(old)), MAIN_FMT), h, x);
}
