// Decode matvec of int4 weights against int8-quantised inputs (appended to matvec.wgsl after
// the int4 prelude and q8_group.wgsl; entry point `q8in`): the codes of 8 weights meet 8
// input bytes in two `dot4I8Packed`, an integer dot product the GPU does in one instruction
// where it has one (Vulkan 1.3 / SPIR-V `OpSDot`). The int4 matvec is bound by instructions per weight
// (README, session 5); this path takes about a third of them.
//
// The workgroup first quantises its input row (SwiGLU-combined, merged from attention
// partials, and norm-weighted as `xin4` and `wide` give it) per group of 32 elements:
// scale d = max|x| / 127, codes round(x / d) in -127..=127, packed so that byte j of the
// even word holds element 8w + 2j and of the odd word element 8w + 2j + 1: the layout of the
// low and high nibbles of weight word w (masked with 0x0f0f0f0f, and after a shift by 4).
// Each lane then takes whole 32-weight groups of ROWS rows:
//   sum_j (q_j d_w + m_w) x_j ~ d_w d_x sum_j q_j c_j + m_w sum_j x_j
// with the input codes c and the exact float sum of the group's inputs. RMSNorm's 1/rms
// is applied at the end (`finish`), from the sum of squares of the raw inputs.
// Rows longer than the workgroup's store (32 * Q8_GROUPS elements) go through it in chunks,
// quantised in turn (the 7B down projection, k = 11008: three).
//   k: a multiple of 32.

const Q8_GROUPS: u32 = 128u;

// Per group: the 8 packed code words (even, odd, even, odd, ...) and (d_x, sum x, sum raw x^2).
var<workgroup> xq: array<vec4<u32>, 2u * Q8_GROUPS>;
var<workgroup> xg: array<vec4<f32>, Q8_GROUPS>;

// A thread's half of an input group: its sum, max |v| and raw sum of squares (exchanged
// with the partner thread by `partner_half`, of q8_lanes_shared.wgsl or q8_lanes_subgroup.wgsl).
struct HalfGroup {
    s4: vec4<f32>,
    mx: f32,
    ss: f32,
}

// Quantise groups c0..c0 + cn of the input row at `xbase` into xq / xg (every thread; ends
// with a barrier). Two threads share a group, 16 elements each, and swap their half's
// maximum and sums (`partner_half`): all 256 threads work on 7B's 128 groups, each with half
// the values live. H200 int4, GPU µs per step, a thread per group -> two (swapping through
// workgroup memory): 7B 2,203 -> 2,124, after 512 2,500 -> 2,423; 1.1B 902 -> 895, 1,002 ->
// 986. This prologue was ~190 µs of the 7B step (2,006 with it skipped).
fn quantise_input(tid: u32, xbase: u32, c0: u32, cn: u32) {
    for (var t0 = 0u; t0 < 2u * cn; t0 += WG) {
        let t = t0 + tid;
        let act = t < 2u * cn;
        let g = t / 2u;
        let half = t % 2u;
        var v0 = vec4<f32>(0.0);
        var v1 = vec4<f32>(0.0);
        var v2 = vec4<f32>(0.0);
        var v3 = vec4<f32>(0.0);
        var ss = 0.0;
        if (act) {
            let kb = (c0 + g) * 32u + 16u * half;
            v0 = xin4(xbase, kb);
            v1 = xin4(xbase, kb + 4u);
            v2 = xin4(xbase, kb + 8u);
            v3 = xin4(xbase, kb + 12u);
            if (FUSE_NORM) {
                ss = dot(v0, v0) + dot(v1, v1) + dot(v2, v2) + dot(v3, v3);
                let a = 8u * (c0 + g) + 4u * half;
                v0 *= aux[a];
                v1 *= aux[a + 1u];
                v2 *= aux[a + 2u];
                v3 *= aux[a + 3u];
            }
        }
        let m4 = max(max(abs(v0), abs(v1)), max(abs(v2), abs(v3)));
        let mine = HalfGroup(v0 + v1 + v2 + v3, max(max(m4.x, m4.y), max(m4.z, m4.w)), ss);
        let other = partner_half(tid, mine);
        if (act) {
            let amax = max(mine.mx, other.mx);
            let inv = select(0.0, 127.0 / amax, amax > 0.0);
            xq[2u * g + half] = vec4<u32>(pack_pair(v0, v1, inv), pack_pair(v2, v3, inv));
            if (half == 0u) {
                // quant_group's order: the lower half's sum plus the upper's.
                let sum = mine.s4 + other.s4;
                xg[g] = vec4<f32>(amax / 127.0, sum.x + sum.y + sum.z + sum.w, mine.ss + other.ss, 0.0);
            }
        }
        // Publishes xq / xg, and the next pass overwrites what partner_half used.
        workgroupBarrier();
    }
}

// Group `i` of up to 4 rows of the weights: one vec4 of code words and the (scale, min) each,
// all loaded before any is used (H200, GPU µs per decode step against a load and its products
// row by row: 7B 2,235 -> 2,205, 1.1B 917 -> 906; loading the next group a step ahead, or
// the first before the input is quantised, was slower: 7B 2,404).
struct WGroup {
    q: array<vec4<u32>, 4>,
    dm: array<vec2<f32>, 4>,
}

// Group `i` of the rows `r` (the first ROWS of them).
fn load_group(r: vec4<u32>, gn: u32, i: u32) -> WGroup {
    var g: WGroup;
    g.q[0] = w[r.x * gn + i];
    g.dm[0] = group_dm(r.x * gn + i);
    if (ROWS > 1u) {
        g.q[1] = w[r.y * gn + i];
        g.dm[1] = group_dm(r.y * gn + i);
    }
    if (ROWS > 2u) {
        g.q[2] = w[r.z * gn + i];
        g.dm[2] = group_dm(r.z * gn + i);
    }
    if (ROWS > 3u) {
        g.q[3] = w[r.w * gn + i];
        g.dm[3] = group_dm(r.w * gn + i);
    }
    return g;
}

// acc + the products of a group of the rows (the first ROWS of them) with one input group.
fn q8_rows(acc: vec4<f32>, g: WGroup, xa: vec4<u32>, xb: vec4<u32>, xs: vec4<f32>) -> vec4<f32> {
    var a = acc;
    a.x += q8_group(g.q[0], g.dm[0], xa, xb, xs);
    if (ROWS > 1u) {
        a.y += q8_group(g.q[1], g.dm[1], xa, xb, xs);
    }
    if (ROWS > 2u) {
        a.z += q8_group(g.q[2], g.dm[2], xa, xb, xs);
    }
    if (ROWS > 3u) {
        a.w += q8_group(g.q[3], g.dm[3], xa, xb, xs);
    }
    return a;
}

// A lane's partial products of the rows `r` with the input row at `xbase`, quantised through
// the workgroup store chunk by chunk, and its part of the raw inputs' sum of squares (every
// thread calls it: barriers).
struct Q8Acc {
    acc: vec4<f32>,
    ss: f32,
}

fn q8_dot(tid: u32, lane: u32, xbase: u32, r: vec4<u32>) -> Q8Acc {
    let gn = p.k / 32u;
    var o = Q8Acc(vec4<f32>(0.0), 0.0);
    for (var c0 = 0u; c0 < gn; c0 += Q8_GROUPS) {
        let cn = min(gn - c0, Q8_GROUPS);
        quantise_input(tid, xbase, c0, cn);
        for (var g = lane; g < cn; g += TPR) {
            let wg = load_group(r, gn, c0 + g);
            let xs = xg[g];
            o.ss += xs.z;
            o.acc = q8_rows(o.acc, wg, xq[2u * g], xq[2u * g + 1u], xs);
        }
        // The next chunk overwrites the store.
        if (c0 + Q8_GROUPS < gn) {
            workgroupBarrier();
        }
    }
    return o;
}

@compute @workgroup_size(WG)
fn q8in(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    let d = q8_dot(tid, lane, input_row(wid) * p.x_stride, clamped_rows(row0));
    q8_finish(tid, lane, row0, d.acc, d.ss, true);
}

// --- SwiGLU gate/up that packs its product (`q8pack`) and the matvec that reads it (`q8pre`).
// A decode step's down projection takes the SwiGLU product h = silu(gate) * up as input. As
// a `q8in` matvec every workgroup would quantise all of h again (7B: 11008 elements, each an
// exponential), which costs the down projection a third of its time (H100: 22 µs `wide`,
// 15 µs with the input packed). Instead each `q8pack` workgroup computes the 32 gate rows
// and the 32 up rows of one group of h (rows 32w.. and n/2 + 32w..; n/2 a multiple of 32,
// 64 rows per workgroup), stores them as `q8in` would, and writes the group packed: the 8
// code words in the store's order, then (d, sum, 0, 0). `q8pre` reads those groups.

// Group g of the packed input: words 3g and 3g + 1 the codes, 3g + 2 the bits of (d, sum, 0, 0).
@group(0) @binding(10) var<storage, read_write> xq_out: array<vec4<u32>>;
@group(0) @binding(11) var<storage, read> xq_in: array<vec4<u32>>;

var<workgroup> hv: array<vec4<f32>, 16>;   // per row group: the 64 rows, gate 0..31 then up 0..31
var<workgroup> hq: array<vec4<f32>, 8>;    // the group of h

// Elements 4i..4i+3 of the workgroup's group of h: silu(gate) * up.
fn swiglu4(i: u32) -> vec4<f32> {
    let gv = hv[i];
    return gv / (1.0 + exp(-gv)) * hv[8u + i];
}

@compute @workgroup_size(WG)
fn q8pack(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let lane = tid % TPR;
    let local = (tid / TPR) * ROWS;
    let half_rows = (WG / TPR) * ROWS / 2u;
    let row0 = select(p.n / 2u + wid.x * half_rows + local - half_rows, wid.x * half_rows + local, local < half_rows);
    let d = q8_dot(tid, lane, input_row(wid) * p.x_stride, clamped_rows(row0));
    let out = q8_finish(tid, lane, row0, d.acc, d.ss, true);
    if (lane == 0u) {
        hv[tid / TPR] = out;
    }
    workgroupBarrier();
    // The products in parallel (their exponentials are the tail's cost), then one thread packs.
    if (tid < 8u) {
        hq[tid] = swiglu4(tid);
    }
    workgroupBarrier();
    if (tid == 0u) {
        let q = quant_group(hq[0], hq[1], hq[2], hq[3], hq[4], hq[5], hq[6], hq[7]);
        let g = 3u * wid.x;
        xq_out[g] = q.lo;
        xq_out[g + 1u] = q.hi;
        xq_out[g + 2u] = bitcast<vec4<u32>>(vec4<f32>(q.d, q.sum, 0.0, 0.0));
    }
}

@compute @workgroup_size(WG)
fn q8pre(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let lane = tid % TPR;
    let row0 = (wid.x * (WG / TPR) + tid / TPR) * ROWS;
    _ = input_row(wid);
    let r = clamped_rows(row0);
    if (lane == 0u) {
        load_onto(row0);
    }
    let gn = p.k / 32u;
    var acc = vec4<f32>(0.0);
    for (var g = lane; g < gn; g += TPR) {
        let wg = load_group(r, gn, g);
        acc = q8_rows(acc, wg, xq_in[3u * g], xq_in[3u * g + 1u], bitcast<vec4<f32>>(xq_in[3u * g + 2u]));
    }
    q8_finish(tid, lane, row0, acc, 0.0, true);
}
