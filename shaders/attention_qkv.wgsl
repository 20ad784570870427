// A decode step's QKV projection and attention in one dispatch (appended to attention.wgsl,
// attention_sg.wgsl and attention_q8.wgsl; multi-head attention, int4 QKV weights, GPUs with
// subgroups of HEAD_LANES lanes): no dispatch boundary between them.
//
// Workgroup b computes QKV rows 64b.. (WG / HEAD_LANES row groups of 4 rows, HEAD_LANES lanes
// each) as the `q8in` matvec does: the RMS-normed input quantised to int8 per 32 in workgroup
// memory, the int4 codes met by `dot4I8Packed`, the lanes' sums by shuffles. The rows of a
// workgroup belong to one head (they divide hd); the workgroup that finishes a head's last
// rows (`last_arrival` on the head's counter in `split_done`) attends for that head over all
// its keys (SPLIT 1) and packs the output for the o projection.
//   w, s: the QKV matrix [(n_heads + 2 n_kv) hd, k] (int4 codes, scales as matvec's prelude)
//   x:    [k] the residual row; norm: [k] the attention norm's weights
//   qkv:  written here, read back by the attending workgroup

struct QkvParams {
    k: u32,
    rows: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(12) var<uniform> qp: QkvParams;
@group(0) @binding(13) var<storage, read> qw: array<vec4<u32>>;
@group(0) @binding(14) var<storage, read> qs: array<u32>;
@group(0) @binding(15) var<storage, read> qx: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read> qnorm: array<vec4<f32>>;

override QKV_SYM: bool = true;   // Q4_0's layout: one f16 scale per group, min = -8 scale
const QKV_GROUPS: u32 = 128u;    // k <= 4096

// Per input group: its code words (even, odd, even, odd, ...) and (d, sum, raw sum of squares).
var<workgroup> fx: array<vec4<u32>, 2u * QKV_GROUPS>;
var<workgroup> fg: array<vec4<f32>, QKV_GROUPS>;

fn qkv_dm(g: u32) -> vec2<f32> {
    if (QKV_SYM) {
        let d = unpack2x16float(qs[g >> 1u] >> ((g & 1u) * 16u)).x;
        return vec2<f32>(d, -8.0 * d);
    }
    return unpack2x16float(qs[g]);
}

// Rows row0..row0 + 3 of the projection into qkv (every thread: a barrier). A thread per
// input group quantises it (k / 32 <= WG, as the host checks).
fn qkv_rows(tid: u32, lane: u32, row0: u32) {
    let gn = qp.k / 32u;
    if (tid < gn) {
        var v: array<vec4<f32>, 8>;
        var ss = 0.0;
        for (var i = 0u; i < 8u; i++) {
            let a = qx[8u * tid + i];
            ss += dot(a, a);
            v[i] = a * qnorm[8u * tid + i];
        }
        let g = quant_group(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
        fx[2u * tid] = g.lo;
        fx[2u * tid + 1u] = g.hi;
        fg[tid] = vec4<f32>(g.d, g.sum, ss, 0.0);
    }
    workgroupBarrier();
    let r = min(vec4<u32>(row0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(qp.rows - 1u));
    var acc = vec4<f32>(0.0);
    var ss = 0.0;
    for (var g = lane; g < gn; g += HEAD_LANES) {
        let w0 = qw[r.x * gn + g];
        let w1 = qw[r.y * gn + g];
        let w2 = qw[r.z * gn + g];
        let w3 = qw[r.w * gn + g];
        let d0 = qkv_dm(r.x * gn + g);
        let d1 = qkv_dm(r.y * gn + g);
        let d2 = qkv_dm(r.z * gn + g);
        let d3 = qkv_dm(r.w * gn + g);
        let xa = fx[2u * g];
        let xb = fx[2u * g + 1u];
        let xs = fg[g];
        ss += xs.z;
        acc += vec4<f32>(q8_group(w0, d0, xa, xb, xs), q8_group(w1, d1, xa, xb, xs), q8_group(w2, d2, xa, xb, xs), q8_group(w3, d3, xa, xb, xs));
    }
    let sums = lanes_sum4(acc);
    let total_ss = lanes_sum4(vec4<f32>(ss, 0.0, 0.0, 0.0)).x;
    if (lane == 0u) {
        let y = sums * inverseSqrt(total_ss / f32(qp.k) + qp.eps);
        let row = state[2] * qp.rows;
        for (var i = 0u; i < 4u; i++) {
            if (row0 + i < qp.rows) {
                qkv[row + row0 + i] = y[i];
            }
        }
    }
}

@compute @workgroup_size(WG)
fn decode_qkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let lane = tid % HEAD_LANES;
    let rows_per_wg = (WG / HEAD_LANES) * 4u;
    let first = wid.x * rows_per_wg;
    qkv_rows(tid, lane, first + (tid / HEAD_LANES) * 4u);
    // The head of these rows (q, k and v rows of head h alike: n_kv = n_heads), and whether
    // this workgroup finished the last of its 3 hd / rows_per_wg workgroups.
    let h = (first % (p.n_heads * p.hd)) / p.hd;
    if (last_arrival(tid, state[2] * p.n_heads + h, 3u * p.hd / rows_per_wg)) {
        decode_step(vec3<u32>(h, 0u, 0u), tid);
        pack_head(tid, h, state[2]);
    }
}
