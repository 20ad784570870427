//! Opening a model from a path (GGUF file or Hugging Face folder) or from bytes.

use crate::error::{Error, Result};
use crate::model::ModelSource;
use crate::model::gguf::{GGUF_MAGIC, GgufSource};
#[cfg(not(target_arch = "wasm32"))]
use crate::model::safetensors::HfSource;

/// Open a GGUF file (memory-mapped) or a Hugging Face model folder.
#[cfg(not(target_arch = "wasm32"))]
pub fn open_path(path: &std::path::Path) -> Result<Box<dyn ModelSource>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::model(format!("cannot open {}: {e}", path.display())))?;
    if meta.is_dir() {
        return Ok(Box::new(HfSource::open_dir(path)?));
    }
    use std::io::Read;
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| {
            let mut got = 0;
            while got < 4 {
                match f.read(&mut magic[got..])? {
                    0 => break,
                    k => got += k,
                }
            }
            Ok(got)
        })
        .map_err(|e| Error::model(format!("cannot read {}: {e}", path.display())))?;
    if n == 4 && magic == GGUF_MAGIC {
        return Ok(Box::new(GgufSource::open(path)?));
    }
    Err(Error::model(format!(
        "{} is neither a GGUF file (it starts with {:02x?}, not \"GGUF\") nor a Hugging Face \
         model folder",
        path.display(),
        &magic[..n]
    )))
}

/// In the browser there are no paths: use [`open_bytes`] or
/// [`HfSource::from_files`](crate::model::safetensors::HfSource::from_files).
#[cfg(target_arch = "wasm32")]
pub fn open_path(path: &std::path::Path) -> Result<Box<dyn ModelSource>> {
    Err(Error::model(format!("cannot open {}: no file system in the browser (load the bytes instead)", path.display())))
}

/// Open a model from bytes in memory: a GGUF file. (A Hugging Face folder in memory is
/// [`HfSource::from_files`](crate::model::safetensors::HfSource::from_files).)
pub fn open_bytes(bytes: Vec<u8>) -> Result<Box<dyn ModelSource>> {
    if bytes.get(..4) == Some(&GGUF_MAGIC[..]) {
        return Ok(Box::new(GgufSource::from_bytes(bytes)?));
    }
    Err(Error::model(format!(
        "model bytes are not a GGUF file (they start with {:02x?}, not \"GGUF\")",
        bytes.get(..4.min(bytes.len())).unwrap_or_default()
    )))
}
