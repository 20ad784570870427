// Probe kernels for examples/matvec_bench (appended to shaders/matvec.wgsl with a `+`
// in the variant's 7th field): they read what the int4 matvec reads and do less with it,
// so that the difference shows what the arithmetic costs. Outputs are not a product (the
// bench's "max rel diff" is meaningless for them). README "Session 5" has the figures:
//   COPIES=16 REPS=200 cargo run --release --example matvec_bench -- int4 4096x4096 \
//     wide:128:128:4 stream:256:256:2:plain::+examples/matvec_probes.wgsl \
//     probe0:64:64:4:plain::+examples/matvec_probes.wgsl ...

// Every binding of the matvec statically used, so that the automatic layout matches the
// bench's bind group.
fn touch_all() {
    if (p.n == 0xffffffffu) {
        y[0] = x[0].x + aux[0].x + bias[0] + f32(state[0]) + f32(s[0]) + f32(w[0].x);
    }
}

// Pure streaming read of the weight words (vec4 per load), grid-stride: the ceiling.
@compute @workgroup_size(WG)
fn stream(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    touch_all();
    let total = p.n * p.k / 32u;
    var acc = vec4<u32>(0u);
    for (var i = gid.x; i < total; i += nw.x * WG) {
        acc ^= w[i];
    }
    if (all(acc == vec4<u32>(12345u))) {
        y[gid.x] = 1.0;
    }
}

// The same, each thread 4 vec4 loads per step (issued before use).
@compute @workgroup_size(WG)
fn stream4(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    touch_all();
    let total = p.n * p.k / 32u;
    let st = nw.x * WG;
    var acc = vec4<u32>(0u);
    var i = gid.x;
    for (; i + 3u * st < total; i += 4u * st) {
        let a = w[i];
        let b = w[i + st];
        let c = w[i + 2u * st];
        let d = w[i + 3u * st];
        acc ^= a ^ b ^ c ^ d;
    }
    for (; i < total; i += st) {
        acc ^= w[i];
    }
    if (all(acc == vec4<u32>(12345u))) {
        y[gid.x] = 1.0;
    }
}

// Probes: lanes over whole 32-weight groups (one 16-byte load per row), ROWS rows, with
// parts of a matvec's work.
// `mode` bits: 1 scales, 2 the inputs (8 vec4 per group), 4 the reduction (`finish`).

fn probe_body(wid: vec3<u32>, lid: vec3<u32>, mode: u32) {
    touch_all();
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    let r = clamped_rows(row0);
    let gn = p.k / 32u;
    var acc = vec4<u32>(0u);
    var sacc = 0u;
    var xf = vec4<f32>(0.0);
    for (var g = lane; g < gn; g += TPR) {
        acc ^= w[r.x * gn + g] ^ w[r.y * gn + g] ^ w[r.z * gn + g] ^ w[r.w * gn + g];
        if ((mode & 1u) != 0u) {
            sacc ^= s[r.x * gn + g] ^ s[r.y * gn + g] ^ s[r.z * gn + g] ^ s[r.w * gn + g];
        }
        if ((mode & 2u) != 0u) {
            let b = g * 8u;
            xf += x[b] + x[b + 1u] + x[b + 2u] + x[b + 3u] + x[b + 4u] + x[b + 5u] + x[b + 6u] + x[b + 7u];
        }
    }
    let v = vec4<f32>(acc ^ vec4<u32>(sacc)) * 1e-30 + xf;
    if ((mode & 4u) != 0u) {
        finish(tid, lane, row0, v, 0.0, true);
    } else if (all(v == vec4<f32>(12345.0))) {
        y[row0] = 1.0;
    }
}

@compute @workgroup_size(WG)
fn probe0(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) { probe_body(wid, lid, 0u); }
@compute @workgroup_size(WG)
fn probe1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) { probe_body(wid, lid, 1u); }
@compute @workgroup_size(WG)
fn probe3(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) { probe_body(wid, lid, 3u); }
@compute @workgroup_size(WG)
fn probe7(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) { probe_body(wid, lid, 7u); }
@compute @workgroup_size(WG)
fn probe4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) { probe_body(wid, lid, 4u); }

// `wide`'s access pattern (lanes over words), weights only.
@compute @workgroup_size(WG)
fn wprobe(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    touch_all();
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    let r = clamped_rows(row0);
    let k8n = p.k / 8u;
    var acc = 0u;
    for (var k8 = lane; k8 < k8n; k8 += TPR) {
        let f = r * k8n + vec4<u32>(k8);
        acc ^= w[f.x >> 2u][f.x & 3u] ^ w[f.y >> 2u][f.y & 3u] ^ w[f.z >> 2u][f.z & 3u] ^ w[f.w >> 2u][f.w & 3u];
    }
    if (acc == 12345u) {
        y[row0] = 1.0;
    }
}

// int4 weights against int8-quantised inputs through dot4I8Packed (what a q8-activation
// path would run; the inputs here are stand-in bit patterns and the per-group input scale
// and sum come from `aux`, so only the cost is meaningful). `dp4w`: the `wide` layout (a
// lane per 8 weights); `dp4g`: a lane per 32-weight group. H100, GB/s from HBM
// (README "Session 6"): 22016x4096 `wide` 1,708 (with the norm 1,533) -> `dp4g:128:128`
// 2,356; 12288x4096 1,469 -> `dp4g:128:32` 1,939.

fn dp_row(row: u32, k8: u32, k8n: u32, xe: u32, xo: u32, bs: vec4<f32>) -> f32 {
    let f = row * k8n + k8;
    let dm = unpack2x16float(s[f >> 2u]);
    let wq = w[f >> 2u][f & 3u];
    let lo = wq & 0x0F0F0F0Fu;
    let hi = (wq >> 4u) & 0x0F0F0F0Fu;
    let isum = dot4I8Packed(lo, xe) + dot4I8Packed(hi, xo);
    return f32(isum) * (dm.x * bs.x) + dm.y * bs.y;
}

@compute @workgroup_size(WG)
fn dp4w(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    touch_all();
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    let r = clamped_rows(row0);
    let k8n = p.k / 8u;
    var acc = vec4<f32>(0.0);
    for (var k8 = lane; k8 < k8n; k8 += TPR) {
        let xw = bitcast<vec4<u32>>(x[k8 / 2u]);
        let odd = (k8 & 1u) == 1u;
        let xe = select(xw.x, xw.z, odd);
        let xo = select(xw.y, xw.w, odd);
        let bs = aux[k8 / 4u];
        acc.x += dp_row(r.x, k8, k8n, xe, xo, bs);
        acc.y += dp_row(r.y, k8, k8n, xe, xo, bs);
        acc.z += dp_row(r.z, k8, k8n, xe, xo, bs);
        acc.w += dp_row(r.w, k8, k8n, xe, xo, bs);
    }
    finish(tid, lane, row0, acc, 0.0, true);
}

fn dp_group(i: u32, x0: vec4<u32>, x1: vec4<u32>, bs: vec4<f32>) -> f32 {
    let q = w[i];
    let dm = unpack2x16float(s[i]);
    let lo = q & vec4<u32>(0x0F0F0F0Fu);
    let hi = (q >> vec4<u32>(4u)) & vec4<u32>(0x0F0F0F0Fu);
    let isum = dot4I8Packed(lo.x, x0.x) + dot4I8Packed(hi.x, x0.y) + dot4I8Packed(lo.y, x0.z)
        + dot4I8Packed(hi.y, x0.w) + dot4I8Packed(lo.z, x1.x) + dot4I8Packed(hi.z, x1.y)
        + dot4I8Packed(lo.w, x1.z) + dot4I8Packed(hi.w, x1.w);
    return f32(isum) * (dm.x * bs.x) + dm.y * bs.y;
}

@compute @workgroup_size(WG)
fn dp4g(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    touch_all();
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    let r = clamped_rows(row0);
    let gn = p.k / 32u;
    var acc = vec4<f32>(0.0);
    for (var g = lane; g < gn; g += TPR) {
        let x0 = bitcast<vec4<u32>>(x[2u * g]);
        let x1 = bitcast<vec4<u32>>(x[2u * g + 1u]);
        let bs = aux[g];
        acc.x += dp_group(r.x * gn + g, x0, x1, bs);
        acc.y += dp_group(r.y * gn + g, x0, x1, bs);
        acc.z += dp_group(r.z * gn + g, x0, x1, bs);
        acc.w += dp_group(r.w * gn + g, x0, x1, bs);
    }
    finish(tid, lane, row0, acc, 0.0, true);
}
