// Weight prelude addition for formats without a `dot_w8` of their own (all but int4): 8
// weights of a row from `load_w8` dotted with the inputs xa | xb (their sum is unused).
fn dot_w8(row: u32, k8: u32, k8_per_row: u32, xa: vec4<f32>, xb: vec4<f32>, xsum: f32) -> f32 {
    let w8 = load_w8(row, k8, k8_per_row);
    return dot(w8[0], xa) + dot(w8[1], xb);
}
