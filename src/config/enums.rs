//! The string-valued options: device, quantization, KV cache strategy, batch-size strategy,
//! prefetch strategy. Each parses case-insensitively (`-` and `_` ignored) and prints
//! its canonical name.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::value::{loose, quote, read_str, value_error};
use crate::error::{Error, Result};

macro_rules! option_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in the order the error messages list them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical name, as `to_json_value` writes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The accepted names, comma separated, for error messages.
            pub fn accepted() -> String {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                names.join(", ")
            }

            /// Parses a name (case-insensitive; `-`/`_` ignored); the error names `key`.
            pub fn parse_for(key: &str, s: &str) -> Result<Self> {
                let wanted = loose(s);
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| loose(v.as_str()) == wanted)
                    .ok_or_else(|| {
                        value_error(key, quote(s), &format!("one of {}", Self::accepted()))
                    })
            }

            /// Reads a JSON string value for `key`.
            pub(crate) fn read(key: &str, v: &Value) -> Result<Self> {
                Self::parse_for(key, read_str(key, v)?)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::parse_for($what, s)
            }
        }
    };
}

option_enum! {
    /// Weight precision on the GPU, applied at load whatever the file holds.
    Quantization, "quantization" {
        /// 32-bit floats.
        Fp32 => "fp32",
        /// 16-bit floats (stored packed in u32 where shader-f16 is missing).
        Fp16 => "fp16",
        /// 8-bit blocks.
        Int8 => "int8",
        /// 4-bit blocks.
        Int4 => "int4",
        /// 3-bit blocks.
        Int3 => "int3",
        /// 2-bit blocks.
        Int2 => "int2",
        /// Attention and feed-forward matrices at different precisions.
        Mixed => "mixed",
    }
}

impl Quantization {
    /// Reads a per-matrix-family precision: any value but `mixed`.
    pub(crate) fn read_single(key: &str, v: &Value) -> Result<Self> {
        let q = Self::read(key, v)?;
        if q == Quantization::Mixed {
            let names: Vec<&str> =
                Self::ALL.iter().filter(|q| **q != Quantization::Mixed).map(|q| q.as_str()).collect();
            return Err(value_error(key, "\"mixed\"", &format!("one of {}", names.join(", "))));
        }
        Ok(q)
    }

    /// Bits per weight of the stored matrix (ignoring block scales); `None` for `Mixed`.
    pub fn bits(self) -> Option<u32> {
        match self {
            Quantization::Fp32 => Some(32),
            Quantization::Fp16 => Some(16),
            Quantization::Int8 => Some(8),
            Quantization::Int4 => Some(4),
            Quantization::Int3 => Some(3),
            Quantization::Int2 => Some(2),
            Quantization::Mixed => None,
        }
    }
}

option_enum! {
    /// How the KV cache is allocated.
    KvCacheStrategy, "kv_cache_strategy" {
        /// Reserve the whole context at load.
        Static => "static",
        /// Grow in pages as tokens arrive.
        Dynamic => "dynamic",
        /// Recent window at full precision, older tokens re-quantised lower.
        Progressive => "progressive",
    }
}

option_enum! {
    /// How the adaptive batch size moves between its bounds.
    BatchSizeStrategy, "batch_size_strategy" {
        /// Grow eagerly for throughput.
        Performance => "performance",
        /// Stay small to save memory.
        Memory => "memory",
        /// In between.
        Balanced => "balanced",
    }
}

option_enum! {
    /// How many decode steps are kept in flight.
    PrefetchStrategy, "prefetch_strategy" {
        /// Always `prefetch_size`.
        Fixed => "fixed",
        /// Tuned from the stop rate and the latency.
        Adaptive => "adaptive",
        /// Tuned from the context (e.g. shallower near expected stops).
        ContextAware => "context-aware",
    }
}

option_enum! {
    /// Where the model runs.
    Device, "device" {
        /// WebGPU (wgpu natively).
        Gpu => "gpu",
        /// The CPU backend (WebAssembly SIMD in the browser; `crate::cpu`).
        Cpu => "cpu",
        /// The CPU when the only WebGPU adapter is a software rasteriser or there is no
        /// WebGPU, and the quantization is one the CPU runs; else the GPU.
        Auto => "auto",
    }
}
