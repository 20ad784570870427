// Probes for examples/phase_bench.rs: a chain of dependent int8 matvecs (phase i reads the
// output of phase i - 1), run either as one dispatch per phase (`phase_one`, the engine's
// way: a pipeline barrier between dispatches) or as one persistent dispatch that walks every
// phase and waits at a grid barrier (an atomic counter) between them (`persistent`). With
// PREFETCH the persistent kernel loads its first block of the next phase's weights before it
// waits, so the barrier's wait overlaps the weight stream.
//
// Weights: `phases` matrices [n, k] of int8 (k a multiple of 16), phase-major.
// Activations: region i (k floats) is phase i's input, region i + 1 its output (n == k).

override WG: u32 = 256u;
override TPR: u32 = 32u;
override PREFETCH: bool = false;
override ROWS: u32 = WG / TPR;

struct P {
    n: u32,
    k: u32,
    phases: u32,
    groups: u32,
    phase: u32,
    scale: f32,
    _a: u32,
    _b: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> act: array<f32>;
@group(0) @binding(3) var<storage, read_write> bar: array<atomic<u32>>;

const MAXK4: u32 = 2048u;
var<workgroup> xs: array<vec4<f32>, MAXK4>;
var<workgroup> red: array<f32, WG>;

// Phase ph's input into workgroup memory (ends with a barrier).
fn stage_x(tid: u32, ph: u32) {
    let base = ph * p.k;
    for (var i = tid; i < p.k / 4u; i += WG) {
        let b = base + 4u * i;
        xs[i] = vec4<f32>(act[b], act[b + 1u], act[b + 2u], act[b + 3u]);
    }
    workgroupBarrier();
}

fn wbase(ph: u32, row: u32) -> u32 {
    return (ph * p.n + row) * (p.k / 16u);
}

fn dot16(q: vec4<u32>, j: u32) -> f32 {
    return dot(vec4<f32>(unpack4xI8(q.x)), xs[4u * j]) + dot(vec4<f32>(unpack4xI8(q.y)), xs[4u * j + 1u])
        + dot(vec4<f32>(unpack4xI8(q.z)), xs[4u * j + 2u]) + dot(vec4<f32>(unpack4xI8(q.w)), xs[4u * j + 3u]);
}

// The first four vec4 of weights a thread takes in block `blk` of phase `ph`.
fn first_batch(tid: u32, ph: u32, blk: u32) -> array<vec4<u32>, 4> {
    var q: array<vec4<u32>, 4>;
    let lane = tid % TPR;
    let row = blk * ROWS + tid / TPR;
    let kv = p.k / 16u;
    if (row < p.n) {
        let wb = wbase(ph, row);
        for (var t = 0u; t < 4u; t++) {
            let j = lane + TPR * t;
            if (j < kv) {
                q[t] = w[wb + j];
            }
        }
    }
    return q;
}

// Rows of block `blk` of phase `ph` (every thread calls it: barriers); `pre` holds the first
// batch when `use_pre`.
fn row_block(tid: u32, ph: u32, blk: u32, pre: array<vec4<u32>, 4>, use_pre: bool) {
    let lane = tid % TPR;
    let row = blk * ROWS + tid / TPR;
    let kv = p.k / 16u;
    var acc = 0.0;
    if (row < p.n) {
        let wb = wbase(ph, row);
        var q = pre;
        if (!use_pre) {
            for (var t = 0u; t < 4u; t++) {
                let j = lane + TPR * t;
                if (j < kv) {
                    q[t] = w[wb + j];
                }
            }
        }
        for (var jb = 0u; jb < kv; jb += 4u * TPR) {
            var next: array<vec4<u32>, 4>;
            for (var t = 0u; t < 4u; t++) {
                let j = jb + 4u * TPR + lane + TPR * t;
                if (j < kv) {
                    next[t] = w[wb + j];
                }
            }
            for (var t = 0u; t < 4u; t++) {
                let j = jb + lane + TPR * t;
                if (j < kv) {
                    acc += dot16(q[t], j);
                }
            }
            q = next;
        }
    }
    red[tid] = acc;
    workgroupBarrier();
    if (lane == 0u && row < p.n) {
        var s = 0.0;
        for (var i = 0u; i < TPR; i++) {
            s += red[tid + i];
        }
        act[(ph + 1u) * p.k + row] = s * p.scale;
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn phase_one(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    stage_x(lid.x, p.phase);
    var none: array<vec4<u32>, 4>;
    row_block(lid.x, p.phase, wid.x, none, false);
}

// Every workgroup adds one to the counter and waits until all `target` arrivals are in.
fn grid_sync(tid: u32, goal: u32) {
    storageBarrier();
    if (tid == 0u) {
        atomicAdd(&bar[0], 1u);
        loop {
            if (atomicLoad(&bar[0]) >= goal) {
                break;
            }
        }
    }
    workgroupBarrier();
    storageBarrier();
}

@compute @workgroup_size(WG)
fn persistent(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    let g = wid.x;
    let nblk = (p.n + ROWS - 1u) / ROWS;
    var pre: array<vec4<u32>, 4>;
    for (var ph = 0u; ph < p.phases; ph++) {
        stage_x(tid, ph);
        for (var b = g; b < nblk; b += p.groups) {
            row_block(tid, ph, b, pre, PREFETCH && ph > 0u && b == g);
        }
        if (ph + 1u < p.phases) {
            if (PREFETCH) {
                pre = first_batch(tid, ph + 1u, g);
            }
            grid_sync(tid, p.groups * (ph + 1u));
        }
    }
}
