// How the `q8in` / `q8pack` matvecs (matvec_q8in.wgsl) share values between lanes on devices
// with subgroups, where a row group's TPR lanes lie in one subgroup (TPR <= the adapter's
// smallest subgroup, lanes in subgroup order; after subgroup_sum.wgsl): shuffles, so the
// kernel keeps only the quantised input in workgroup memory and needs no barrier to reduce.
// H200 int4, GPU µs per step, workgroup memory -> shuffles: 7B 2,094 -> 2,059, after 512
// 2,388 -> 2,351; 1.1B 892 -> 881, after 512 980 -> 969. The outputs are the same bits as
// through workgroup memory.

fn partner_half(tid: u32, mine: HalfGroup) -> HalfGroup {
    return HalfGroup(subgroupShuffleXor(mine.s4, 1u), subgroupShuffleXor(mine.mx, 1u), subgroupShuffleXor(mine.ss, 1u));
}

// A row group's sums: the levels of lanes 32 or more apart (TPR > 32: another subgroup on
// 32-lane devices; the host allows that only where the smallest subgroup has 32 lanes)
// through `finish`'s tree (`tree_sums`), the rest by shuffles in the same pairs, so the same
// bits. TPR 64 (`q8pre`, 128 threads): 5 of the tree's 6 barriers fewer (figures in README,
// session 19).
fn q8_finish(tid: u32, lane: u32, row0: u32, acc: vec4<f32>, ss: f32, live: bool) -> vec4<f32> {
    let t = tree_sums(tid, lane, RowSums(acc, ss), 32u);
    let within = min(TPR, 32u);
    var total_ss = t.ss;
    if (FUSE_NORM) {
        total_ss = shuffle_sum(t.ss, within);
    }
    return store_reduced(lane, row0, shuffle_sum4(t.acc, within), total_ss, live);
}
