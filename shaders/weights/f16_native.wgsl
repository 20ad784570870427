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
