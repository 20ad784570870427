// Sums over a row group's TPR lanes by subgroup shuffles (a butterfly, so every lane gets the
// sum; lane 0 adds in the same pairs as `finish`'s tree in matvec.wgsl). For the subgroup
// matvec and the q8 matvecs' shuffling lanes, where TPR is within the adapter's smallest
// subgroup and a row group's lanes lie in one subgroup, in order.

fn shuffle_sum4(v: vec4<f32>) -> vec4<f32> {
    var a = v;
    for (var o = TPR / 2u; o > 0u; o >>= 1u) {
        a += subgroupShuffleXor(a, o);
    }
    return a;
}

fn shuffle_sum(v: f32) -> f32 {
    var a = v;
    for (var o = TPR / 2u; o > 0u; o >>= 1u) {
        a += subgroupShuffleXor(a, o);
    }
    return a;
}
