// Causal grouped-query attention over the KV cache (after the kv_cache.wgsl prelude), one
// workgroup per (head, token) at position P = state.pos + t, activation row state.row + t:
//   out[t, h, :] = softmax_j(q[t,h] . k[j, h / group] * scale) @ v[j, h / group]
// over the keys j of P: the attention sinks 0..sinks and the `window` positions up to P
// (every position <= P while the window has not filled).
//   q, out:  [T, n_heads * hd]
//   caches:  see kv_cache.wgsl (any storage format; read here, written by rope_kv.wgsl)
//   scores:  [T, n_heads, score_stride] scratch
// Scores go through a scratch buffer so that any context length fits (workgroup memory
// would cap it). With SPLIT > 1 (decode on GPUs) the keys are split over SPLIT workgroups
// per head (grid z) that write unnormalised partials (max, sum, acc[hd]); the `combine`
// entry point merges them, so that long contexts use more than n_heads workgroups.

override WG: u32 = 64;     // power of two
override SPLIT: u32 = 1;   // workgroups per (head, token) over the keys

@group(0) @binding(0) var<uniform> p: KvParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
// [rows, n_heads, SPLIT, 4 + hd]: (max, sum, 0, 0) then the unnormalised sums, vec4-aligned
// so that the o projection can merge them as it loads its input (matvec COMBINE_SPLIT).
@group(0) @binding(6) var<storage, read_write> partial: array<f32>;
@group(0) @binding(7) var<storage, read> state: array<u32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> q_sh: array<vec4<f32>, 64>;     // this head's query, hd <= 256
var<workgroup> parts: array<vec4<f32>, 256>;   // partial sums of the V phase

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

// Position of key j: the sinks first, then the window.
fn key_pos(j: u32, n_sink: u32, first: u32) -> u32 {
    return select(first + (j - n_sink), j, j < n_sink);
}

// Threads split the keys for the scores; for the weighted sum of V each thread owns 4
// dimensions of one of WG / (hd / 4) key subsets, and the subsets are added at the end.
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let h = wid.x;
    let t = wid.y;
    let n_tok = state[1];
    let pos = state[0] + t;
    let latest = state[0] + max(n_tok, 1u) - 1u;
    // Keys: positions 0..n_sink, then first..=pos.
    let n_sink = min(p.sinks, pos + 1u);
    let first = max(p.sinks, pos + 1u - min(pos + 1u, p.window));
    let n_keys = n_sink + select(0u, pos + 1u - first, pos + 1u > first);
    let per_split = (n_keys + SPLIT - 1u) / SPLIT;
    let j0 = min(wid.z * per_split, n_keys);
    let j1 = min(j0 + per_split, n_keys);
    let kvh = h / (p.n_heads / p.n_kv);
    let hd4 = p.hd / 4u;
    let row = state[2] + t;
    let qb = row * p.n_heads * p.hd + h * p.hd;
    let sb = (row * p.n_heads + h) * p.score_stride;
    let is_live = t < n_tok;

    for (var d = tid; d < hd4; d += WG) {
        let o = qb + d * 4u;
        q_sh[d] = vec4<f32>(q[o], q[o + 1u], q[o + 2u], q[o + 3u]);
    }
    workgroupBarrier();

    var m = -3.0e38;
    if (is_live) {
        for (var j = j0 + tid; j < j1; j += WG) {
            let ks = kv_slot(key_pos(j, n_sink, first), latest);
            var s = 0.0;
            for (var d = 0u; d < hd4; d++) {
                s += dot(q_sh[d], kv_load4(false, ks, kvh * p.hd + 4u * d));
            }
            s *= p.scale * kv_scale(false, ks, kvh);
            scores[sb + j] = s;
            m = max(m, s);
        }
    }
    let mx = reduce_max(tid, m);
    var l = 0.0;
    if (is_live) {
        for (var j = j0 + tid; j < j1; j += WG) {
            let e = exp(scores[sb + j] - mx);
            scores[sb + j] = e;
            l += e;
        }
    }
    let total = reduce_sum(tid, l);
    storageBarrier();
    workgroupBarrier();

    let n_parts = max(WG / hd4, 1u);
    let d4 = tid % hd4;
    let part = tid / hd4;
    var acc = vec4<f32>(0.0);
    if (is_live && part < n_parts) {
        for (var j = j0 + part; j < j1; j += n_parts) {
            let vs = kv_slot(key_pos(j, n_sink, first), latest);
            acc += scores[sb + j] * kv_scale(true, vs, kvh) * kv_load4(true, vs, kvh * p.hd + 4u * d4);
        }
    }
    parts[tid] = acc;
    workgroupBarrier();
    if (is_live && part == 0u) {
        // hd4 > WG would leave dimensions without a thread: the host keeps hd <= 4 * WG.
        var sum = vec4<f32>(0.0);
        for (var i = 0u; i < n_parts; i++) {
            sum += parts[i * hd4 + d4];
        }
        if (SPLIT > 1u) {
            let pb = ((row * p.n_heads + h) * SPLIT + wid.z) * (p.hd + 4u);
            if (d4 == 0u) {
                partial[pb] = mx;
                partial[pb + 1u] = total;
            }
            let o = pb + 4u + d4 * 4u;
            partial[o] = sum.x;
            partial[o + 1u] = sum.y;
            partial[o + 2u] = sum.z;
            partial[o + 3u] = sum.w;
        } else {
            let o = qb + d4 * 4u;
            let inv = 1.0 / total;
            out[o] = sum.x * inv;
            out[o + 1u] = sum.y * inv;
            out[o + 2u] = sum.z * inv;
            out[o + 3u] = sum.w * inv;
        }
    }
}

// Merge the SPLIT partials of one (head, token): one workgroup, a thread per dimension.
@compute @workgroup_size(WG)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    if (t >= state[1]) {
        return;
    }
    let row = state[2] + t;
    let stride = p.hd + 4u;
    let base = (row * p.n_heads + h) * SPLIT * stride;
    var mx = -3.0e38;
    for (var z = 0u; z < SPLIT; z++) {
        if (partial[base + z * stride + 1u] > 0.0) {
            mx = max(mx, partial[base + z * stride]);
        }
    }
    for (var d = lid.x; d < p.hd; d += WG) {
        var l = 0.0;
        var acc = 0.0;
        for (var z = 0u; z < SPLIT; z++) {
            let pz = base + z * stride;
            let lz = partial[pz + 1u];
            if (lz > 0.0) {
                let w = exp(partial[pz] - mx);
                l += lz * w;
                acc += partial[pz + 4u + d] * w;
            }
        }
        out[row * p.n_heads * p.hd + h * p.hd + d] = acc / l;
    }
}
