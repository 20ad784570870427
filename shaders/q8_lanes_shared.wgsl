// How the `q8in` / `q8pack` matvecs (matvec_q8in.wgsl) share values between lanes, without
// subgroups: through `finish`'s reduction arrays in workgroup memory.

// The partner's (thread tid ^ 1) half group: its maximum for both, its sum and raw sum of
// squares for the lower half only (every thread calls it: a barrier). `finish`'s arrays are
// free until then (arrays of its own, 6 KiB more workgroup memory, made the H200 7B slower:
// 2,203 -> 2,332 µs per step): maxima in `red`, the upper half's sum in its `parts` slot and
// its sum of squares in the lower half's.
fn partner_half(tid: u32, mine: HalfGroup) -> HalfGroup {
    red[tid] = mine.mx;
    if (tid % 2u == 1u) {
        parts[tid] = mine.s4;
        parts[tid - 1u] = vec4<f32>(mine.ss, 0.0, 0.0, 0.0);
    }
    workgroupBarrier();
    var o = HalfGroup(vec4<f32>(0.0), red[tid ^ 1u], 0.0);
    if (tid % 2u == 0u) {
        o.s4 = parts[tid + 1u];
        o.ss = parts[tid].x;
    }
    return o;
}

fn q8_finish(tid: u32, lane: u32, row0: u32, acc: vec4<f32>, ss: f32, live: bool) -> vec4<f32> {
    return finish(tid, lane, row0, acc, ss, live);
}
