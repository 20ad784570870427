// Load-time quantisation of f32 weights into the integer GPU formats (quant::fit is the CPU
// reference; the steps and their order are the same). One thread per unit: a group of QG
// weights (asymmetric: BITS 4, 3, 2; scale + min in one u32), or two groups of 32 (int8:
// their two f16 scales share one u32). The unit's words and scale word belong to it alone.
//   x: [units * UNIT] f32 rows (a chunk of the matrix starting at a row, reused staging)
//   words[w_off + u * WPU ..]: packed codes; scales[s_off + u]: packed f16 parameters.
//   imp: [cols] importance of each input column (read when `weighted`): the fit's error
//   weights, instead of mean|x| + |x_i|.
// STARTS starting ranges (min/max shrunk by 10% each), ITERS alternations of re-rounding and
// weighted least-squares refit of (d, m) per start; STARTS = 1, ITERS = 0 is round-to-nearest.

struct QuantParams {
    units: u32,   // units in this chunk
    w_off: u32,   // first word of the chunk in `words`
    s_off: u32,   // first scale word of the chunk in `scales`
    cols: u32,    // row width of the matrix (the chunk starts at column 0)
    weighted: u32,  // 1: error weights imp[column]
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override BITS: u32 = 4;
override QG: u32 = 32;
override STARTS: u32 = 4;
override ITERS: u32 = 6;
override WG: u32 = 64;

@group(0) @binding(0) var<uniform> p: QuantParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> words: array<u32>;
@group(0) @binding(3) var<storage, read_write> scales: array<u32>;
@group(0) @binding(4) var<storage, read> imp: array<f32>;

fn sym() -> bool {
    return BITS == 8u;
}

fn qlo() -> f32 {
    return select(0.0, -127.0, sym());
}

fn qhi() -> f32 {
    return select(f32((1u << BITS) - 1u), 127.0, sym());
}

fn code(v: f32, d: f32, m: f32) -> f32 {
    if (d == 0.0) {
        return 0.0;
    }
    return clamp(round((v - m) / d), qlo(), qhi());
}

// Best (d, m) for the group at x[base .. base + QG], as f16 pairs rounded by pack2x16float.
fn fit(base: u32) -> vec2<f32> {
    var mn = x[base];
    var mx = x[base];
    var amax = 0.0;
    var sa = 0.0;
    for (var i = 0u; i < QG; i++) {
        let v = x[base + i];
        mn = min(mn, v);
        mx = max(mx, v);
        amax = max(amax, abs(v));
        sa += abs(v);
    }
    // Error weights imp[column] (the input's mean square), or av + |x|: the large weights
    // that dominate a product count more.
    let av = sa / f32(QG);
    // Column of the group's first weight (a group never straddles rows: cols % QG == 0).
    let c0 = base % p.cols;
    let hi = qhi();
    var best = vec2<f32>(0.0);
    var best_err = 3.4e38;  // above any group error; 3.4028235e38 rounds past f32 max in Tint
    for (var s = 0u; s < STARTS; s++) {
        let shrink = 1.0 - 0.1 * f32(s);
        var d: f32;
        var m: f32;
        if (sym()) {
            d = amax * shrink / hi;
            m = 0.0;
        } else {
            d = (mx - mn) * shrink / hi;
            m = mn + (mx - mn) * (1.0 - shrink) * 0.5;
        }
        for (var it = 0u; it <= ITERS; it++) {
            var err = 0.0;
            var sw = 0.0;
            var swq = 0.0;
            var swqq = 0.0;
            var swx = 0.0;
            var swqx = 0.0;
            for (var i = 0u; i < QG; i++) {
                let v = x[base + i];
                var wt = av + abs(v);
                if (p.weighted != 0u) {
                    wt = imp[c0 + i];
                }
                let q = code(v, d, m);
                let e = q * d + m - v;
                err += wt * e * e;
                sw += wt;
                swq += wt * q;
                swqq += wt * q * q;
                swx += wt * v;
                swqx += wt * q * v;
            }
            if (err < best_err) {
                best = vec2<f32>(d, m);
                best_err = err;
            }
            if (it == ITERS) {
                break;
            }
            if (sym()) {
                if (swqq <= 0.0) {
                    break;
                }
                d = swqx / swqq;
            } else {
                let det = sw * swqq - swq * swq;
                if (det <= 0.0) {
                    break;
                }
                d = (sw * swqx - swq * swx) / det;
                m = (swx - d * swq) / sw;
            }
        }
    }
    return best;
}

// Codes of the group at x[base ..] under the stored (f16) d, m, packed into words from `w0`.
fn pack(base: u32, w0: u32, d: f32, m: f32) {
    if (BITS == 3u) {
        for (var b = 0u; b < QG / 32u; b++) {
            var lo0 = 0u;
            var lo1 = 0u;
            var hi = 0u;
            for (var j = 0u; j < 32u; j++) {
                let q = u32(code(x[base + b * 32u + j], d, m));
                if (j < 16u) {
                    lo0 |= (q & 3u) << (2u * j);
                } else {
                    lo1 |= (q & 3u) << (2u * (j - 16u));
                }
                hi |= (q >> 2u) << j;
            }
            words[w0 + b * 3u] = lo0;
            words[w0 + b * 3u + 1u] = lo1;
            words[w0 + b * 3u + 2u] = hi;
        }
        return;
    }
    let per = 32u / BITS;
    let mask = (1u << BITS) - 1u;
    for (var c = 0u; c < QG / per; c++) {
        var acc = 0u;
        for (var j = 0u; j < per; j++) {
            let q = bitcast<u32>(i32(code(x[base + c * per + j], d, m))) & mask;
            acc |= q << (BITS * j);
        }
        words[w0 + c] = acc;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let u = gid.x;
    if (u >= p.units) {
        return;
    }
    let words_per_group = QG * BITS / 32u;
    if (sym()) {
        // Two groups of QG (= 32): one scale word.
        let b0 = u * 2u * QG;
        let f0 = unpack2x16float(pack2x16float(vec2<f32>(fit(b0).x, 0.0))).x;
        let f1 = unpack2x16float(pack2x16float(vec2<f32>(fit(b0 + QG).x, 0.0))).x;
        let w0 = p.w_off + u * 2u * words_per_group;
        pack(b0, w0, f0, 0.0);
        pack(b0 + QG, w0 + words_per_group, f1, 0.0);
        scales[p.s_off + u] = pack2x16float(vec2<f32>(f0, f1));
        return;
    }
    let base = u * QG;
    let packed = pack2x16float(fit(base));
    let dm = unpack2x16float(packed);
    pack(base, p.w_off + u * words_per_group, dm.x, dm.y);
    scales[p.s_off + u] = packed;
}
