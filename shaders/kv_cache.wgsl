// KV-cache prelude shared by rope_kv.wgsl and attention.wgsl (then kv_write.wgsl): the
// layout, the position -> row mapping of the sliding window and the storage formats. The
// kernel file declares `p: KvParams`, `k_cache` and `v_cache` (array<u32>, read or
// read_write), and `WG` and a workgroup array `red` of at least WG floats for `reduce_max`.
//
// Each cache buffer holds, in u32 words:
//   ring: [ring_rows, layers, ring_row] (progressive only: the newest positions, RING_FMT)
//   main: [main_rows, layers, main_row] (every other position, MAIN_FMT)
// Formats, per row of n_kv * hd values: 0 = f32 (one word per value), 1 = f16 packed two
// per word, 2 = int8 four per word followed by n_kv f32 scales (max |x| of each head).
// Position q lives in main row q for q < sinks, else in sinks + (q - sinks) % (main_rows - sinks):
// a ring after the attention sinks. A query at position P sees the sinks and the `window`
// positions up to P; window <= main_rows - sinks - (largest chunk), so the rows a chunk (or a
// speculative verify pass that is rolled back) overwrites are never ones a query still needs.

struct KvParams {
    n_heads: u32,
    n_kv: u32,
    hd: u32,
    layer: u32,
    layers: u32,
    scale: f32,
    sinks: u32,
    window: u32,
    main_rows: u32,
    main_off: u32,      // words before the main store (the ring's size)
    main_row: u32,      // words per (row, layer) in the main store
    ring_rows: u32,     // 0 = no ring
    ring_recent: u32,   // positions > latest - ring_recent are read from the ring
    ring_row: u32,
    rope_rows: u32,     // positions the first part of the RoPE table covers
    score_stride: u32,  // keys per (token, head) in the attention scratch
}

override MAIN_FMT: u32 = 0u;
override RING_FMT: u32 = 0u;

fn main_row_of(q: u32) -> u32 {
    if (q < p.sinks) {
        return q;
    }
    return p.sinks + (q - p.sinks) % (p.main_rows - p.sinks);
}

// First word of (row, layer) in the main store / (slot, layer) in the ring.
fn main_base(row: u32) -> u32 {
    return p.main_off + (row * p.layers + p.layer) * p.main_row;
}

fn ring_base(slot: u32) -> u32 {
    return (slot * p.layers + p.layer) * p.ring_row;
}

// Where position q of this layer is stored, given the newest position written (`latest`).
struct KvSlot {
    base: u32,
    fmt: u32,
}

fn kv_slot(q: u32, latest: u32) -> KvSlot {
    if (p.ring_rows > 0u && q + p.ring_recent > latest) {
        return KvSlot(ring_base(q % p.ring_rows), RING_FMT);
    }
    return KvSlot(main_base(main_row_of(q)), MAIN_FMT);
}

// The slot a new position is written to: the ring under progressive, else the main store.
fn kv_write_slot(q: u32) -> KvSlot {
    if (p.ring_rows > 0u) {
        return KvSlot(ring_base(q % p.ring_rows), RING_FMT);
    }
    return KvSlot(main_base(main_row_of(q)), MAIN_FMT);
}

fn kv_word(is_v: bool, i: u32) -> u32 {
    if (is_v) {
        return v_cache[i];
    }
    return k_cache[i];
}

// Values e..e+3 (e a multiple of 4) of a row; int8 values come without their scale.
fn kv_load4(is_v: bool, s: KvSlot, e: u32) -> vec4<f32> {
    if (s.fmt == 0u) {
        let i = s.base + e;
        return vec4<f32>(
            bitcast<f32>(kv_word(is_v, i)),
            bitcast<f32>(kv_word(is_v, i + 1u)),
            bitcast<f32>(kv_word(is_v, i + 2u)),
            bitcast<f32>(kv_word(is_v, i + 3u)),
        );
    }
    if (s.fmt == 1u) {
        let i = s.base + e / 2u;
        return vec4<f32>(unpack2x16float(kv_word(is_v, i)), unpack2x16float(kv_word(is_v, i + 1u)));
    }
    return unpack4x8snorm(kv_word(is_v, s.base + e / 4u));
}

// The int8 scale of head h in a row (1 for the float formats).
fn kv_scale(is_v: bool, s: KvSlot, h: u32) -> f32 {
    if (s.fmt != 2u) {
        return 1.0;
    }
    return bitcast<f32>(kv_word(is_v, s.base + p.n_kv * p.hd / 4u + h));
}

// Workgroup maximum of `v` (int8 row scales, attention softmax). Uniform control flow.
fn reduce_max(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] = max(red[tid], red[tid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}
