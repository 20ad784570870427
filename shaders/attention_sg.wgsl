// A decode step's attention through subgroup shuffles (appended to attention.wgsl, on devices
// whose smallest subgroup holds a head's HEAD_LANES = hd / 4 lanes; the `decode*` entry points
// call `decode_step`, which is this file's or attention.wgsl's `decode_head`).
//
// The workgroup's threads form WG / HEAD_LANES key groups of HEAD_LANES lanes, each lane 4
// dimensions of the head. A key group takes 4 keys of the split at a time, its lanes
// loading their part of each key and value before any is used, and adds the partial dot
// products by a butterfly of shuffles (no barrier); it keeps a running maximum, sum and
// weighted sum of V (online softmax). One barrier then merges the key groups. Every load a
// thread needs (query, RoPE table, P's key and value, the cache rows) depends only on the
// step's position, so they are all in flight together instead of one phase after another as
// in `attend`, whose score, softmax and V phases each wait on workgroup reductions.
// Key groups must lie in one subgroup in order (HEAD_LANES <= the smallest subgroup, as the
// host checks), and every shuffle runs in control flow uniform over the subgroup: keys past
// the split are masked, not skipped.
// H200 int4, `attend` -> this kernel (512 threads), decode tok/s (GPU µs per step): 7B
// 518.6 -> 540.5 / 540.8 (1,992 -> 1,929 / 1,924); after 512 (first version, another call)
// 454.4 -> 483.3 (2,243 -> 2,081), this version 483.6 (2,079);
// attention's share of the 7B step in the stream 402 -> 360 µs (first version). Measured
// and not kept (7B, same call): 8 keys per key group at a time 1,976 (after 512 2,098), also
// with one split up to 255 keys 1,979; 256 threads with 8 keys and 64 keys per split 2,002;
// 1,024 threads with one split up to 255 keys 1,967; 256 threads 1,979 (first version).
// Heads of 64 (16 lanes, two key groups per subgroup) measured slower (1.1B after 512: 885
// -> 919 µs at 256 threads, 888 at 512), so the host uses it for heads of 128 and up.

override HEAD_LANES: u32 = 32u;

fn lanes_sum4(v: vec4<f32>) -> vec4<f32> {
    return shuffle_sum4(v, HEAD_LANES);
}

fn lanes_max(v: f32) -> f32 {
    var a = v;
    for (var o = HEAD_LANES / 2u; o > 0u; o >>= 1u) {
        a = max(a, subgroupShuffleXor(a, o));
    }
    return a;
}

fn max4(x: vec4<f32>) -> f32 {
    return max(max(x.x, x.y), max(x.z, x.w));
}

fn decode_step(wid: vec3<u32>, tid: u32) {
    let sh = step_head(wid);
    let pos = sh.pos;
    let kvh = sh.kvh;
    let d4 = tid % HEAD_LANES;
    let g = tid / HEAD_LANES;
    let n_groups = WG / HEAD_LANES;
    let e = 4u * d4;
    let qv = head_value4(sh.src + sh.h * p.hd, e, pos, true);

    // P is the last key: the split holding it makes P's key and value itself, every key
    // group its lanes' part (the same loads), key group 0 of one split per KV head writing
    // them to the cache.
    let kk = keys_of(pos);
    let r = split_range(kk.n, wid.z);
    let j0 = r.x;
    let j1 = select(r.x, r.y, sh.live);
    let holds = j0 < j1 && j1 == kk.n;
    let jn = select(NO_KEY, kk.n - 1u, holds);
    let slot = kv_write_slot(pos);
    let int8 = slot.fmt == 2u;
    var kn = head_value4(sh.src + (p.n_heads + kvh) * p.hd, e, pos, true);
    var vn = head_value4(sh.src + (p.n_heads + p.n_kv + kvh) * p.hd, e, pos, false);
    var k_amax = 0.0;
    var v_amax = 0.0;
    if (int8) {
        k_amax = lanes_max(max4(abs(kn)));
        v_amax = lanes_max(max4(abs(vn)));
    }
    if (holds && g == 0u && sh.h % sh.group == 0u) {
        store4(false, slot, kvh, e, kn, k_amax);
        store4(true, slot, kvh, e, vn, v_amax);
    }
    kn = stored4(slot.fmt, kn, k_amax) * select(1.0, k_amax, int8);
    vn = stored4(slot.fmt, vn, v_amax) * select(1.0, v_amax, int8);

    let hb = kvh * p.hd + e;
    var m = -3.0e38;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    // Four keys per key group at a time: group g takes keys c + g + i * n_groups, i < 4, the
    // four keys' loads issued before any is used (8 at a time, or 4 with another split
    // policy or workgroup size, measured no faster: see the figures above).
    // The loop runs on uniform values (WGSL's uniformity analysis sees `g` as varying).
    let step = 4u * n_groups;
    for (var c0 = j0; c0 < j1; c0 += step) {
        let c = c0 + g;
        let q = quad(c, n_groups, j1, jn, kk, pos, hb, kvh, qv, kn, vn);
        let s = quad_scores(q, c, n_groups, j1);
        let cm = max(m, max4(s));
        let f = exp(m - cm);
        let w = select(vec4<f32>(0.0), exp(s - cm), s > vec4<f32>(-1.0e38));
        l = l * f + (w.x + w.y + w.z + w.w);
        acc = acc * f + w.x * q.v0 + w.y * q.v1 + w.z * q.v2 + w.w * q.v3;
        m = cm;
    }

    // The key groups merged: group g's maximum and sum in red[g], red[n_groups + g].
    if (d4 == 0u) {
        red[g] = m;
        red[n_groups + g] = l;
    }
    parts[tid] = acc;
    workgroupBarrier();
    if (sh.live && g == 0u) {
        var mx = -3.0e38;
        for (var i = 0u; i < n_groups; i++) {
            mx = max(mx, red[i]);
        }
        var total = 0.0;
        var sum = vec4<f32>(0.0);
        for (var i = 0u; i < n_groups; i++) {
            let f = exp(red[i] - mx);
            total += red[n_groups + i] * f;
            sum += parts[i * HEAD_LANES + d4] * f;
        }
        put_head(sh.row, sh.h, wid.z, d4, mx, total, sum);
    }
}

// A key group lane's part of keys c + i * n_groups, i < 4 (each clamped to the split's last
// key j1 - 1, so that masked keys load a real row): its 4 dimensions' share of q . k in `s`,
// and its 4 dimensions of V, both with their int8 scales; key `jn` is P's, from kn / vn.
// Named values, not arrays, which could land in local memory.
struct Quad {
    s: vec4<f32>,
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
}

fn key_v(j: u32, jn: u32, ks: KvSlot, hb: u32, kvh: u32, vn: vec4<f32>) -> vec4<f32> {
    return select(kv_load4(true, ks, hb) * kv_scale(true, ks, kvh), vn, j == jn);
}

fn key_s(j: u32, jn: u32, ks: KvSlot, hb: u32, kvh: u32, qv: vec4<f32>, kn: vec4<f32>) -> f32 {
    return dot(qv, select(kv_load4(false, ks, hb) * kv_scale(false, ks, kvh), kn, j == jn));
}

fn quad(c: u32, n_groups: u32, j1: u32, jn: u32, kk: Keys, pos: u32, hb: u32, kvh: u32, qv: vec4<f32>, kn: vec4<f32>, vn: vec4<f32>) -> Quad {
    let j = min(vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u) * n_groups, vec4<u32>(j1 - 1u));
    let s0 = kv_slot(key_pos(j.x, kk), pos);
    let s1 = kv_slot(key_pos(j.y, kk), pos);
    let s2 = kv_slot(key_pos(j.z, kk), pos);
    let s3 = kv_slot(key_pos(j.w, kk), pos);
    let s = vec4<f32>(key_s(j.x, jn, s0, hb, kvh, qv, kn), key_s(j.y, jn, s1, hb, kvh, qv, kn), key_s(j.z, jn, s2, hb, kvh, qv, kn), key_s(j.w, jn, s3, hb, kvh, qv, kn));
    return Quad(s, key_v(j.x, jn, s0, hb, kvh, vn), key_v(j.y, jn, s1, hb, kvh, vn), key_v(j.z, jn, s2, hb, kvh, vn), key_v(j.w, jn, s3, hb, kvh, vn));
}

// A quad's scores: the lanes' parts added, scaled; keys past the split -3e38.
fn quad_scores(q: Quad, c: u32, n_groups: u32, j1: u32) -> vec4<f32> {
    let s = lanes_sum4(q.s) * p.scale;
    let ok = vec4<u32>(c) + vec4<u32>(0u, 1u, 2u, 3u) * n_groups < vec4<u32>(j1);
    return select(vec4<f32>(-3.0e38), s, ok);
}
