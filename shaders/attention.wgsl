// Causal grouped-query attention over the KV cache (after the kv_cache.wgsl and kv_write.wgsl
// preludes), one workgroup per (head, token) at position P = state.pos + t, activation row
// state.row + t:
//   out[t, h, :] = softmax_j(q[t,h] . k[j, h / group] * scale) @ v[j, h / group]
// over the keys j of P: the attention sinks 0..sinks and the `window` positions up to P
// (every position <= P while the window has not filled).
//   main:    q rotated by rope_kv.wgsl, every key read from the cache (prefill chunks).
//   decode:  one token (t = 0), RoPE and KV append fused in: each workgroup rotates its query
//            head from qkv; the workgroups whose keys hold P compute P's key and value from
//            qkv, use them as the cache will store them, and one per KV head writes them to
//            the cache (the others of the dispatch cannot read that slot back in time).
//   q, out:  [T, n_heads * hd]
//   qkv:     [T, (n_heads + 2 n_kv) * hd]  (decode: Q heads, then K heads, then V heads)
//   caches:  see kv_cache.wgsl (any storage format; written by rope_kv.wgsl and `decode`)
//   scores:  [T, n_heads, score_stride] scratch
// A workgroup's scores stay in workgroup memory up to SCORES_SH keys; past that they go
// through the scratch buffer, so that any context length fits. With SPLIT > 1 (decode on GPUs) the keys are split over SPLIT workgroups
// per head (grid z) that write unnormalised partials (max, sum, acc[hd]); the `combine`
// entry point merges them, so that long contexts use more than n_heads workgroups.

override WG: u32 = 64;     // power of two
override SPLIT: u32 = 1;   // workgroups per (head, token) over the keys
// Threads per key in the score phase (a power of two dividing hd / 4): each loads its part
// of the key and the parts are added through workgroup memory. One thread per key issues
// hd / 32 batches of 8 loads one after another; GPUs with short splits have the threads to
// spare (decode: `LoadOptions::attention_key_lanes`).
override KEY_LANES: u32 = 1u;

@group(0) @binding(0) var<uniform> p: KvParams;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
// [rows, n_heads, SPLIT, 4 + hd]: (max, sum, 0, 0) then the unnormalised sums, vec4-aligned
// so that the o projection can merge them as it loads its input (matvec COMBINE_SPLIT).
@group(0) @binding(6) var<storage, read_write> partial: array<f32>;
@group(0) @binding(7) var<storage, read> state: array<u32>;
@group(0) @binding(8) var<storage, read> qkv: array<f32>;
@group(0) @binding(9) var<storage, read> rope: array<vec2<f32>>;

var<workgroup> red: array<f32, WG>;
var<workgroup> q_sh: array<vec4<f32>, 64>;     // this head's query, hd <= 256
var<workgroup> parts: array<vec4<f32>, WG>;    // partial sums of the V phase
var<workgroup> k_new: array<vec4<f32>, 64>;    // decode: P's key and value as stored (int8:
var<workgroup> v_new: array<vec4<f32>, 64>;    // codes, the scale apart)
// The scores of a split with at most SCORES_SH keys stay in workgroup memory (decode splits
// of contexts up to SPLIT * SCORES_SH): no global round trip and no storage barrier.
const SCORES_SH: u32 = 1024u;
var<workgroup> sc_sh: array<f32, SCORES_SH>;
// The head's output (hd <= 256), for attention_q8.wgsl to pack.
var<workgroup> o_sh: array<vec4<f32>, 64>;

// `decode_merge` (SPLIT > 1): splits finished per (row, head), [lanes, n_heads], zero between
// dispatches. The workgroup that finishes a head's last split merges its partials itself, so
// no combine dispatch follows.
@group(0) @binding(11) var<storage, read_write> split_done: array<atomic<u32>>;
var<workgroup> merges: u32;

const NO_KEY: u32 = 0xffffffffu;

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

// The keys of position `pos`: n_sink sinks (positions 0..n_sink), then positions first..=pos.
struct Keys {
    n_sink: u32,
    first: u32,
    n: u32,
}

fn keys_of(pos: u32) -> Keys {
    let n_sink = min(p.sinks, pos + 1u);
    let first = max(p.sinks, pos + 1u - min(pos + 1u, p.window));
    return Keys(n_sink, first, n_sink + select(0u, pos + 1u - first, pos + 1u > first));
}

// Position of key j: the sinks first, then the window (so P itself is the last key).
fn key_pos(j: u32, kk: Keys) -> u32 {
    return select(kk.first + (j - kk.n_sink), j, j < kk.n_sink);
}

// Keys j0..j1 of split z.
fn split_range(n: u32, z: u32) -> vec2<u32> {
    let per_split = (n + SPLIT - 1u) / SPLIT;
    let j0 = min(z * per_split, n);
    return vec2<u32>(j0, min(j0 + per_split, n));
}

// The softmax weight of key j (scores in workgroup memory or, past SCORES_SH, the scratch).
fn weight_of(j: u32, j0: u32, sb: u32, in_sh: bool) -> f32 {
    if (in_sh) {
        return sc_sh[j - j0];
    }
    return scores[sb + j];
}

// q . k over vec4 d0..d1 for the key in slot `ks` (head elements from `e0`; the query in
// q_sh): 8 vec4 loads issued before any is used (named values, not an array, which could
// land in local memory), the additions in the same order as one vec4 at a time.
fn key_dot(ks: KvSlot, e0: u32, d0: u32, d1: u32) -> f32 {
    var s = 0.0;
    var d = d0;
    for (; d + 8u <= d1; d += 8u) {
        let k0 = kv_load4(false, ks, e0 + 4u * d);
        let k1 = kv_load4(false, ks, e0 + 4u * d + 4u);
        let k2 = kv_load4(false, ks, e0 + 4u * d + 8u);
        let k3 = kv_load4(false, ks, e0 + 4u * d + 12u);
        let k4 = kv_load4(false, ks, e0 + 4u * d + 16u);
        let k5 = kv_load4(false, ks, e0 + 4u * d + 20u);
        let k6 = kv_load4(false, ks, e0 + 4u * d + 24u);
        let k7 = kv_load4(false, ks, e0 + 4u * d + 28u);
        s += dot(q_sh[d], k0);
        s += dot(q_sh[d + 1u], k1);
        s += dot(q_sh[d + 2u], k2);
        s += dot(q_sh[d + 3u], k3);
        s += dot(q_sh[d + 4u], k4);
        s += dot(q_sh[d + 5u], k5);
        s += dot(q_sh[d + 6u], k6);
        s += dot(q_sh[d + 7u], k7);
    }
    for (; d < d1; d++) {
        s += dot(q_sh[d], kv_load4(false, ks, e0 + 4u * d));
    }
    return s;
}

// The query in q_sh (and k_new / v_new) loaded and a barrier passed: attention of head h,
// activation row `row`, over split z of the keys `kk` (`latest`: the newest position
// written). Key `jn` (NO_KEY: none) is k_new / v_new with int8 scales k_sc / v_sc instead
// of a cache row. Threads split the keys for the scores; for the weighted sum of V each
// thread owns 4 dimensions of one of WG / (hd / 4) key subsets, added at the end. Every
// thread calls it (barriers); nothing is computed unless `live`.
fn attend(tid: u32, h: u32, z: u32, row: u32, live: bool, latest: u32, kk: Keys, jn: u32, k_sc: f32, v_sc: f32) {
    let r = split_range(kk.n, z);
    let j0 = r.x;
    let j1 = r.y;
    let kvh = h / (p.n_heads / p.n_kv);
    let hd4 = p.hd / 4u;
    let sb = (row * p.n_heads + h) * p.score_stride;

    let in_sh = j1 - j0 <= SCORES_SH;
    var m = -3.0e38;
    // Keys per pass and this thread's key (of the pass) and part of it.
    let per = WG / KEY_LANES;
    let kl = tid % KEY_LANES;
    let span = hd4 / KEY_LANES;
    let d0 = kl * span;
    for (var jb = j0; jb < j1; jb += per) {
        let j = jb + tid / KEY_LANES;
        let act = live && j < j1;
        var s = 0.0;
        var sc = k_sc;
        if (act) {
            if (j == jn) {
                for (var d = d0; d < d0 + span; d++) {
                    s += dot(q_sh[d], k_new[d]);
                }
            } else {
                let ks = kv_slot(key_pos(j, kk), latest);
                s = key_dot(ks, kvh * p.hd, d0, d0 + span);
                sc = kv_scale(false, ks, kvh);
            }
        }
        if (KEY_LANES > 1u) {
            red[tid] = s;
            workgroupBarrier();
            if (kl == 0u) {
                for (var i = 1u; i < KEY_LANES; i++) {
                    s += red[tid + i];
                }
            }
            // The next pass overwrites red.
            workgroupBarrier();
        }
        if (act && kl == 0u) {
            s *= p.scale * sc;
            if (in_sh) {
                sc_sh[j - j0] = s;
            } else {
                scores[sb + j] = s;
            }
            m = max(m, s);
        }
    }
    let mx = reduce_max(tid, m);
    var l = 0.0;
    if (live) {
        for (var j = j0 + tid; j < j1; j += WG) {
            if (in_sh) {
                let e = exp(sc_sh[j - j0] - mx);
                sc_sh[j - j0] = e;
                l += e;
            } else {
                let e = exp(scores[sb + j] - mx);
                scores[sb + j] = e;
                l += e;
            }
        }
    }
    let total = reduce_sum(tid, l);
    if (!in_sh) {
        storageBarrier();
    }
    workgroupBarrier();

    // Two keys per iteration, their loads issued before either is used (no branch between:
    // key `jn` takes v_new through a select, its cache row loaded and dropped).
    let n_parts = max(WG / hd4, 1u);
    let d4 = tid % hd4;
    let part = tid / hd4;
    var acc = vec4<f32>(0.0);
    if (live && part < n_parts) {
        var j = j0 + part;
        // Four keys per iteration while they last: a thread's loads are its latency chain.
        for (; j + 3u * n_parts < j1; j += 4u * n_parts) {
            let jb = j + n_parts;
            let jc = jb + n_parts;
            let jd = jc + n_parts;
            let va = kv_slot(key_pos(j, kk), latest);
            let vb = kv_slot(key_pos(jb, kk), latest);
            let vc = kv_slot(key_pos(jc, kk), latest);
            let vd = kv_slot(key_pos(jd, kk), latest);
            let xa = kv_load4(true, va, kvh * p.hd + 4u * d4);
            let xb = kv_load4(true, vb, kvh * p.hd + 4u * d4);
            let xc = kv_load4(true, vc, kvh * p.hd + 4u * d4);
            let xd = kv_load4(true, vd, kvh * p.hd + 4u * d4);
            let sa = kv_scale(true, va, kvh);
            let sb2 = kv_scale(true, vb, kvh);
            let sc2 = kv_scale(true, vc, kvh);
            let sd = kv_scale(true, vd, kvh);
            let wa = weight_of(j, j0, sb, in_sh);
            let wb = weight_of(jb, j0, sb, in_sh);
            let wc = weight_of(jc, j0, sb, in_sh);
            let wd = weight_of(jd, j0, sb, in_sh);
            acc += wa * select(sa * xa, v_sc * v_new[d4], j == jn) + wb * select(sb2 * xb, v_sc * v_new[d4], jb == jn);
            acc += wc * select(sc2 * xc, v_sc * v_new[d4], jc == jn) + wd * select(sd * xd, v_sc * v_new[d4], jd == jn);
        }
        for (; j + n_parts < j1; j += 2u * n_parts) {
            let jb = j + n_parts;
            let va = kv_slot(key_pos(j, kk), latest);
            let vb = kv_slot(key_pos(jb, kk), latest);
            let xa = kv_load4(true, va, kvh * p.hd + 4u * d4);
            let xb = kv_load4(true, vb, kvh * p.hd + 4u * d4);
            let sa = kv_scale(true, va, kvh);
            let sb2 = kv_scale(true, vb, kvh);
            let wa = weight_of(j, j0, sb, in_sh);
            let wb = weight_of(jb, j0, sb, in_sh);
            acc += wa * select(sa * xa, v_sc * v_new[d4], j == jn) + wb * select(sb2 * xb, v_sc * v_new[d4], jb == jn);
        }
        if (j < j1) {
            let va = kv_slot(key_pos(j, kk), latest);
            let xa = kv_scale(true, va, kvh) * kv_load4(true, va, kvh * p.hd + 4u * d4);
            let wa = weight_of(j, j0, sb, in_sh);
            acc += wa * select(xa, v_sc * v_new[d4], j == jn);
        }
    }
    parts[tid] = acc;
    workgroupBarrier();
    if (live && part == 0u) {
        // hd4 > WG would leave dimensions without a thread: the host keeps hd <= 4 * WG.
        var sum = vec4<f32>(0.0);
        for (var i = 0u; i < n_parts; i++) {
            sum += parts[i * hd4 + d4];
        }
        put_head(row, h, z, d4, mx, total, sum);
    }
}

// Dimensions 4 d4..4 d4 + 3 of head h's result over split z: with SPLIT > 1 the split's
// partial (its maximum `mx` and sum `total` written by d4 0, then the unnormalised `sum`),
// else the output `sum / total`, also kept in o_sh for attention_q8.wgsl's packing.
fn put_head(row: u32, h: u32, z: u32, d4: u32, mx: f32, total: f32, sum: vec4<f32>) {
    if (SPLIT > 1u) {
        let pb = ((row * p.n_heads + h) * SPLIT + z) * (p.hd + 4u);
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
        let o = (row * p.n_heads + h) * p.hd + d4 * 4u;
        let v = sum * (1.0 / total);
        out[o] = v.x;
        out[o + 1u] = v.y;
        out[o + 2u] = v.z;
        out[o + 3u] = v.w;
        o_sh[d4] = v;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let h = wid.x;
    let t = wid.y;
    let n_tok = state[1];
    let pos = state[0] + t;
    let latest = state[0] + max(n_tok, 1u) - 1u;
    let row = state[2] + t;
    let qb = (row * p.n_heads + h) * p.hd;
    for (var d = tid; d < p.hd / 4u; d += WG) {
        let o = qb + d * 4u;
        q_sh[d] = vec4<f32>(q[o], q[o + 1u], q[o + 2u], q[o + 3u]);
    }
    workgroupBarrier();
    attend(tid, h, wid.z, row, t < n_tok, latest, keys_of(pos), NO_KEY, 1.0, 1.0);
}

// A decode step's token (grid [n_heads, 1, SPLIT], state.n_tokens = 1): RoPE on its query
// and key, its K/V append and its attention in one dispatch. `decode_step` is `decode_head`
// below, or attention_sg.wgsl's where the module appends that file.
@compute @workgroup_size(WG)
fn decode(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    decode_step(wid, lid.x);
}

// The head of workgroup `wid` in a decode step (state: pos, n_tokens, row): query head h
// of KV head kvh (`group` query heads per KV head), its activation row's QKV from qkv[src].
struct StepHead {
    h: u32,
    kvh: u32,
    group: u32,
    pos: u32,
    row: u32,
    src: u32,
    live: bool,
}

fn step_head(wid: vec3<u32>) -> StepHead {
    let group = p.n_heads / p.n_kv;
    let row = state[2];
    let src = row * (p.n_heads + 2u * p.n_kv) * p.hd;
    return StepHead(wid.x, wid.x / group, group, state[0], row, src, state[1] > 0u);
}

fn decode_head(wid: vec3<u32>, tid: u32) {
    let sh = step_head(wid);
    let h = sh.h;
    let live = sh.live;
    let pos = sh.pos;
    let row = sh.row;
    let group = sh.group;
    let kvh = sh.kvh;
    let src = sh.src;
    for (var d = tid; d < p.hd / 4u; d += WG) {
        q_sh[d] = head_value4(src + h * p.hd, 4u * d, pos, true);
    }
    // P is the last key: the split holding it makes P's key and value itself.
    let kk = keys_of(pos);
    let r = split_range(kk.n, wid.z);
    let holds = live && r.x < r.y && r.y == kk.n;
    let slot = kv_write_slot(pos);
    let e = 4u * tid;
    let mine = holds && e < p.hd;
    var kx = vec4<f32>(0.0);
    var vx = vec4<f32>(0.0);
    if (mine) {
        kx = head_value4(src + (p.n_heads + kvh) * p.hd, e, pos, true);
        vx = head_value4(src + (p.n_heads + p.n_kv + kvh) * p.hd, e, pos, false);
    }
    let k_amax = head_amax(tid, mine, slot.fmt, kx);
    let v_amax = head_amax(tid, mine, slot.fmt, vx);
    if (mine) {
        k_new[tid] = stored4(slot.fmt, kx, k_amax);
        v_new[tid] = stored4(slot.fmt, vx, v_amax);
        // One writer per KV head: the split of its group's first query head.
        if (h % group == 0u) {
            store4(false, slot, kvh, e, kx, k_amax);
            store4(true, slot, kvh, e, vx, v_amax);
        }
    }
    workgroupBarrier();
    let int8 = slot.fmt == 2u;
    let jn = select(NO_KEY, kk.n - 1u, holds);
    attend(tid, h, wid.z, row, live, pos, kk, jn, select(1.0, k_amax, int8), select(1.0, v_amax, int8));
}

// After a split of head h wrote its partial: whether this workgroup was the head's last
// split (its counter is reset then). At SPLIT 1 there are no partials (the workgroup wrote
// the output): false, counter untouched.
fn last_split(tid: u32, h: u32, row: u32) -> bool {
    if (SPLIT == 1u) {
        return false;
    }
    return last_arrival(tid, row * p.n_heads + h, SPLIT);
}

// Whether this workgroup is the last of `n` to arrive at counter `c` of `split_done` (then
// reset), after which it sees what the others wrote before arriving. Written for naga's
// SPIR-V, where storageBarrier() is a control barrier with Device memory scope and
// AcquireRelease on storage memory: the barrier before the count publishes this workgroup's
// writes, the one after it lets the last workgroup see the others' (the last-block pattern;
// no workgroup waits on another, so nothing depends on which workgroups are resident).
// Native GPUs only: Tint gives the barrier Workgroup scope.
fn last_arrival(tid: u32, c: u32, n: u32) -> bool {
    storageBarrier();
    if (tid == 0u) {
        let last = atomicAdd(&split_done[c], 1u) == n - 1u;
        if (last) {
            atomicStore(&split_done[c], 0u);
        }
        merges = select(0u, 1u, last);
    }
    let last = workgroupUniformLoad(&merges) == 1u;
    storageBarrier();
    return last;
}

// `decode` whose last split of each head merges the partials (no combine dispatch).
@compute @workgroup_size(WG)
fn decode_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    decode_step(wid, lid.x);
    if (last_split(lid.x, wid.x, state[2])) {
        combine_head(vec3<u32>(wid.x, 0u, 0u), lid.x);
    }
}

// Merge the SPLIT partials of one (head, token): one workgroup, a thread per dimension. No
// load waits behind a branch or on the maximum, so a thread's loads are all in flight at
// once (an empty split adds zeros: the same sums; H100 1.1B int4: 7.9 -> 7.1 µs per layer in
// the stream, decode GPU time per step 1375 -> 1353 µs).
@compute @workgroup_size(WG)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    combine_head(wid, lid.x);
}

fn combine_head(wid: vec3<u32>, tid: u32) {
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
        let pz = base + z * stride;
        mx = max(mx, select(-3.0e38, partial[pz], partial[pz + 1u] > 0.0));
    }
    for (var d = tid; d < p.hd; d += WG) {
        var l = 0.0;
        var acc = 0.0;
        for (var z = 0u; z < SPLIT; z++) {
            let pz = base + z * stride;
            let lz = partial[pz + 1u];
            let w = select(0.0, exp(partial[pz] - mx), lz > 0.0);
            l += lz * w;
            acc += partial[pz + 4u + d] * w;
        }
        out[row * p.n_heads * p.hd + h * p.hd + d] = acc / l;
        o_sh[d / 4u][d % 4u] = acc / l;
    }
}
