// Weight prelude: f16 matrices, row-major [rows, k], read natively where the adapter has
// shader-f16 (same buffer layout as f16.wgsl: two halves per u32, k ascending).
enable f16;

@group(0) @binding(1) var<storage, read> w: array<vec4<f16>>;

fn load_w4(row: u32, k4: u32, k4_per_row: u32) -> vec4<f32> {
    return vec4<f32>(w[row * k4_per_row + k4]);
}

// Weights 8*k8..8*k8+7 of a row (k a multiple of 8).
fn load_w8(row: u32, k8: u32, k8_per_row: u32) -> mat2x4<f32> {
    return mat2x4<f32>(load_w4(row, 2u * k8, 2u * k8_per_row), load_w4(row, 2u * k8 + 1u, 2u * k8_per_row));
}

// Weights 32*g..32*g+31 of a row dotted with the inputs xa | xb (columns of 4 consecutive k).
fn dot_w32(row: u32, g: u32, k4_per_row: u32, xa: mat4x4<f32>, xb: mat4x4<f32>, xsum: f32) -> f32 {
    let f = row * k4_per_row + 8u * g;
    return dot(vec4<f32>(w[f]), xa[0]) + dot(vec4<f32>(w[f + 1u]), xa[1]) + dot(vec4<f32>(w[f + 2u]), xa[2])
        + dot(vec4<f32>(w[f + 3u]), xa[3]) + dot(vec4<f32>(w[f + 4u]), xb[0]) + dot(vec4<f32>(w[f + 5u]), xb[1])
        + dot(vec4<f32>(w[f + 6u]), xb[2]) + dot(vec4<f32>(w[f + 7u]), xb[3]);
}
