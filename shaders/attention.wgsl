// Causal grouped-query attention over the KV cache, one workgroup per (head, token):
//   out[t, h, :] = softmax_j(q[t,h] . k[j, h / group] * scale) @ v[j, h / group],  j <= pos + t
//   q, out:  [T, n_heads * hd]
//   caches:  [layers, ctx, n_kv * hd] (this layer at p.layer_off)
//   scores:  [T, n_heads, ctx] scratch
// Scores go through a scratch buffer so that any context length fits (workgroup memory
// would cap it).

struct AttnParams {
    n_heads: u32,
    n_kv: u32,
    hd: u32,
    layer_off: u32,
    ctx: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 64;  // power of two

@group(0) @binding(0) var<uniform> p: AttnParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(7) var<storage, read> state: array<u32>;

var<workgroup> red: array<f32, 256>;

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

fn reduce_sum(tid: u32, v: f32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] += red[tid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let h = wid.x;
    let t = wid.y;
    let n_tok = state[1];
    let pos = state[0] + t;
    let n_keys = min(pos + 1u, p.ctx);
    let kvh = h / (p.n_heads / p.n_kv);
    let kv_row = p.n_kv * p.hd;
    let qb = t * p.n_heads * p.hd + h * p.hd;
    let sb = (t * p.n_heads + h) * p.ctx;
    let is_live = t < n_tok;

    var m = -3.0e38;
    if (is_live) {
        for (var j = tid; j < n_keys; j += WG) {
            let kb = p.layer_off + j * kv_row + kvh * p.hd;
            var s = 0.0;
            for (var d = 0u; d < p.hd; d += 4u) {
                let qv = vec4<f32>(q[qb + d], q[qb + d + 1u], q[qb + d + 2u], q[qb + d + 3u]);
                let kv = vec4<f32>(k_cache[kb + d], k_cache[kb + d + 1u], k_cache[kb + d + 2u], k_cache[kb + d + 3u]);
                s += dot(qv, kv);
            }
            s *= p.scale;
            scores[sb + j] = s;
            m = max(m, s);
        }
    }
    let mx = reduce_max(tid, m);
    var l = 0.0;
    if (is_live) {
        for (var j = tid; j < n_keys; j += WG) {
            let e = exp(scores[sb + j] - mx);
            scores[sb + j] = e;
            l += e;
        }
    }
    let total = reduce_sum(tid, l);
    storageBarrier();
    workgroupBarrier();
    if (!is_live) {
        return;
    }
    let inv = 1.0 / total;
    for (var d = tid; d < p.hd; d += WG) {
        var acc = 0.0;
        for (var j = 0u; j < n_keys; j++) {
            acc += scores[sb + j] * v_cache[p.layer_off + j * kv_row + kvh * p.hd + d];
        }
        out[qb + d] = acc * inv;
    }
}
