//! Turning sampled ids into the text a caller sees: end-of-sequence, streaming
//! detokenisation, stop strings held back across pieces, the token callback. Shared by the
//! single-sequence loop and the batched one.

use super::{FinishReason, StopMatcher, TokenEvent};
use crate::error::Result;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// One generation's output so far.
pub(crate) struct Emitter {
    pub ids: Vec<u32>,
    pub text: String,
    detok: StreamDecoder,
    stops: StopMatcher,
    stopped_by_string: bool,
    ignore_eos: bool,
}

impl Emitter {
    pub fn new(stop: &[String], ignore_eos: bool) -> Emitter {
        Emitter {
            ids: Vec::new(),
            text: String::new(),
            detok: StreamDecoder::new(),
            stops: StopMatcher::new(stop),
            stopped_by_string: false,
            ignore_eos,
        }
    }

    /// Whether text is held back as a possible stop-string prefix.
    pub fn holding(&self) -> bool {
        self.stops.holding()
    }

    /// Deliver one sampled id. Returns the finish reason when this id ends the generation:
    /// end-of-sequence (not kept), a completed stop string, or the callback returning false.
    pub fn push(
        &mut self,
        tok: &Tokenizer,
        id: u32,
        on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool,
    ) -> Result<Option<FinishReason>> {
        if !self.ignore_eos && tok.eos_ids().contains(&id) {
            return Ok(Some(FinishReason::Stop));
        }
        self.ids.push(id);
        let piece = self.detok.push(tok, id)?;
        let step = self.stops.push(&piece);
        self.text.push_str(&step.emit);
        let keep_going = on_token(TokenEvent { id: Some(id), text: &step.emit, tokenizer: tok });
        if step.stopped {
            self.stopped_by_string = true;
            return Ok(Some(FinishReason::Stop));
        }
        Ok((!keep_going).then_some(FinishReason::Cancelled))
    }

    /// At the end: the text still held back (an incomplete character, a stop-string prefix
    /// that never completed) goes out as one last event without an id.
    pub fn flush(&mut self, tok: &Tokenizer, on_token: &mut dyn FnMut(TokenEvent<'_>) -> bool) -> Result<()> {
        if self.stopped_by_string {
            return Ok(());
        }
        let tail = self.detok.finish(tok)?;
        let step = self.stops.push(&tail);
        let mut rest = step.emit;
        if !step.stopped {
            rest.push_str(&self.stops.finish());
        }
        if !rest.is_empty() {
            self.text.push_str(&rest);
            on_token(TokenEvent { id: None, text: &rest, tokenizer: tok });
        }
        Ok(())
    }
}
