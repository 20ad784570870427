//! The GPU layer: device acquisition with feature detection, typed kernel keys with a
//! pipeline cache, buffer helpers and asynchronous readback.

mod device;
mod kernels;
mod kv;
pub mod params;
mod readback;
mod scope;

pub use device::{Gpu, GpuCaps};
pub use kernels::{Kernel, KernelKey, Kernels, MATMUL_TILE_ROWS, MatMode, Q8, ShaderChecks, WeightFormat, matmul_tile};
pub use kv::{KvFormat, KvFormats, decode_row, encode_row};
pub use readback::{PendingMap, finish_map, read_buffer, start_map};
pub use scope::{Scopes, in_generation};

/// Round `n` up to a multiple of `m`.
pub fn round_up(n: u64, m: u64) -> u64 {
    n.div_ceil(m) * m
}
