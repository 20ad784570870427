// KV-cache writes (after the kv_cache.wgsl and kv_write.wgsl preludes). One workgroup per
// (head, token); token t is activation row state.row + t (a lane of a batched step has its own row):
//   main:    RoPE on Q and K and the KV append for t < state.n_tokens at position state.pos + t;
//            grid [n_heads + 2 n_kv, T]: Q heads -> q_out (f32), K heads rotated and V heads
//            copied into this position's slot in the cache's format. Prefill only: decode
//            steps do this inside attention.wgsl's `decode` entry point.
//   requant: progressive only, after `main` wrote the chunk and before attention: for each
//            position P of it, P - ring_recent moves from the ring to its main-store row in
//            MAIN_FMT (int8); grid [2 n_kv, T] (K heads, then V heads). The ring keeps the row
//            (ring_rows = ring_recent + the largest chunk), so a rolled-back pass can still
//            read it. A decode step (ring_recent >= 1) only moves rows of earlier steps.
//   qkv:   [T, (n_heads + 2 n_kv) * hd]  (Q heads, then K heads, then V heads)
//   q_out: [T, n_heads * hd]
// One thread per 4 values of a head (hd <= 256): every format writes whole words, no two
// threads share one.

@group(0) @binding(0) var<uniform> p: KvParams;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(5) var<storage, read> rope: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read> state: array<u32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, 64>;

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
        x = head_value4(src, e, pos, !is_v);
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
