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
// 517 -> 533 (1,990 -> 1,944), after 512 454 -> 483 (2,243 -> 2,081); attention's share of
// the 7B step in the stream 402 -> 360 µs. Heads of 64 (16 lanes, two key groups per
// subgroup) measured slower (1.1B after 512: 885 -> 919 µs at 256 threads, 888 at 512), so
// the host uses it for heads of 128 and up.

override HEAD_LANES: u32 = 32u;

fn lanes_sum(v: f32) -> f32 {
    var a = v;
    for (var o = HEAD_LANES / 2u; o > 0u; o >>= 1u) {
        a += subgroupShuffleXor(a, o);
    }
    return a;
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
    let h = wid.x;
    let live = state[1] > 0u;
    let pos = state[0];
    let row = state[2];
    let group = p.n_heads / p.n_kv;
    let kvh = h / group;
    let src = row * (p.n_heads + 2u * p.n_kv) * p.hd;
    let d4 = tid % HEAD_LANES;
    let g = tid / HEAD_LANES;
    let n_groups = WG / HEAD_LANES;
    let e = 4u * d4;
    let qv = head_value4(src + h * p.hd, e, pos, true);

    // P is the last key: the split holding it makes P's key and value itself, every key
    // group its lanes' part (the same loads), key group 0 of one split per KV head writing
    // them to the cache.
    let kk = keys_of(pos);
    let r = split_range(kk.n, wid.z);
    let j0 = r.x;
    let j1 = select(r.x, r.y, live);
    let holds = j0 < j1 && j1 == kk.n;
    let jn = select(NO_KEY, kk.n - 1u, holds);
    let slot = kv_write_slot(pos);
    let int8 = slot.fmt == 2u;
    var kn = head_value4(src + (p.n_heads + kvh) * p.hd, e, pos, true);
    var vn = head_value4(src + (p.n_heads + p.n_kv + kvh) * p.hd, e, pos, false);
    var k_amax = 0.0;
    var v_amax = 0.0;
    if (int8) {
        k_amax = lanes_max(max4(abs(kn)));
        v_amax = lanes_max(max4(abs(vn)));
    }
    if (holds && g == 0u && h % group == 0u) {
        store4(false, slot, kvh, e, kn, k_amax);
        store4(true, slot, kvh, e, vn, v_amax);
    }
    kn = stored4(slot.fmt, kn, k_amax) * select(1.0, k_amax, int8);
    vn = stored4(slot.fmt, vn, v_amax) * select(1.0, v_amax, int8);

    let hb = kvh * p.hd + e;
    var m = -3.0e38;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    // Chunks of 4 keys per key group: group g takes keys c + g + i * n_groups, i < 4. Named
    // values, not arrays, which could land in local memory.
    let step = 4u * n_groups;
    for (var c = j0 + g; c < j1 + g; c += step) {
        let a = key_part(c, j1, jn, kk, pos, hb, kvh, qv, kn, vn);
        let b = key_part(c + n_groups, j1, jn, kk, pos, hb, kvh, qv, kn, vn);
        let cc = key_part(c + 2u * n_groups, j1, jn, kk, pos, hb, kvh, qv, kn, vn);
        let d = key_part(c + 3u * n_groups, j1, jn, kk, pos, hb, kvh, qv, kn, vn);
        let sa = lanes_sum(a.s) * p.scale;
        let sb = lanes_sum(b.s) * p.scale;
        let sc = lanes_sum(cc.s) * p.scale;
        let sd = lanes_sum(d.s) * p.scale;
        let ok = vec4<bool>(c < j1, c + n_groups < j1, c + 2u * n_groups < j1, c + 3u * n_groups < j1);
        let sv = select(vec4<f32>(-3.0e38), vec4<f32>(sa, sb, sc, sd), ok);
        let cm = max(m, max4(sv));
        let f = exp(m - cm);
        let w = select(vec4<f32>(0.0), exp(sv - cm), ok);
        l = l * f + (w.x + w.y + w.z + w.w);
        acc = acc * f + w.x * a.v + w.y * b.v + w.z * cc.v + w.w * d.v;
        m = cm;
    }

    // The key groups merged: group g's maximum and sum in red[g], red[n_groups + g].
    if (d4 == 0u) {
        red[g] = m;
        red[n_groups + g] = l;
    }
    parts[tid] = acc;
    workgroupBarrier();
    if (live && g == 0u) {
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
        if (SPLIT > 1u) {
            let pb = ((row * p.n_heads + h) * SPLIT + wid.z) * (p.hd + 4u);
            if (d4 == 0u) {
                partial[pb] = mx;
                partial[pb + 1u] = total;
            }
            let o = pb + 4u + e;
            partial[o] = sum.x;
            partial[o + 1u] = sum.y;
            partial[o + 2u] = sum.z;
            partial[o + 3u] = sum.w;
        } else {
            let o = (row * p.n_heads + h) * p.hd + e;
            let x = sum * (1.0 / total);
            out[o] = x.x;
            out[o + 1u] = x.y;
            out[o + 2u] = x.z;
            out[o + 3u] = x.w;
            o_sh[d4] = x;
        }
    }
}

// A key group lane's part of key j (clamped to the split's last key j1 - 1, so that masked
// keys load a real row): its 4 dimensions' share of q . k, and its 4 dimensions of V, both
// with their int8 scales; key `jn` is P's, from kn / vn.
struct KeyPart {
    s: f32,
    v: vec4<f32>,
}

fn key_part(j_in: u32, j1: u32, jn: u32, kk: Keys, pos: u32, hb: u32, kvh: u32, qv: vec4<f32>, kn: vec4<f32>, vn: vec4<f32>) -> KeyPart {
    let j = min(j_in, j1 - 1u);
    let ks = kv_slot(key_pos(j, kk), pos);
    let kx = kv_load4(false, ks, hb) * kv_scale(false, ks, kvh);
    let vx = kv_load4(true, ks, hb) * kv_scale(true, ks, kvh);
    return KeyPart(dot(qv, select(kx, kn, j == jn)), select(vx, vn, j == jn));
}
