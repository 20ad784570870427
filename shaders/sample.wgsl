// GPU sampling of the next token from the logits of the last position, written straight
// into the token buffer that the next step's embedding reads; then the step state
// advances (pos += n_tokens, n_tokens = 1). One workgroup of WG threads.
//   logits: [rows, vocab], row state.row + state.n_tokens - 1 when p.last_row == 1, else row
//           state.row (0 except for a lane of a batched step)
//   tokens: [ctx] every id of the sequence so far
// Every-row mode (p.last_row == 2, grid y = n_tokens, used to verify drafted tokens):
// workgroup y samples row y as if it were the last, writes tokens[pos + y + 1] and leaves
// the state alone. Row y's penalty window reads the ids row y' < y writes; that race is
// harmless: when row y' agrees with the draft it writes the value already there, and when
// it does not, rows after y' are rejected whatever they pick.
// Order of operations (mirrored exactly by sampling.rs, the CPU reference):
//   repetition penalty over the last `rep_window` ids (each distinct id once),
//   temperature 0 -> argmax (lowest id on ties);
//   else p_i = exp((l_i - max) / T), thresholds for top-k and top-p found by a 16-way
//   search on the logit value (8 passes over the logits for 2^-32 of the initial interval,
//   where halving took 32), then inverse-CDF sampling over the kept ids with a
//   counter-based RNG keyed by (seed, position).

struct SampleParams {
    vocab: u32,
    temperature: f32,
    top_k: u32,        // 0 = off
    top_p: f32,        // 1 = off
    rep_penalty: f32,  // 1 = off
    rep_window: u32,
    seed_lo: u32,
    seed_hi: u32,
    last_row: u32,     // 0: row 0, 1: row n_tokens - 1, 2: every row (grid y)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;
// Threshold search: each pass splits [lo, hi] into GRID equal parts and tests the GRID - 1
// inner points at once; SEARCH_PASSES passes narrow it by GRID^SEARCH_PASSES = 2^32.
const GRID: u32 = 16u;
const PTS: u32 = 15u;             // GRID - 1 inner points
const SEARCH_PASSES: u32 = 8u;

@group(0) @binding(0) var<uniform> p: SampleParams;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> state: array<u32>;

var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_u: array<u32, 256>;
var<workgroup> red_f2: array<f32, 256>;
var<workgroup> chosen: u32;
// Per-point masses handed down the reduction tree: 128 threads x PTS.
var<workgroup> red_m: array<f32, 1920>;
// Per-point counts, two sets used by alternate passes (one is cleared while the other fills).
var<workgroup> cnt_acc: array<atomic<u32>, 32>;

// This thread's grid points (ascending) and its counts and masses at them.
var<private> gk: array<f32, 15>;
var<private> gp: array<f32, 15>;
var<private> cnt: array<u32, 15>;
var<private> mass: array<f32, 15>;

// One logit into this thread's counts (top-k) and masses (top-p); most logits lie below
// every point and cost two compares.
fn tally(l: f32, mx: f32, inv_t: f32, use_k: bool, use_p: bool) {
    if (use_k && l >= gk[0]) {
        for (var j = 0u; j < PTS; j++) {
            if (l >= gk[j]) {
                cnt[j] += 1u;
            }
        }
    }
    if (use_p && l >= gp[0]) {
        let e = exp((l - mx) * inv_t);
        for (var j = 0u; j < PTS; j++) {
            if (l >= gp[j]) {
                mass[j] += e;
            }
        }
    }
}

fn pcg(v: u32) -> u32 {
    let s = v * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

fn uniform01(pos: u32) -> f32 {
    let h = pcg(p.seed_lo ^ pcg(p.seed_hi ^ pcg(pos)));
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tid = lid.x;
    let every_row = p.last_row == 2u;
    var n_tok = max(state[1], 1u);
    if (every_row) {
        n_tok = wid.y + 1u;           // row wid.y as the last of its own prefix
    }
    let pos = state[0];
    let next = pos + n_tok;           // index of the id we write
    // state.row: the sequence's first logits row (a lane of a batched step has its own).
    var base = state[2] * p.vocab;
    if (p.last_row != 0u) {
        base += (n_tok - 1u) * p.vocab;
    }
    let vocab = p.vocab;

    // Repetition penalty over the window of ids before `next`.
    if (p.rep_penalty != 1.0 && p.rep_window > 0u) {
        let w = min(p.rep_window, next);
        let start = next - w;
        for (var i = tid; i < w; i += WG) {
            let id = tokens[start + i];
            var dup = false;
            for (var j = 0u; j < i; j++) {
                if (tokens[start + j] == id) {
                    dup = true;
                    break;
                }
            }
            if (!dup && id < vocab) {
                let l = logits[base + id];
                if (l > 0.0) {
                    logits[base + id] = l / p.rep_penalty;
                } else {
                    logits[base + id] = l * p.rep_penalty;
                }
            }
        }
        storageBarrier();
        workgroupBarrier();
    }

    // Max and argmax (lowest id wins ties).
    // Four loads in flight per iteration, taken in the same order as one at a time (ties
    // keep the first, lowest id): the single-load loop waited on each (H100, 49152 ids:
    // ~50 µs per step).
    var best = -3.4e38;
    var best_id = 0xffffffffu;
    var i = tid;
    for (; i + 3u * WG < vocab; i += 4u * WG) {
        let l = vec4<f32>(logits[base + i], logits[base + i + WG], logits[base + i + 2u * WG], logits[base + i + 3u * WG]);
        for (var j = 0u; j < 4u; j++) {
            if (l[j] > best) {
                best = l[j];
                best_id = i + j * WG;
            }
        }
    }
    for (; i < vocab; i += WG) {
        let l = logits[base + i];
        if (l > best) {
            best = l;
            best_id = i;
        }
    }
    red_f[tid] = best;
    red_u[tid] = best_id;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            let ov = red_f[tid + s];
            let oi = red_u[tid + s];
            if (ov > red_f[tid] || (ov == red_f[tid] && oi < red_u[tid])) {
                red_f[tid] = ov;
                red_u[tid] = oi;
            }
        }
        workgroupBarrier();
    }
    let mx = red_f[0];
    let argmax = red_u[0];
    workgroupBarrier();

    if (p.temperature <= 0.0) {
        if (tid == 0u) {
            chosen = argmax;
        }
    } else {
        let inv_t = 1.0 / p.temperature;
        // Total mass (four loads in flight, added in the same order as one at a time).
        var z = 0.0;
        var i = tid;
        for (; i + 3u * WG < vocab; i += 4u * WG) {
            let l = vec4<f32>(logits[base + i], logits[base + i + WG], logits[base + i + 2u * WG], logits[base + i + 3u * WG]);
            let e = exp((l - vec4<f32>(mx)) * inv_t);
            z += e.x;
            z += e.y;
            z += e.z;
            z += e.w;
        }
        for (; i < vocab; i += WG) {
            z += exp((logits[base + i] - mx) * inv_t);
        }
        red_f[tid] = z;
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s >>= 1u) {
            if (tid < s) {
                red_f[tid] += red_f[tid + s];
            }
            workgroupBarrier();
        }
        let total = red_f[0];
        workgroupBarrier();

        // Threshold search on the logit value: largest v with count(l >= v) >= top_k and
        // largest v with mass(l >= v) >= top_p * total. Below mx - 60 T the mass is nil.
        // lo only moves to a point that passes, hi to one that fails.
        let floor_v = mx - 60.0 * p.temperature;
        var lo_k = floor_v;
        var hi_k = mx;
        var lo_p = floor_v;
        var hi_p = mx;
        let use_k = p.top_k > 0u && p.top_k < vocab;
        let use_p = p.top_p < 1.0;
        if (use_k || use_p) {
            if (tid < 32u) {
                atomicStore(&cnt_acc[tid], 0u);
            }
            workgroupBarrier();
            let target_mass = p.top_p * total;
            for (var it = 0u; it < SEARCH_PASSES; it++) {
                let half = (it & 1u) * 16u;
                // Points by repeated addition (no multiply an FMA could fuse: the CPU
                // reference makes the same roundings), capped at hi.
                let sk = (hi_k - lo_k) * (1.0 / f32(GRID));
                let sp = (hi_p - lo_p) * (1.0 / f32(GRID));
                var vk = lo_k;
                var vp = lo_p;
                for (var j = 0u; j < PTS; j++) {
                    vk = min(vk + sk, hi_k);
                    vp = min(vp + sp, hi_p);
                    gk[j] = vk;
                    gp[j] = vp;
                    cnt[j] = 0u;
                    mass[j] = 0.0;
                }
                var i = tid;
                for (; i + 3u * WG < vocab; i += 4u * WG) {
                    let l = vec4<f32>(logits[base + i], logits[base + i + WG], logits[base + i + 2u * WG], logits[base + i + 3u * WG]);
                    tally(l.x, mx, inv_t, use_k, use_p);
                    tally(l.y, mx, inv_t, use_k, use_p);
                    tally(l.z, mx, inv_t, use_k, use_p);
                    tally(l.w, mx, inv_t, use_k, use_p);
                }
                for (; i < vocab; i += WG) {
                    tally(logits[base + i], mx, inv_t, use_k, use_p);
                }
                // Counts: integer sums, any order. The other set was read last pass (and a
                // barrier followed); clear it for the next.
                for (var j = 0u; j < PTS; j++) {
                    if (cnt[j] > 0u) {
                        atomicAdd(&cnt_acc[half + j], cnt[j]);
                    }
                }
                if (tid == 0u) {
                    for (var j = 0u; j < PTS; j++) {
                        atomicStore(&cnt_acc[16u - half + j], 0u);
                    }
                }
                // Masses: the same tree as a one-value reduction (level s: thread t < s adds
                // thread t + s's sums), through half the threads' worth of memory.
                for (var s = WG / 2u; s > 0u; s >>= 1u) {
                    if (tid >= s && tid < 2u * s) {
                        for (var j = 0u; j < PTS; j++) {
                            red_m[(tid - s) * PTS + j] = mass[j];
                        }
                    }
                    workgroupBarrier();
                    if (tid < s) {
                        for (var j = 0u; j < PTS; j++) {
                            mass[j] += red_m[tid * PTS + j];
                        }
                    }
                    workgroupBarrier();
                }
                if (tid == 0u) {
                    for (var j = 0u; j < PTS; j++) {
                        red_m[j] = mass[j];
                    }
                }
                workgroupBarrier();
                // Every thread takes the same decision: the highest passing point.
                var jk = 0u;
                var jp = 0u;
                for (var j = 0u; j < PTS; j++) {
                    if (atomicLoad(&cnt_acc[half + j]) >= p.top_k) {
                        jk = j + 1u;
                    }
                    if (red_m[j] >= target_mass) {
                        jp = j + 1u;
                    }
                }
                workgroupBarrier();
                if (jk < PTS) {
                    hi_k = gk[jk];
                }
                if (jk > 0u) {
                    lo_k = gk[jk - 1u];
                }
                if (jp < PTS) {
                    hi_p = gp[jp];
                }
                if (jp > 0u) {
                    lo_p = gp[jp - 1u];
                }
            }
        }
        var thr = floor_v;
        if (use_k) {
            thr = max(thr, lo_k);
        }
        if (use_p) {
            thr = max(thr, lo_p);
        }

        // Inverse CDF over contiguous chunks, one per thread.
        let chunk = (vocab + WG - 1u) / WG;
        let c0 = min(tid * chunk, vocab);
        let c1 = min(c0 + chunk, vocab);
        var part = 0.0;
        var k = c0;
        for (; k + 3u < c1; k += 4u) {
            let l = vec4<f32>(logits[base + k], logits[base + k + 1u], logits[base + k + 2u], logits[base + k + 3u]);
            for (var j = 0u; j < 4u; j++) {
                if (l[j] >= thr) {
                    part += exp((l[j] - mx) * inv_t);
                }
            }
        }
        for (; k < c1; k++) {
            let l = logits[base + k];
            if (l >= thr) {
                part += exp((l - mx) * inv_t);
            }
        }
        red_f2[tid] = part;
        workgroupBarrier();
        if (tid == 0u) {
            var kept = 0.0;
            for (var i = 0u; i < WG; i++) {
                kept += red_f2[i];
            }
            let u = uniform01(next) * kept;
            var acc = 0.0;
            var owner = WG;
            var last_nonzero = 0u;
            for (var i = 0u; i < WG; i++) {
                if (red_f2[i] > 0.0) {
                    last_nonzero = i;
                    if (owner == WG && u < acc + red_f2[i]) {
                        owner = i;
                        red_f[0] = u - acc;
                    }
                }
                acc += red_f2[i];
            }
            if (owner == WG) {
                owner = last_nonzero;
                red_f[0] = red_f2[owner];
            }
            red_u[0] = owner;
        }
        workgroupBarrier();
        if (tid == red_u[0]) {
            let target_u = red_f[0];
            var acc = 0.0;
            var pick = argmax;
            for (var i = c0; i < c1; i++) {
                let l = logits[base + i];
                if (l >= thr) {
                    acc += exp((l - mx) * inv_t);
                    pick = i;
                    if (target_u < acc) {
                        break;
                    }
                }
            }
            chosen = pick;
        }
    }
    workgroupBarrier();
    if (tid == 0u) {
        tokens[next] = chosen;
        if (!every_row) {
            state[0] = next;
            state[1] = 1u;
        }
    }
}
