//! Opening a model from a path (GGUF file or Hugging Face folder) or from bytes.

use crate::error::{Error, Result};
use crate::model::ModelSource;

/// Open a GGUF file or a Hugging Face model folder.
pub fn open_path(path: &std::path::Path) -> Result<Box<dyn ModelSource>> {
    Err(Error::model(format!("cannot open {}: not implemented yet", path.display())))
}
