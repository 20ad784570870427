// Weight prelude addition for formats without a `dot_w32` of their own (int3, int2): 32
// weights of a row dotted with the inputs xa | xb from four `load_w8` calls (k a multiple
// of 8, so k / 8 = k4_per_row / 2).
fn dot_w32(row: u32, g: u32, k4_per_row: u32, xa: mat4x4<f32>, xb: mat4x4<f32>, xsum: f32) -> f32 {
    let k8n = k4_per_row / 2u;
    let w0 = load_w8(row, 4u * g, k8n);
    let w1 = load_w8(row, 4u * g + 1u, k8n);
    let w2 = load_w8(row, 4u * g + 2u, k8n);
    let w3 = load_w8(row, 4u * g + 3u, k8n);
    return dot(w0[0], xa[0]) + dot(w0[1], xa[1]) + dot(w1[0], xa[2]) + dot(w1[1], xa[3]) + dot(w2[0], xb[0])
        + dot(w2[1], xb[1]) + dot(w3[0], xb[2]) + dot(w3[1], xb[3]);
}
