// Decode attention that also packs its output for the o projection (appended to
// attention.wgsl after q8_group.wgsl for the `pack` kernels only, so that other modules do
// not need pack4xI8). The o projection reads it as the `q8pre` matvec of matvec_q8in.wgsl,
// instead of each of its workgroups loading the floats (7B: 1,024 workgroups of 4 rows, each
// loading all 16 KiB). A head's workgroup holds its whole output (`o_sh`), so it packs its
// hd / 32 groups: group g of the step's row at [3 (row * n_heads * hd / 32 + g)].

@group(0) @binding(10) var<storage, read_write> out_q8: array<vec4<u32>>;

fn pack_head(tid: u32, h: u32, row: u32) {
    workgroupBarrier();
    let gh = p.hd / 32u;
    if (state[1] > 0u && tid < gh) {
        let b = 8u * tid;
        let q = quant_group(o_sh[b], o_sh[b + 1u], o_sh[b + 2u], o_sh[b + 3u], o_sh[b + 4u], o_sh[b + 5u], o_sh[b + 6u], o_sh[b + 7u]);
        let g = 3u * ((row * p.n_heads + h) * gh + tid);
        out_q8[g] = q.lo;
        out_q8[g + 1u] = q.hi;
        out_q8[g + 2u] = bitcast<vec4<u32>>(vec4<f32>(q.d, q.sum, 0.0, 0.0));
    }
}

// `decode`, packing the head's output: only at SPLIT 1, where the workgroup holds all of it
// (larger splits leave that to `combine_q8`).
@compute @workgroup_size(WG)
fn decode_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    decode_step(wid, lid.x);
    if (SPLIT == 1u) {
        pack_head(lid.x, wid.x, state[2]);
    }
}

// `combine` of a decode step, packing the head's output.
@compute @workgroup_size(WG)
fn combine_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    combine_head(wid, lid.x);
    pack_head(lid.x, wid.x, state[2]);
}

// `decode_merge`, the workgroup holding a head's whole output (SPLIT 1, or the merging one)
// packing it.
@compute @workgroup_size(WG)
fn decode_merge_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    decode_step(wid, lid.x);
    let merged = last_split(lid.x, wid.x, state[2]);
    if (merged) {
        combine_head(vec3<u32>(wid.x, 0u, 0u), lid.x);
    }
    if (SPLIT == 1u || merged) {
        pack_head(lid.x, wid.x, state[2]);
    }
}
