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
//   else p_i = exp((l_i - max) / T), thresholds for top-k and top-p found by bisection on
//   the logit value, then inverse-CDF sampling over the kept ids with a counter-based RNG
//   keyed by (seed, position).

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
const BISECT_STEPS: u32 = 32u;

@group(0) @binding(0) var<uniform> p: SampleParams;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> state: array<u32>;

var<workgroup> red_f: array<f32, 256>;
var<workgroup> red_u: array<u32, 256>;
var<workgroup> red_f2: array<f32, 256>;
var<workgroup> chosen: u32;

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
        // Total mass.
        var z = 0.0;
        for (var i = tid; i < vocab; i += WG) {
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

        // Bisection on the logit threshold: largest v with count(l >= v) >= top_k and
        // largest v with mass(l >= v) >= top_p * total. Below mx - 60 T the mass is nil.
        let floor_v = mx - 60.0 * p.temperature;
        var lo_k = floor_v;
        var hi_k = mx;
        var lo_p = floor_v;
        var hi_p = mx;
        let use_k = p.top_k > 0u && p.top_k < vocab;
        let use_p = p.top_p < 1.0;
        if (use_k || use_p) {
            for (var it = 0u; it < BISECT_STEPS; it++) {
                let mid_k = 0.5 * (lo_k + hi_k);
                let mid_p = 0.5 * (lo_p + hi_p);
                var c = 0u;
                var m = 0.0;
                for (var i = tid; i < vocab; i += WG) {
                    let l = logits[base + i];
                    if (l >= mid_k) {
                        c += 1u;
                    }
                    if (l >= mid_p) {
                        m += exp((l - mx) * inv_t);
                    }
                }
                red_u[tid] = c;
                red_f[tid] = m;
                workgroupBarrier();
                for (var s = WG / 2u; s > 0u; s >>= 1u) {
                    if (tid < s) {
                        red_u[tid] += red_u[tid + s];
                        red_f[tid] += red_f[tid + s];
                    }
                    workgroupBarrier();
                }
                let cnt = red_u[0];
                let mass = red_f[0];
                workgroupBarrier();
                if (cnt >= p.top_k) {
                    lo_k = mid_k;
                } else {
                    hi_k = mid_k;
                }
                if (mass >= p.top_p * total) {
                    lo_p = mid_p;
                } else {
                    hi_p = mid_p;
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
        for (var i = c0; i < c1; i++) {
            let l = logits[base + i];
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
