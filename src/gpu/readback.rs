//! Asynchronous readback: map a staging buffer and await the callback through a oneshot
//! channel. Natively the device is polled (blocking wait, no spinning); in the browser the
//! event loop delivers the callback.

use crate::error::{Error, Result};

/// Copy-free read of `size` bytes of a MAP_READ buffer that a submitted copy filled.
pub async fn read_buffer(gpu: &super::Gpu, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
    let pending = start_map(staging, size);
    finish_map(gpu, staging, size, pending, None).await
}

/// A map request in flight.
pub type PendingMap = futures_channel::oneshot::Receiver<Result<(), wgpu::BufferAsyncError>>;

/// Ask for `staging[0..size]` to be mapped once the GPU has written it.
pub fn start_map(staging: &wgpu::Buffer, size: u64) -> PendingMap {
    let (tx, rx) = futures_channel::oneshot::channel();
    staging.map_async(wgpu::MapMode::Read, 0..size, move |r| {
        let _ = tx.send(r);
    });
    rx
}

/// Await a map started by [`start_map`], copy the bytes out and unmap. Natively this waits
/// for submission `after` (or all work) without spinning; later submissions keep running.
pub async fn finish_map(
    gpu: &super::Gpu,
    staging: &wgpu::Buffer,
    size: u64,
    rx: PendingMap,
    after: Option<wgpu::SubmissionIndex>,
) -> Result<Vec<u8>> {
    #[cfg(not(target_arch = "wasm32"))]
    gpu.device
        .poll(wgpu::PollType::Wait { submission_index: after, timeout: None })
        .map_err(|e| Error::Gpu(format!("device poll failed: {e}")))?;
    #[cfg(target_arch = "wasm32")]
    let _ = (gpu, after);
    rx.await
        .map_err(|_| Error::Gpu("readback callback dropped (device lost?)".into()))?
        .map_err(|e| Error::Gpu(format!("buffer map failed: {e}")))?;
    let out = {
        let view = staging.get_mapped_range(0..size).map_err(|e| Error::Gpu(format!("mapped range: {e}")))?;
        view.to_vec()
    };
    staging.unmap();
    Ok(out)
}
