// Sums over groups of `n` consecutive lanes by subgroup shuffles (a butterfly, so every lane
// gets its group's sum; lane 0 adds in the same pairs as `finish`'s tree in matvec.wgsl),
// where a group lies in one subgroup, in order: a row group's TPR lanes in the subgroup matvec
// and the q8 matvecs, a head's HEAD_LANES lanes in the subgroup decode attention.

fn shuffle_sum4(v: vec4<f32>, n: u32) -> vec4<f32> {
    var a = v;
    for (var o = n / 2u; o > 0u; o >>= 1u) {
        a += subgroupShuffleXor(a, o);
    }
    return a;
}

fn shuffle_sum(v: f32, n: u32) -> f32 {
    var a = v;
    for (var o = n / 2u; o > 0u; o >>= 1u) {
        a += subgroupShuffleXor(a, o);
    }
    return a;
}
