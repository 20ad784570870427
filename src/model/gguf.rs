//! GGUF (v2 and v3) reader over `&[u8]`, and [`GgufSource`], a
//! [`ModelSource`](crate::model::ModelSource) over a GGUF file whose tensors are borrowed
//! from the file bytes without copying.
//!
//! Nothing in the header is trusted: every count and length is checked against the bytes
//! that remain before anything is allocated, every tensor's byte range is checked against
//! the file, and every weight the engine needs is checked (name, shape, format) at load.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::model::HostFormat;
use crate::quant::ggml;

mod source;
pub use source::{GgufSource, config_from_gguf, tokenizer_data_from_gguf};

/// `GGUF` read as a little-endian u32.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// GGML's maximum number of dimensions.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays inside arrays we accept.
const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value type (GGUF `gguf_metadata_value_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufType {
    /// The type of a type id, `None` for an unknown id.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgufType::*;
        [U8, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64].into_iter().find(|t| *t as u32 == id)
    }

    /// The fewest bytes one value of this type takes in a file.
    fn min_size(self) -> usize {
        match self {
            GgufType::U8 | GgufType::I8 | GgufType::Bool => 1,
            GgufType::U16 | GgufType::I16 => 2,
            GgufType::U32 | GgufType::I32 | GgufType::F32 => 4,
            GgufType::U64 | GgufType::I64 | GgufType::F64 | GgufType::String => 8,
            GgufType::Array => 12,
        }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements all of `elem_type` (arrays may nest).
    Array(GgufType, Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// The value's type.
    pub fn ty(&self) -> GgufType {
        match self {
            GgufValue::U8(_) => GgufType::U8,
            GgufValue::I8(_) => GgufType::I8,
            GgufValue::U16(_) => GgufType::U16,
            GgufValue::I16(_) => GgufType::I16,
            GgufValue::U32(_) => GgufType::U32,
            GgufValue::I32(_) => GgufType::I32,
            GgufValue::F32(_) => GgufType::F32,
            GgufValue::Bool(_) => GgufType::Bool,
            GgufValue::String(_) => GgufType::String,
            GgufValue::Array(..) => GgufType::Array,
            GgufValue::U64(_) => GgufType::U64,
            GgufValue::I64(_) => GgufType::I64,
            GgufValue::F64(_) => GgufType::F64,
        }
    }

    /// Any integer type as i128 (so that every integer fits).
    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// A non-negative integer of any integer type.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    /// An integer of any integer type that fits i64.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    /// A float or an integer as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            GgufValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    pub name: String,
    /// GGUF dimensions, `ne[0]` contiguous.
    pub ne: Vec<u64>,
    /// Shape in PyTorch order (`ne` reversed).
    pub shape: Vec<usize>,
    pub ggml_type: u32,
    /// `None` for a GGML type this crate does not read.
    pub format: Option<HostFormat>,
    /// Offset relative to the data section, as stored.
    pub offset: u64,
    /// Absolute byte range in the file (empty for unsupported types).
    pub range: std::ops::Range<usize>,
}

/// A parsed GGUF header: metadata, tensor directory and data-section offset.
#[derive(Clone, Debug)]
pub struct GgufFile {
    pub version: u32,
    pub alignment: usize,
    /// Absolute offset of the data section.
    pub data_offset: usize,
    /// Metadata in file order.
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<GgufTensorInfo>,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.b.len());
        match end.and_then(|e| self.b.get(self.pos..e).map(|s| (e, s))) {
            Some((e, s)) => {
                self.pos = e;
                Ok(s)
            }
            None => Err(Error::model(format!(
                "GGUF truncated: {what} needs {n} bytes at offset {}, only {} remain",
                self.pos,
                self.remaining()
            ))),
        }
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    /// A count of items of at least `min_size` bytes each, checked against what remains.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let cap = self.remaining() / min_size.max(1);
        match usize::try_from(n) {
            Ok(n) if n <= cap => Ok(n),
            _ => Err(Error::model(format!(
                "GGUF {what} at offset {at} is {n}, but the {} bytes that remain hold at most {cap}",
                self.remaining()
            ))),
        }
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, &format!("length of {what}"))?;
        let s = self.take(n, what)?;
        Ok(String::from_utf8_lossy(s).into_owned())
    }

    fn value(&mut self, ty: GgufType, depth: usize, key: &str) -> Result<GgufValue> {
        Ok(match ty {
            GgufType::U8 => GgufValue::U8(u8::from_le_bytes(self.arr(key)?)),
            GgufType::I8 => GgufValue::I8(i8::from_le_bytes(self.arr(key)?)),
            GgufType::U16 => GgufValue::U16(u16::from_le_bytes(self.arr(key)?)),
            GgufType::I16 => GgufValue::I16(i16::from_le_bytes(self.arr(key)?)),
            GgufType::U32 => GgufValue::U32(self.u32(key)?),
            GgufType::I32 => GgufValue::I32(i32::from_le_bytes(self.arr(key)?)),
            GgufType::F32 => GgufValue::F32(f32::from_le_bytes(self.arr(key)?)),
            GgufType::Bool => GgufValue::Bool(u8::from_le_bytes(self.arr(key)?) != 0),
            GgufType::String => GgufValue::String(self.string(key)?),
            GgufType::U64 => GgufValue::U64(self.u64(key)?),
            GgufType::I64 => GgufValue::I64(i64::from_le_bytes(self.arr(key)?)),
            GgufType::F64 => GgufValue::F64(f64::from_le_bytes(self.arr(key)?)),
            GgufType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::model(format!(
                        "GGUF metadata {key}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let at = self.pos;
                let id = self.u32(key)?;
                let elem = GgufType::from_id(id).ok_or_else(|| {
                    Error::model(format!("GGUF metadata {key}: unknown array element type {id} at offset {at}"))
                })?;
                let n = self.count(elem.min_size(), &format!("array length of {key}"))?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1, key)?);
                }
                GgufValue::Array(elem, v)
            }
        })
    }
}

fn align_up(x: usize, a: usize) -> Option<usize> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

impl GgufFile {
    /// Parse the header of a GGUF v2/v3 file. Tensor byte ranges are checked against
    /// `bytes.len()`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { b: bytes, pos: 0 };
        let magic = r.arr::<4>("magic")?;
        if magic != GGUF_MAGIC {
            return Err(Error::model(format!("not a GGUF file: magic is {magic:02x?}, expected \"GGUF\"")));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            let hint = if (2..=3).contains(&version.swap_bytes()) {
                "; this looks like a big-endian file, which is not supported"
            } else {
                ""
            };
            return Err(Error::model(format!("unsupported GGUF version {version} (supported: 2, 3){hint}")));
        }
        // Smallest tensor info: name length 8 + n_dims 4 + one dim 8 + type 4 + offset 8.
        let n_tensors = r.count(32, "tensor count")?;
        // Smallest key/value: key length 8 + type 4 + one byte.
        let n_kv = r.count(13, "metadata count")?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut meta_index = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let at = r.pos;
            let id = r.u32(&key)?;
            let ty = GgufType::from_id(id)
                .ok_or_else(|| Error::model(format!("GGUF metadata {key}: unknown value type {id} at offset {at}")))?;
            let value = r.value(ty, 0, &key)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(Error::model(format!("GGUF metadata key {key} appears twice")));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment").and_then(|i| metadata.get(*i)) {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64().and_then(|a| usize::try_from(a).ok()) {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(Error::model(format!(
                        "GGUF general.alignment {v:?} is not a power of two up to 1 MiB"
                    )));
                }
            },
        };

        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor #{i}"))?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::model(format!("tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} supported)")));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(r.u64(&name)?);
            }
            let ggml_type = r.u32(&name)?;
            let offset = r.u64(&name)?;
            raw.push((name, ne, ggml_type, offset));
        }
        let data_offset =
            align_up(r.pos, alignment).ok_or_else(|| Error::model("GGUF data section offset overflows"))?;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for (name, ne, ggml_type, offset) in raw {
            let info = tensor_info(name, ne, ggml_type, offset, alignment, data_offset, bytes.len())?;
            if tensor_index.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(Error::model(format!("tensor {} appears twice", info.name)));
            }
            tensors.push(info);
        }
        Ok(GgufFile { version, alignment, data_offset, metadata, tensors, meta_index, tensor_index })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.meta_index.get(key).and_then(|i| self.metadata.get(*i)).map(|(_, v)| v)
    }

    /// A tensor's directory entry by GGUF name.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).and_then(|i| self.tensors.get(*i))
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                Error::model(format!("GGUF metadata {key} should be a non-negative integer, found {:?}", v.ty()))
            }),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.opt_u64(key)? {
            None => Ok(None),
            Some(v) => usize::try_from(v)
                .map(Some)
                .map_err(|_| Error::model(format!("GGUF metadata {key} = {v} is too large"))),
        }
    }

    fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| Error::model(format!("GGUF metadata {key} is missing")))
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|f| Some(f as f32))
                .ok_or_else(|| Error::model(format!("GGUF metadata {key} should be a number, found {:?}", v.ty()))),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Error::model(format!("GGUF metadata {key} should be a string, found {:?}", v.ty()))),
        }
    }

    fn opt_array(&self, key: &str, elem: &[GgufType]) -> Result<Option<&[GgufValue]>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(t, v)) if elem.contains(t) => Ok(Some(v)),
            Some(GgufValue::Array(t, _)) => Err(Error::model(format!(
                "GGUF metadata {key} should be an array of {elem:?}, found an array of {t:?}"
            ))),
            Some(v) => {
                Err(Error::model(format!("GGUF metadata {key} should be an array of {elem:?}, found {:?}", v.ty())))
            }
        }
    }
}

fn tensor_info(
    name: String,
    ne: Vec<u64>,
    ggml_type: u32,
    offset: u64,
    alignment: usize,
    data_offset: usize,
    file_len: usize,
) -> Result<GgufTensorInfo> {
    let mut numel: usize = 1;
    for &d in &ne {
        numel = usize::try_from(d)
            .ok()
            .and_then(|d| numel.checked_mul(d))
            .ok_or_else(|| Error::model(format!("tensor {name}: dimensions {ne:?} overflow the element count")))?;
    }
    let shape: Vec<usize> = ne.iter().rev().map(|&d| d as usize).collect();
    if !offset.is_multiple_of(alignment as u64) {
        return Err(Error::model(format!(
            "tensor {name}: offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    let format = ggml::format_from_ggml_type(ggml_type);
    let range = match format {
        None => 0..0,
        Some(f) => {
            let row = ne.first().copied().unwrap_or(1);
            let be = ggml::block_elems(f) as u64;
            if !row.is_multiple_of(be) {
                return Err(Error::model(format!(
                    "tensor {name}: rows of {row} elements are not a whole number of {f:?} \
                     blocks of {be}"
                )));
            }
            let size = ggml::tensor_bytes(f, numel).map_err(|e| Error::model(format!("tensor {name}: {e}")))?;
            let start = usize::try_from(offset).ok().and_then(|o| o.checked_add(data_offset));
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => s..e,
                _ => {
                    return Err(Error::model(format!(
                        "tensor {name}: data at offset {offset} + {size} bytes (data section at \
                         {data_offset}) lies past the end of the file ({file_len} bytes)"
                    )));
                }
            }
        }
    };
    Ok(GgufTensorInfo { name, ne, shape, ggml_type, format, offset, range })
}
