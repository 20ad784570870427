// Sums over a row group's TPR lanes by subgroup shuffles (a butterfly, so every lane gets the
// sum; lane 0 adds in the same pairs as `finish`'s tree in matvec.wgsl). For the subgroup
// matvec and the q8 matvecs' shuffling lanes, where TPR is within the adapter's smallest
// subgroup and a row group's lanes lie in one subgroup, in order.

fn shuffle_sum4(v: vec4<f32>) -> vec4<f32> {
    return shuffle_sum4_within(v, TPR);
}

// The same over the levels of lanes under `n` apart (n a power of two; the levels from n up
// are the caller's).
fn shuffle_sum4_within(v: vec4<f32>, n: u32) -> vec4<f32> {
    var a = v;
    for (var o = n / 2u; o > 0u; o >>= 1u) {
        a += subgroupShuffleXor(a, o);
    }
    return a;
}

fn shuffle_sum(v: f32) -> f32 {
    return shuffle_sum_within(v, TPR);
}

fn shuffle_sum_within(v: f32, n: u32) -> f32 {
    var a = v;
    for (var o = n / 2u; o > 0u; o >>= 1u) {
        a += subgroupShuffleXor(a, o);
    }
    return a;
}
