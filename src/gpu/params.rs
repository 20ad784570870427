//! Kernel parameter structs, one per WGSL uniform struct of the same name.

/// Uniform mirrored by `MatParams` in matvec.wgsl / matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MatParams {
    pub n: u32,
    pub k: u32,
    pub x_stride: u32,
    pub y_stride: u32,
    pub eps: f32,
    pub last_row: u32,
    /// First output row this dispatch writes (row shards).
    pub y_off: u32,
    pub _pad: u32,
}

/// Uniform mirrored by `EmbedParams` in embed.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EmbedParams {
    pub d: u32,
    pub vocab: u32,
    /// Rows `row0 .. row0 + rows` of the table are in the bound shard.
    pub row0: u32,
    pub rows: u32,
}

/// Uniform mirrored by `RopeParams` (rope_kv.wgsl) and `AttnParams` (attention.wgsl).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct HeadParams {
    pub n_heads: u32,
    pub n_kv: u32,
    pub hd: u32,
    pub layer_off: u32,
    pub ctx: u32,
    pub scale: f32,
    pub _pad: [u32; 2],
}

/// Uniform mirrored by `SampleParams` in sample.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SampleParams {
    pub vocab: u32,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub rep_penalty: f32,
    pub rep_window: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub last_row: u32,
    pub _pad: [u32; 3],
}
