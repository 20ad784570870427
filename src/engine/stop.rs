//! Stop strings over a stream of text pieces: text that could still be the start of a
//! stop string is held back until it is known not to be one.

/// Matches stop strings across piece boundaries.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What to do with a piece.
#[derive(Debug, PartialEq)]
pub struct StopStep {
    /// Text safe to emit now.
    pub emit: String,
    /// A stop string was found; nothing after `emit` may be emitted.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    /// Feed a piece; returns what may be emitted.
    pub fn push(&mut self, piece: &str) -> StopStep {
        self.held.push_str(piece);
        if self.stops.is_empty() {
            return StopStep { emit: std::mem::take(&mut self.held), stopped: false };
        }
        // Earliest full match wins.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let emit = self.held[..at].to_string();
            self.held.clear();
            return StopStep { emit, stopped: true };
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.held.char_indices() {
                let suffix = &self.held[i..];
                if s.starts_with(suffix) {
                    keep = keep.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopStep { emit, stopped: false }
    }

    /// Text that may start a stop string is held back: a stop may be near.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// End of generation: whatever is held is plain text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_split_across_pieces_is_never_emitted() {
        let mut m = StopMatcher::new(&["\n\nUser:".to_string()]);
        let mut out = String::new();
        let mut stopped = false;
        for p in ["Hello", " there.", "\n", "\nUs", "er:", " more"] {
            let s = m.push(p);
            out.push_str(&s.emit);
            if s.stopped {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        assert_eq!(out, "Hello there.");
    }

    #[test]
    fn held_text_that_does_not_match_comes_out() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("the E").emit, "the ");
        assert_eq!(m.push("lephant").emit, "Elephant");
        assert_eq!(m.push(" E").emit, " ");
        assert_eq!(m.finish(), "E");
    }
}
