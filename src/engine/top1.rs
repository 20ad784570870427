//! Teacher-forced top-1 predictions: how often a precision agrees with another's greedy
//! choices (the quantisation tests' agreement figure).

use super::Engine;
use crate::error::Result;
use crate::gpu::{finish_map, start_map};

impl Engine {
    /// The argmax id after each prefix of `ids`: `[ids.len()]`, entry `i` predicting
    /// `ids[i + 1]` (one prefill pass over the sequence, logits of every row read back).
    pub async fn top1_each(&mut self, ids: &[u32]) -> Result<Vec<u32>> {
        self.check_prompt(ids, 0)?;
        self.model.write_tokens(&self.gpu, 0, ids);
        let chunk = self.model.options.chunk;
        let vocab = self.model.config.vocab_size;
        let mut out = Vec::with_capacity(ids.len());
        for p0 in (0..ids.len()).step_by(chunk) {
            let len = (ids.len() - p0).min(chunk);
            self.model.write_state(&self.gpu, p0 as u32, len as u32);
            let mut enc = self.gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                self.model.encode_prefill(&mut pass, len as u32, false, true);
            }
            let bytes_len = (len * vocab * 4) as u64;
            enc.copy_buffer_to_buffer(&self.model.logits, 0, &self.logits_staging, 0, bytes_len);
            let idx = self.gpu.queue.submit([enc.finish()]);
            let rx = start_map(&self.logits_staging, bytes_len);
            let bytes = finish_map(&self.gpu, &self.logits_staging, bytes_len, rx, Some(idx)).await?;
            let logits: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
            for row in logits.chunks_exact(vocab) {
                let best = (0..vocab).fold(0, |b, i| if row[i] > row[b] { i } else { b });
                out.push(best as u32);
            }
        }
        Ok(out)
    }
}
