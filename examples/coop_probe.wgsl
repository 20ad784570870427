// Tensor-core probe (examples/coop_probe.rs): C = A B in f16 with f32 accumulation through
// wgpu's cooperative matrices, every operand read straight from storage.
//   a: [m, k] f16 row-major   b: [k, n] f16 row-major   c: [m, n] f32 row-major
// A workgroup of 4 subgroups covers a 64x64 tile of C; each subgroup a 32x32 quarter as 2x2
// accumulators of 16x16. m, n multiples of 64; k a multiple of 16.
enable f16;
enable wgpu_cooperative_matrix;

struct P {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f16>;
@group(0) @binding(2) var<storage, read> b: array<f16>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_id) sg: u32) {
    let r0 = wid.y * 64u + (sg / 2u) * 32u;
    let c0 = wid.x * 64u + (sg % 2u) * 32u;
    var acc00 = coop_mat16x16<f32, C>();
    var acc01 = coop_mat16x16<f32, C>();
    var acc10 = coop_mat16x16<f32, C>();
    var acc11 = coop_mat16x16<f32, C>();
    for (var kk = 0u; kk < p.k; kk += 16u) {
        let a0 = coopLoadT<coop_mat16x16<f16, A>>(&a[r0 * p.k + kk], p.k);
        let a1 = coopLoadT<coop_mat16x16<f16, A>>(&a[(r0 + 16u) * p.k + kk], p.k);
        let b0 = coopLoadT<coop_mat16x16<f16, B>>(&b[kk * p.n + c0], p.n);
        let b1 = coopLoadT<coop_mat16x16<f16, B>>(&b[kk * p.n + c0 + 16u], p.n);
        acc00 = coopMultiplyAdd(a0, b0, acc00);
        acc01 = coopMultiplyAdd(a0, b1, acc01);
        acc10 = coopMultiplyAdd(a1, b0, acc10);
        acc11 = coopMultiplyAdd(a1, b1, acc11);
    }
    // Named values: naga 30's SPIR-V writer wants coopStore's operands (the matrix, the
    // element index, the stride) emitted before it.
    let n = p.n;
    let o00 = acc00;
    let o01 = acc01;
    let o10 = acc10;
    let o11 = acc11;
    let i00 = r0 * n + c0;
    let i01 = i00 + 16u;
    let i10 = i00 + 16u * n;
    let i11 = i10 + 16u;
    coopStoreT(o00, &c[i00], n);
    coopStoreT(o01, &c[i01], n);
    coopStoreT(o10, &c[i10], n);
    coopStoreT(o11, &c[i11], n);
}
