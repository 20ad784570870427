// Weight prelude: f16 matrices stored packed, two halves per u32, row-major [rows, k].
// Unpacked in the shader so that adapters without shader-f16 run it.
@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;

fn load_w4(row: u32, k4: u32, k4_per_row: u32) -> vec4<f32> {
    let p = w[row * k4_per_row + k4];
    return vec4<f32>(unpack2x16float(p.x), unpack2x16float(p.y));
}
