//! Load-time quantisation on the GPU (`shaders/quantize.wgsl`): f32 rows go up in chunks
//! through one reused source buffer, and the kernel writes packed codes and scales straight
//! into the matrix's buffers. `quant::fit` + `quant::gpu_formats::Packer` is the CPU
//! reference it is tested against.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel, KernelKey, Kernels, WeightFormat};
use crate::quant::fit::Quantizer;
use crate::quant::gpu_formats::{GROUP, bits, group};

/// Weights per chunk (4 MiB of f32): bounds the source buffer and the workgroup count.
const CHUNK: usize = 1 << 20;
/// Threads per workgroup of the quantize kernel.
const WG: u32 = 64;

/// The uniform of `quantize.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct QuantParams {
    units: u32,
    w_off: u32,
    s_off: u32,
    cols: u32,
    weighted: u32,
    _pad: [u32; 3],
}

/// Weights per kernel thread: one group, or two groups of 32 where a group has one f16 scale
/// (int8, int4 symmetric: one scale word).
pub fn unit(format: WeightFormat) -> usize {
    if format.one_scale_per_group() { 2 * GROUP } else { group(format) }
}

/// Scale words per `n` weights of `format` (n whole units).
pub fn scale_words(format: WeightFormat, n: usize) -> usize {
    n / unit(format)
}

/// Words of codes per `n` weights of `format`.
pub fn code_words(format: WeightFormat, n: usize) -> usize {
    n * bits(format) as usize / 32
}

/// A GPU quantiser for one model load: one source buffer and one uniform, reused.
pub struct GpuQuantizer<'a> {
    gpu: &'a Gpu,
    kernels: &'a Kernels,
    pub quantizer: Quantizer,
    src: wgpu::Buffer,
    params: wgpu::Buffer,
}

impl<'a> GpuQuantizer<'a> {
    pub fn new(gpu: &'a Gpu, kernels: &'a Kernels, quantizer: Quantizer) -> Self {
        let src = gpu.storage("quantize source", (CHUNK * 4) as u64);
        let params = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("quantize params"),
            size: std::mem::size_of::<QuantParams>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        GpuQuantizer { gpu, kernels, quantizer, src, params }
    }

    /// Quantise `x` (`[rows, cols]`, rows of whole units of `format`) into `words` from word
    /// `w_off` and `scales` from word `s_off`, with error weights `imp` (`[cols]`, see
    /// `quant::fit`) where given, then wait for the GPU (so the staging of one matrix at most
    /// is alive, and the time measured includes the work).
    #[allow(clippy::too_many_arguments)]
    pub fn quantize(
        &self,
        format: WeightFormat,
        x: &[f32],
        cols: usize,
        imp: Option<&[f32]>,
        words: &wgpu::Buffer,
        w_off: usize,
        scales: &wgpu::Buffer,
        s_off: usize,
    ) -> Result<()> {
        let u = unit(format);
        if cols == 0 || !cols.is_multiple_of(u) || !x.len().is_multiple_of(cols) || imp.is_some_and(|c| c.len() != cols)
        {
            return Err(Error::internal(format!("{} weights are not rows of {cols} in units of {u}", x.len())));
        }
        // Unweighted: the kernel ignores binding 4, but WebGPU needs a buffer bound there.
        let imp_buf = match imp {
            Some(c) => self.gpu.storage_init("quantize importance", bytemuck::cast_slice(c)),
            None => self.gpu.storage("quantize importance (unused)", 16),
        };
        let key = KernelKey { kernel: Kernel::Quantize { format, quantizer: self.quantizer }, wg: WG, rows: 1, tpr: 1 };
        let pipeline = self.kernels.get(&self.gpu.device, key)?;
        let layout = pipeline.get_bind_group_layout(0);
        let bind = self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("quantize"),
            layout: &layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: self.params.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: self.src.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: words.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: scales.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 4, resource: imp_buf.as_entire_binding() },
            ],
        });
        let to_u32 = |v: usize| u32::try_from(v).map_err(|_| Error::model("matrix too large to quantise"));
        // Whole rows per chunk, so that each chunk starts at column 0.
        let per_chunk = (CHUNK / cols).max(1) * cols;
        let mut last = None;
        for (i, c) in x.chunks(per_chunk).enumerate() {
            let done = i * per_chunk;
            let units = c.len() / u;
            let p = QuantParams {
                units: to_u32(units)?,
                w_off: to_u32(w_off + code_words(format, done))?,
                s_off: to_u32(s_off + scale_words(format, done))?,
                cols: to_u32(cols)?,
                weighted: u32::from(imp.is_some()),
                _pad: [0; 3],
            };
            // Queue writes land before the next submission and after the previous one, so
            // the source buffer and uniform can be reused chunk after chunk.
            self.gpu.queue.write_buffer(&self.src, 0, bytemuck::cast_slice(c));
            self.gpu.queue.write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(to_u32(units.div_ceil(WG as usize))?, 1, 1);
            }
            last = Some(self.gpu.queue.submit([enc.finish()]));
        }
        if let Some(idx) = last {
            self.gpu
                .device
                .poll(wgpu::PollType::Wait { submission_index: Some(idx), timeout: None })
                .map_err(|e| Error::Gpu(format!("poll: {e}")))?;
        }
        Ok(())
    }
}
