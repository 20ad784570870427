// Decode matvec entry point for adapters with subgroups, appended to matvec.wgsl (whose
// helpers, bindings and overrides it uses, after subgroup_sum.wgsl; compiled only where the
// device has subgroups).
//   y[t, n] (+)= sum_k in(t, k) * W[n, k] (+ bias[n]),  k a multiple of 8
// Each subgroup-aligned group of TPR lanes (TPR <= the adapter's smallest subgroup) owns ROWS
// rows and reduces them with shuffles: no workgroup barrier after the k loop. The input
// (RMSNorm weight applied, or SwiGLU-combined) is staged once per workgroup in workgroup
// memory, a tile of up to 2048 elements at a time, so its transform is not repeated for
// every row group. H100 (Vulkan), int4, GB/s against `wide` (64 threads on 4 rows, barrier
// reduction): 32768x4096 with norm 1365 vs 1214, 16384x11008 SwiGLU 1377 vs 1196.

const TILE4: u32 = 512u;   // vec4s of input per tile (8 KiB)
var<workgroup> x_tile: array<vec4<f32>, 512>;
var<workgroup> ss_groups: array<f32, 64>;

@compute @workgroup_size(WG)
fn subgroup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    let xbase = input_row(wid) * p.x_stride;
    let k4n = p.k / 4u;
    let k8n = p.k / 8u;
    let r = clamped_rows(row0);
    var acc = vec4<f32>(0.0);
    var ss = 0.0;
    for (var t0 = 0u; t0 < k4n; t0 += TILE4) {
        let tn = min(TILE4, k4n - t0);
        workgroupBarrier();
        for (var i = tid; i < tn; i += WG) {
            var v = xin4(xbase, (t0 + i) * 4u);
            if (FUSE_NORM) {
                ss += dot(v, v);
                v *= aux[t0 + i];
            }
            x_tile[i] = v;
        }
        workgroupBarrier();
        // 8 weights per lane per row, two k steps per iteration for more loads in flight.
        let k8_0 = t0 / 2u;
        let n8 = tn / 2u;
        var j = lane;
        for (; j + TPR < n8; j += 2u * TPR) {
            let j2 = j + TPR;
            acc += rows8(r.x, r.y, r.z, r.w, k8_0 + j, k8n, x_tile[2u * j], x_tile[2u * j + 1u])
                + rows8(r.x, r.y, r.z, r.w, k8_0 + j2, k8n, x_tile[2u * j2], x_tile[2u * j2 + 1u]);
        }
        if (j < n8) {
            acc += rows8(r.x, r.y, r.z, r.w, k8_0 + j, k8n, x_tile[2u * j], x_tile[2u * j + 1u]);
        }
    }
    acc = shuffle_sum4(acc, TPR);
    if (FUSE_NORM) {
        // Each thread staged a share of the input: x^2 summed over the whole workgroup.
        let s = shuffle_sum(ss, TPR);
        if (lane == 0u) {
            ss_groups[tid / TPR] = s;
        }
        workgroupBarrier();
        var total = 0.0;
        for (var i = 0u; i < WG / TPR; i++) {
            total += ss_groups[i];
        }
        acc *= inverseSqrt(total / f32(p.k) + p.eps);
    }
    if (lane == 0u) {
        store4(row0, 0u, acc);
    }
}
