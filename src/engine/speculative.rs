//! Token prediction (`token_prediction_enabled`): drafts from prompt lookup are verified in
//! one batched forward pass, and the accepted prefix plus the model's own next token are
//! kept.
//!
//! The pass runs the rows `[last kept id, d1 .. dk]` at positions `L-1 .. L-1+k` through
//! the prefill kernels with every row's logits, and the every-row sampler writes for row
//! `r` the id at index `L + r` — exactly what a plain decode step at that position would
//! write, if `d1 .. dr` were what decoding produced before it:
//! - same logits: row `r` attends to the kept context plus `d1 .. dr` (causal mask);
//! - same repetition penalty: its window reads the token buffer, which holds `d1 .. dr`;
//! - same random number: the sampler's RNG is keyed by (seed, index written), not by how
//!   many draws came before.
//!
//! With a one-hot draft (the lookup proposes a token, not a distribution), speculative
//! sampling's rule "accept d with probability min(1, p(d) / q(d)), else resample from the
//! residual" becomes: accept while the target's sample equals the draft; the first sample
//! that differs is the correction (its residual is p without d, and a sample of p that is
//! not d is distributed as exactly that). Here the samples are the ones plain decoding
//! would draw with the same seed, so the output is identical to plain decoding, not only
//! equal in distribution; at temperature 0 it is the greedy output.
//! (Up to rounding: the prefill kernels sum in another order than the decode kernels, so
//! logits differ by float rounding; an exact tie could break differently.)
//!
//! Rollback: K/V are indexed by position. Rows past the accepted prefix wrote entries at
//! positions the next step overwrites before anything attends to them, and ids past the
//! correction are overwritten likewise; only the state (pos, n_tokens) is reset.

use super::Engine;
use crate::error::Result;
use crate::gpu::{finish_map, start_map};

/// How many drafts lead the samples: `sampled[i]` is the model's id where `draft[i]` was
/// proposed (`sampled` has one more entry: the id after the last draft).
pub fn accepted_prefix(draft: &[u32], sampled: &[u32]) -> usize {
    draft.iter().zip(sampled).take_while(|(d, s)| d == s).count()
}

impl Engine {
    /// Most drafts one verification may carry for a sequence of `len` ids with `budget`
    /// tokens still to generate (the pass yields up to drafts + 1).
    pub(super) fn max_drafts(&self, len: usize, budget: usize) -> usize {
        let slot = self.id_staging.first().map_or(0, |b| (b.size() / 4) as usize);
        let ctx = self.model.kv().plan.max_positions;
        budget
            .saturating_sub(1)
            .min(self.model.options.chunk.saturating_sub(1))
            .min(ctx.saturating_sub(len))
            .min(slot.saturating_sub(1))
            .min(super::prefetch::MAX_DRAFT)
    }

    /// Run the rows `[ids[len - 1], draft..]` of a sequence of `len` ids in one pass,
    /// sampling every row; returns the `draft.len() + 1` sampled ids (the id the model
    /// puts at `len + r` for each row `r`). The caller resets the state to the kept length.
    /// Nothing else may be in flight (uses staging slot 0).
    pub(super) async fn verify_rows(&mut self, len: usize, draft: &[u32]) -> Result<Vec<u32>> {
        let n = draft.len() + 1;
        let bytes = n as u64 * 4;
        self.model.write_tokens(&self.gpu, len, draft);
        self.model.write_state(&self.gpu, (len - 1) as u32, n as u32);
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        // The KV cache grows before the pass; rolling back after it is valid (model::kv_cache).
        self.reserve_kv(&mut enc, len + draft.len() - 1, None);
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            self.model.encode_rows(&mut pass, n as u32);
        }
        enc.copy_buffer_to_buffer(&self.model.lane().tokens, len as u64 * 4, &self.id_staging[0], 0, bytes);
        let index = self.gpu.queue.submit([enc.finish()]);
        let rx = start_map(&self.id_staging[0], bytes);
        let got = finish_map(&self.gpu, &self.id_staging[0], bytes, rx, Some(index)).await?;
        Ok(bytemuck::pod_collect_to_vec(&got))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accepted_prefix_ends_at_the_first_disagreement() {
        assert_eq!(accepted_prefix(&[5, 6, 7], &[5, 6, 7, 8]), 3);
        assert_eq!(accepted_prefix(&[5, 6, 7], &[5, 9, 7, 8]), 1);
        assert_eq!(accepted_prefix(&[5, 6, 7], &[4, 6, 7, 8]), 0);
        assert_eq!(accepted_prefix(&[], &[4]), 0);
    }
}
