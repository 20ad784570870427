//! `prefetch_strategy`: how much work is put on the GPU ahead of the CPU. It decides the
//! submissions of plain decode steps (submissions in flight x steps in each) and, with
//! `token_prediction_enabled`, whether to draft and how many tokens to verify in one pass.
//!
//! - fixed: `prefetch_size` submissions of `steps_per_submit` steps; drafts of FIXED_DRAFT
//!   tokens whenever the context's end (2 tokens or more) occurred before.
//! - adaptive: steps per submission from the measured stop rate (fewer steps when
//!   generations end early, so less work is discarded after a stop), depth from the
//!   measured wait for each readback (deeper when the GPU was already done, i.e. starved),
//!   draft length from the acceptance of the last verification (+2 when all were accepted,
//!   -1 otherwise); misses in a row ask for longer matches before drafting again.
//! - context-aware: one step at a time while the stop matcher holds a possible stop-string
//!   prefix (the stop is near); drafts only where the context is repetitive or the match
//!   long, as long as the match and the repetitiveness suggest.

use super::lookup::{MAX_MATCH, Match, NgramIndex};
use crate::config::PrefetchStrategy;

/// Most tokens drafted for one verification.
pub const MAX_DRAFT: usize = 8;
/// Draft length of the fixed strategy.
pub const FIXED_DRAFT: usize = 4;
/// Deepest pipeline the adaptive strategy goes to.
pub const MAX_DEPTH: usize = 8;
/// Prior of the stop-rate estimate: as if one stop had been seen in this many tokens.
const PRIOR_TOKENS: f64 = 256.0;

/// The shape of the next plain decode submissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Submissions kept in flight.
    pub depth: usize,
    /// Decode steps per submission.
    pub steps: usize,
}

/// The strategy with what it has measured. Lives on the engine, so the adaptive strategy
/// learns the stop rate over generations.
#[derive(Clone, Debug)]
pub struct Prefetch {
    strategy: PrefetchStrategy,
    /// Configured depth (`prefetch_size`, 1 without compute/transfer overlap).
    base_depth: usize,
    /// Configured steps per submission.
    base_steps: usize,
    /// Adaptive: current depth.
    depth: usize,
    /// Adaptive: current draft length.
    draft_len: usize,
    /// Adaptive: verifications in a row that accepted nothing.
    misses: usize,
    /// Tokens generated and generations that ended before their budget (stop, cancel).
    tokens_seen: u64,
    stops_seen: u64,
}

impl Prefetch {
    pub fn new(strategy: PrefetchStrategy, depth: usize, steps: usize) -> Self {
        let depth = depth.max(1);
        Prefetch {
            strategy,
            base_depth: depth,
            base_steps: steps.max(1),
            depth,
            draft_len: FIXED_DRAFT,
            misses: 0,
            tokens_seen: 0,
            stops_seen: 0,
        }
    }

    /// Apply the engine's options; what was learned is kept while they stay the same.
    pub fn configure(&mut self, strategy: PrefetchStrategy, depth: usize, steps: usize) {
        if (strategy, depth.max(1), steps.max(1)) != (self.strategy, self.base_depth, self.base_steps) {
            *self = Prefetch::new(strategy, depth, steps);
        }
    }

    pub fn strategy(&self) -> PrefetchStrategy {
        self.strategy
    }

    /// Measured chance that a generation stops at a given token (with a weak prior).
    pub fn stop_rate(&self) -> f64 {
        (self.stops_seen as f64 + 1.0) / (self.tokens_seen as f64 + PRIOR_TOKENS)
    }

    /// The next submissions, given that `stop_pending` (text that may start a stop string
    /// is held back).
    pub fn plan(&self, stop_pending: bool) -> Plan {
        match self.strategy {
            PrefetchStrategy::Fixed => Plan { depth: self.base_depth, steps: self.base_steps },
            PrefetchStrategy::Adaptive => {
                // Work in flight is discarded at a stop: keep it within half the expected
                // run length, spread over the pipeline.
                let expected = 1.0 / self.stop_rate();
                let steps = (expected / (2.0 * self.depth as f64)).floor() as usize;
                Plan { depth: self.depth, steps: steps.clamp(1, self.base_steps) }
            }
            PrefetchStrategy::ContextAware if stop_pending => Plan { depth: 1, steps: 1 },
            PrefetchStrategy::ContextAware => Plan { depth: self.base_depth, steps: self.base_steps },
        }
    }

    /// How many tokens to draft now (None: decode plainly), at most `max`.
    pub fn draft_len(&self, ix: &NgramIndex, max: usize) -> Option<(Match, usize)> {
        let m = ix.best_match()?;
        let k = match self.strategy {
            PrefetchStrategy::Fixed => (m.len >= 2).then_some(FIXED_DRAFT),
            PrefetchStrategy::Adaptive => (m.len >= 2 + self.misses).then_some(self.draft_len),
            PrefetchStrategy::ContextAware => {
                let rep = ix.repetitiveness();
                // A long match or a repetitive stretch is likely to go on; a short match in
                // fresh text is a coincidence.
                if m.len < 3 && rep < 0.25 {
                    None
                } else {
                    let scale = 0.5 + rep;
                    Some(((m.len.min(MAX_MATCH) as f32 * scale).round() as usize).clamp(1, MAX_DRAFT))
                }
            }
        }?;
        let k = k.min(max);
        (k > 0).then_some((m, k))
    }

    /// A generation starts: misses of the last one no longer count.
    pub fn begin(&mut self) {
        self.misses = 0;
    }

    /// A verification of `proposed` drafts accepted the first `accepted`.
    pub fn on_verify(&mut self, proposed: usize, accepted: usize) {
        if self.strategy != PrefetchStrategy::Adaptive {
            return;
        }
        if accepted == proposed {
            self.draft_len = (self.draft_len + 2).min(MAX_DRAFT);
        } else {
            self.draft_len = self.draft_len.saturating_sub(1).max(1);
        }
        self.misses = if accepted == 0 { (self.misses + 1).min(MAX_MATCH - 1) } else { 0 };
    }

    /// A readback waited `wait_ms` out of `period_ms` since the one before.
    pub fn on_readback(&mut self, wait_ms: f64, period_ms: f64) {
        if self.strategy != PrefetchStrategy::Adaptive || period_ms <= 0.0 {
            return;
        }
        if wait_ms < 0.05 * period_ms {
            // The ids were there before we asked: the GPU may have run dry.
            self.depth = (self.depth + 1).min(MAX_DEPTH);
        } else if wait_ms > 0.5 * period_ms && self.depth > 2 {
            // The GPU is the bottleneck: two in flight keep it busy, more only adds work
            // to discard at a stop.
            self.depth -= 1;
        }
    }

    /// A generation of `tokens` ended; `early` when by a stop or a cancel.
    pub fn on_finish(&mut self, tokens: usize, early: bool) {
        self.tokens_seen += tokens as u64;
        self.stops_seen += u64::from(early);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repetitive() -> NgramIndex {
        NgramIndex::new(&[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3])
    }

    #[test]
    fn fixed_always_plans_the_configured_pipeline_and_draft() {
        let p = Prefetch::new(PrefetchStrategy::Fixed, 3, 4);
        assert_eq!(p.plan(true), Plan { depth: 3, steps: 4 });
        assert_eq!(p.draft_len(&repetitive(), 8).map(|d| d.1), Some(FIXED_DRAFT));
        assert_eq!(p.draft_len(&repetitive(), 2).map(|d| d.1), Some(2));
        assert_eq!(p.draft_len(&NgramIndex::new(&[1, 2, 3]), 8), None);
    }

    #[test]
    fn adaptive_submits_fewer_steps_once_generations_stop_early() {
        let mut p = Prefetch::new(PrefetchStrategy::Adaptive, 3, 8);
        assert_eq!(p.plan(false).steps, 8);
        for _ in 0..10 {
            p.on_finish(6, true);
        }
        assert!(p.plan(false).steps < 8, "{:?}", p.plan(false));
        let mut q = Prefetch::new(PrefetchStrategy::Adaptive, 3, 8);
        for _ in 0..10 {
            q.on_finish(100, false);
        }
        assert_eq!(q.plan(false).steps, 8);
    }

    #[test]
    fn adaptive_depth_follows_the_readback_wait() {
        let mut p = Prefetch::new(PrefetchStrategy::Adaptive, 3, 4);
        p.on_readback(0.0, 10.0);
        assert_eq!(p.plan(false).depth, 4, "starved GPU: deeper");
        for _ in 0..5 {
            p.on_readback(9.0, 10.0);
        }
        assert_eq!(p.plan(false).depth, 2, "GPU-bound: two in flight");
    }

    #[test]
    fn adaptive_draft_length_follows_acceptance() {
        let mut p = Prefetch::new(PrefetchStrategy::Adaptive, 3, 4);
        let ix = repetitive();
        p.on_verify(4, 4);
        assert_eq!(p.draft_len(&ix, 8).map(|d| d.1), Some(6));
        p.on_verify(6, 2);
        assert_eq!(p.draft_len(&ix, 8).map(|d| d.1), Some(5));
        // Misses in a row ask for longer matches: 3 misses need a 5-token match.
        for _ in 0..3 {
            p.on_verify(1, 0);
        }
        let m = ix.best_match().unwrap();
        assert!(m.len >= 5);
        assert!(p.draft_len(&ix, 8).is_some());
        for _ in 0..20 {
            p.on_verify(1, 0);
        }
        assert_eq!(p.draft_len(&ix, 8), None);
    }

    #[test]
    fn context_aware_goes_step_by_step_near_a_stop_and_drafts_by_repetition() {
        let p = Prefetch::new(PrefetchStrategy::ContextAware, 3, 4);
        assert_eq!(p.plan(false), Plan { depth: 3, steps: 4 });
        assert_eq!(p.plan(true), Plan { depth: 1, steps: 1 });
        // Repetitive context and an 11-token match: a long draft.
        assert_eq!(p.draft_len(&repetitive(), 8).map(|d| d.1), Some(8));
        // A 2-token coincidence in fresh text: no draft.
        let fresh = NgramIndex::new(&[1, 2, 9, 8, 7, 6, 5, 4, 3, 1, 2]);
        assert_eq!(fresh.best_match().map(|m| m.len), Some(2));
        assert_eq!(p.draft_len(&fresh, 8), None);
    }
}
