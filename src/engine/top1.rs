//! Teacher-forced top-1 predictions: how often a precision agrees with another's greedy
//! choices (the quantisation tests' agreement figure).

use super::Engine;
use crate::error::Result;

impl Engine {
    /// The argmax id after each prefix of `ids`: `[ids.len()]`, entry `i` predicting
    /// `ids[i + 1]` (one prefill pass over the sequence, logits of every row read back).
    pub async fn top1_each(&mut self, ids: &[u32]) -> Result<Vec<u32>> {
        let vocab = self.model.config.vocab_size;
        let mut out = Vec::with_capacity(ids.len());
        self.each_logits_chunk(ids, &mut |_, logits| {
            for row in logits.chunks_exact(vocab) {
                let best = (0..vocab).fold(0, |b, i| if row[i] > row[b] { i } else { b });
                out.push(best as u32);
            }
        })
        .await?;
        Ok(out)
    }
}
