// Weight prelude: f32 matrices, row-major [rows, k], read as vec4.
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;

fn load_w4(row: u32, k4: u32, k4_per_row: u32) -> vec4<f32> {
    return w[row * k4_per_row + k4];
}
