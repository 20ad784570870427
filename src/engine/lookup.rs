//! Prompt lookup: draft the next tokens by finding the end of the context (prompt plus
//! generated ids) earlier in the context and copying what followed it there. Costs a few
//! hash lookups per token on the CPU; needs no draft model.

use std::collections::{HashMap, VecDeque};

/// Longest n-gram looked up by hash; matches are then extended backwards by comparison.
pub const MAX_NGRAM: usize = 4;
/// Longest match length reported (the backward extension stops there).
pub const MAX_MATCH: usize = 16;
/// Recent tokens over which the repetitiveness is measured.
const WINDOW: usize = 32;

/// An n-gram padded with `u32::MAX` (never a token id) to a fixed-size key.
type Key = [u32; MAX_NGRAM];

fn key(gram: &[u32]) -> Key {
    let mut k = [u32::MAX; MAX_NGRAM];
    k[..gram.len()].copy_from_slice(gram);
    k
}

/// The latest earlier occurrence of the context's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// Index of the token that followed the occurrence: the first drafted token.
    pub at: usize,
    /// Tokens that agree backwards from the end (1..=MAX_MATCH).
    pub len: usize,
}

/// The context with an index of every n-gram (n <= MAX_NGRAM) to what followed its
/// latest occurrence. Grows one token at a time as ids are kept.
#[derive(Debug, Default)]
pub struct NgramIndex {
    context: Vec<u32>,
    /// n-gram -> index of the token after its latest occurrence that has a follower.
    follow: HashMap<Key, usize>,
    /// For each of the last WINDOW tokens: did the lookup predict it (match of 2 or more)?
    predicted: VecDeque<bool>,
}

impl NgramIndex {
    /// An index over `ids` (the prompt).
    pub fn new(ids: &[u32]) -> Self {
        let mut ix = NgramIndex { context: Vec::with_capacity(ids.len() + 256), ..Default::default() };
        for &id in ids {
            ix.push(id);
        }
        ix
    }

    /// The context so far.
    pub fn context(&self) -> &[u32] {
        &self.context
    }

    /// Append a kept token.
    pub fn push(&mut self, id: u32) {
        let guess = self.best_match().filter(|m| m.len >= 2).map(|m| self.context[m.at]);
        if self.predicted.len() == WINDOW {
            self.predicted.pop_front();
        }
        self.predicted.push_back(guess == Some(id));
        self.context.push(id);
        // Every n-gram that ends just before `id` now has a follower: `id`.
        let at = self.context.len() - 1;
        for n in 1..=MAX_NGRAM.min(at) {
            self.follow.insert(key(&self.context[at - n..at]), at);
        }
    }

    /// The longest n-gram at the end of the context that occurred before, extended
    /// backwards to at most MAX_MATCH tokens; its latest occurrence wins.
    pub fn best_match(&self) -> Option<Match> {
        let l = self.context.len();
        for n in (1..=MAX_NGRAM.min(l)).rev() {
            let Some(&at) = self.follow.get(&key(&self.context[l - n..])) else {
                continue;
            };
            let mut len = n;
            while len < MAX_MATCH && len < at && self.context[at - 1 - len] == self.context[l - 1 - len] {
                len += 1;
            }
            return Some(Match { at, len });
        }
        None
    }

    /// Up to `k` tokens that followed the match. A match that runs into the end of the
    /// context continues into the draft itself (a repeating period keeps repeating).
    pub fn draft(&self, m: Match, k: usize) -> Vec<u32> {
        let l = self.context.len();
        let mut out = Vec::with_capacity(k);
        for i in 0..k {
            let idx = m.at + i;
            let id = if idx < l { self.context[idx] } else { out[idx - l] };
            out.push(id);
        }
        out
    }

    /// Share of the last (up to 32) tokens that the lookup predicted from a match of 2 or
    /// more tokens before they came: how repetitive the text is right now (0..=1).
    pub fn repetitiveness(&self) -> f32 {
        if self.predicted.is_empty() {
            return 0.0;
        }
        self.predicted.iter().filter(|&&p| p).count() as f32 / self.predicted.len() as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_latest_match_drafts_what_followed_it() {
        // "1 2 3 4 9 | 1 2 3 5 6 | 2 3" : "2 3" was followed by 4 and then by 5; the latest wins.
        let ix = NgramIndex::new(&[1, 2, 3, 4, 9, 1, 2, 3, 5, 6, 2, 3]);
        let m = ix.best_match().unwrap();
        assert_eq!(m, Match { at: 8, len: 2 });
        assert_eq!(ix.draft(m, 3), vec![5, 6, 2]);
    }

    #[test]
    fn matches_extend_backwards_past_the_hashed_ngram() {
        let ix = NgramIndex::new(&[7, 8, 1, 2, 3, 4, 5, 6, 0, 7, 8, 1, 2, 3, 4, 5]);
        let m = ix.best_match().unwrap();
        assert_eq!(m.at, 7);
        assert_eq!(m.len, 7, "7 8 1 2 3 4 5 agree backwards");
        assert_eq!(ix.draft(m, 2), vec![6, 0]);
    }

    #[test]
    fn a_period_that_reaches_the_end_keeps_repeating_in_the_draft() {
        let ix = NgramIndex::new(&[5, 6, 5, 6, 5]);
        let m = ix.best_match().unwrap();
        assert_eq!(ix.draft(m, 5), vec![6, 5, 6, 5, 6]);
    }

    #[test]
    fn no_match_without_an_earlier_occurrence() {
        let ix = NgramIndex::new(&[1, 2, 3, 4]);
        assert_eq!(ix.best_match(), None);
        assert_eq!(NgramIndex::new(&[]).best_match(), None);
        assert_eq!(ix.repetitiveness(), 0.0);
    }

    #[test]
    fn pushing_ids_updates_matches_and_repetitiveness() {
        let mut ix = NgramIndex::new(&[10, 11, 12, 13]);
        for id in [10, 11, 12, 13, 10, 11, 12, 13] {
            ix.push(id);
        }
        assert_eq!(ix.context().len(), 12);
        let m = ix.best_match().unwrap();
        assert_eq!(ix.draft(m, 2), vec![10, 11]);
        // From the third repeated token on, each one was predicted (a 2-token match).
        assert_eq!(ix.repetitiveness(), 0.5, "6 of the 12 tokens were predicted");
        let fresh = NgramIndex::new(&(0..40).collect::<Vec<u32>>());
        assert_eq!(fresh.repetitiveness(), 0.0);
    }
}
