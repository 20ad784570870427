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
    /// Head size of the attention partials a `combine_split` matvec merges (0 otherwise).
    pub head_dim: u32,
}

/// Uniform mirrored by `QkvParams` in attention_qkv.wgsl: the QKV matrix's k and rows, the
/// norm's epsilon.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct QkvParams {
    pub k: u32,
    pub rows: u32,
    pub eps: f32,
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

/// Uniform mirrored by `KvParams` in kv_cache.wgsl (the prelude of rope_kv.wgsl and
/// attention.wgsl): one per layer; the KV layout is described there and in `model::kv_cache`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct KvParams {
    pub n_heads: u32,
    pub n_kv: u32,
    pub hd: u32,
    pub layer: u32,
    pub layers: u32,
    pub scale: f32,
    /// First positions every query sees (attention sinks).
    pub sinks: u32,
    /// Most recent positions (besides the sinks) a query sees.
    pub window: u32,
    /// Rows of the main store's position ring (sinks included).
    pub main_rows: u32,
    /// u32 words before the main store (the ring's size).
    pub main_off: u32,
    /// u32 words per (row, layer) of the main store.
    pub main_row: u32,
    /// Rows of the recent ring (progressive; 0 = none).
    pub ring_rows: u32,
    /// Positions newer than `latest - ring_recent` are read from the ring.
    pub ring_recent: u32,
    /// u32 words per (row, layer) of the ring.
    pub ring_row: u32,
    /// Positions covered by the first part of the RoPE table.
    pub rope_rows: u32,
    /// Keys per (token, head) in the attention scratch.
    pub score_stride: u32,
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
