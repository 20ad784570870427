// RoPE on Q and K plus the KV-cache append, for t < state.n_tokens at position state.pos + t.
//   qkv:   [T, (n_heads + 2 n_kv) * hd]  (Q heads, then K heads, then V heads)
//   q_out: [T, n_heads * hd]             rotated queries
//   k/v cache: [layers, ctx, n_kv * hd]  this layer's slice starts at p.layer_off
//   rope:  [ctx, hd / 2] (cos, sin), precomputed in f64 on the CPU
// ADJACENT pairs (2i, 2i+1) (GGUF's permuted Q/K); otherwise (i, i + hd/2) (Hugging Face).

struct RopeParams {
    n_heads: u32,
    n_kv: u32,
    hd: u32,
    layer_off: u32,
    ctx: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override ADJACENT: bool = true;

@group(0) @binding(0) var<uniform> p: RopeParams;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read> rope: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read> state: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    let half = p.hd / 2u;
    let qk_pairs = (p.n_heads + p.n_kv) * half;
    let v_pairs = p.n_kv * half;
    let i = gid.x;
    if (t >= state[1] || i >= qk_pairs + v_pairs) {
        return;
    }
    let pos = state[0] + t;
    if (pos >= p.ctx) {
        return;
    }
    let row = (p.n_heads + 2u * p.n_kv) * p.hd;
    let src = t * row;
    let kv_row = p.n_kv * p.hd;
    let dst = p.layer_off + pos * kv_row;
    if (i >= qk_pairs) {
        let j = (i - qk_pairs) * 2u;
        let vs = src + (p.n_heads + p.n_kv) * p.hd + j;
        v_cache[dst + j] = qkv[vs];
        v_cache[dst + j + 1u] = qkv[vs + 1u];
        return;
    }
    let head = i / half;
    let pair = i % half;
    var ia = pair;
    var ib = pair + half;
    if (ADJACENT) {
        ia = 2u * pair;
        ib = 2u * pair + 1u;
    }
    let a = qkv[src + head * p.hd + ia];
    let b = qkv[src + head * p.hd + ib];
    let cs = rope[pos * half + pair];
    let ra = a * cs.x - b * cs.y;
    let rb = a * cs.y + b * cs.x;
    if (head < p.n_heads) {
        let o = t * p.n_heads * p.hd + head * p.hd;
        q_out[o + ia] = ra;
        q_out[o + ib] = rb;
    } else {
        let o = dst + (head - p.n_heads) * p.hd;
        k_cache[o + ia] = ra;
        k_cache[o + ib] = rb;
    }
}
