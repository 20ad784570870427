//! The KV cache: storage format, strategy (static / dynamic / progressive), the budget and
//! the sliding window with attention sinks (DESIGN.md §3).
//!
//! Layout (`shaders/kv_cache.wgsl`): one K and one V buffer of u32 words, each
//! `[ring_rows, layers, ring_row]` (progressive only) then `[rows, layers, main_row]`. The main
//! store is position-major, so growing it appends rows: the old buffer is copied as a prefix
//! and no kernel parameter changes.
//!
//! Positions are absolute: RoPE is applied at write time with the token's real position (the
//! RoPE table covers any position by angle addition), and position `q` lives in main row `q`
//! for `q < sinks`, else in row `sinks + (q - sinks) % (main_rows - sinks)`. A query at `P`
//! attends to the sinks and the `window` positions up to `P`, where
//! `window = main_rows - sinks - chunk`: the `chunk` spare rows mean that neither a prefill
//! chunk nor a speculative verify pass (at most `chunk` tokens) that is later rolled back can
//! overwrite a row some query still needs. So **rolling the position back** (rewriting
//! `state.pos`) is valid for every strategy, in or past the window, as long as the rolled-back
//! pass had at most `chunk` tokens; the window is identical for prefill and decode.
//!
//! - static: every row reserved at load, no window: positions end at `main_rows`; a
//!   generation that reaches it ends with `context_length_exceeded`.
//! - dynamic: rows allocated `page` at a time between submissions as positions arrive, up to
//!   the budget; then the window slides.
//! - progressive: the newest `recent` positions in a ring at f16 (f32 without
//!   `kv_cache_optimization`); as a position leaves it, a GPU kernel (`rope_kv.wgsl`
//!   `requant`, after each pass's writes) re-quantises it to int8 (per row and head scale)
//!   in the main store, which grows like dynamic; about twice the tokens of f16 fit the same
//!   budget. The ring has `recent + chunk` rows so that neither a chunk nor a rolled-back
//!   pass overwrites a position before it was re-quantised or while it is still read.

use crate::config::KvCacheStrategy;
use crate::error::{Error, Result};
use crate::gpu::params::KvParams;
use crate::gpu::{Gpu, KvFormat, KvFormats};
use crate::model::ModelConfig;

/// Attention sinks kept by the sliding window.
pub const SINKS: usize = 4;
/// Positions a windowed generation may reach (the token-id buffer holds this many).
pub const MAX_WINDOW_POSITIONS: usize = 1 << 17;

/// KV options fixed at load.
#[derive(Clone, Debug)]
pub struct KvOptions {
    pub strategy: KvCacheStrategy,
    /// Compact storage (`kv_cache_optimization`): f16 instead of f32.
    pub compact: bool,
    /// Most bytes of K + V (None: only `LoadOptions::context` limits the rows).
    pub budget_bytes: Option<u64>,
    /// Rows added at a time by dynamic and progressive.
    pub page: usize,
    /// Positions kept at full precision by progressive.
    pub recent: usize,
}

impl Default for KvOptions {
    fn default() -> Self {
        KvOptions { strategy: KvCacheStrategy::Static, compact: false, budget_bytes: None, page: 256, recent: 64 }
    }
}

/// Everything the kernels and the engine need to know about the cache's geometry.
#[derive(Clone, Debug)]
pub struct KvPlan {
    pub strategy: KvCacheStrategy,
    pub formats: KvFormats,
    pub layers: usize,
    pub n_kv: usize,
    pub hd: usize,
    /// Rows of the main store when full (its position ring, sinks included).
    pub main_rows: usize,
    pub sinks: usize,
    /// Positions besides the sinks a query sees.
    pub window: usize,
    /// Ring rows (progressive) and how many newest positions are read from it.
    pub ring_rows: usize,
    pub ring_recent: usize,
    /// Largest chunk of tokens one pass may write (prefill, verify).
    pub chunk: usize,
    /// Positions a sequence may reach.
    pub max_positions: usize,
    pub page: usize,
}

impl KvPlan {
    /// The plan for `cfg` with at most `context` main rows, `chunk`-token passes and `kv`.
    pub fn new(cfg: &ModelConfig, context: usize, chunk: usize, kv: &KvOptions) -> Result<KvPlan> {
        let (layers, n_kv, hd) = (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim);
        let compact_float = if kv.compact { KvFormat::F16 } else { KvFormat::F32 };
        let progressive = kv.strategy == KvCacheStrategy::Progressive;
        let formats = if progressive {
            KvFormats { main: KvFormat::Int8, ring: compact_float }
        } else {
            KvFormats::plain(compact_float)
        };
        let row_bytes = |f: KvFormat| (f.row_words(n_kv, hd) * 4 * 2 * layers) as u64;
        let chunk = chunk.max(1);
        let (ring_recent, ring_rows) = if progressive { (kv.recent.max(1), kv.recent.max(1) + chunk) } else { (0, 0) };
        let ring_bytes = ring_rows as u64 * row_bytes(formats.ring);
        let mut rows = context.max(1);
        if let Some(b) = kv.budget_bytes {
            rows = rows.min((b.saturating_sub(ring_bytes) / row_bytes(formats.main).max(1)) as usize);
        }
        if kv.strategy == KvCacheStrategy::Static {
            let rows = rows.max(1);
            return Ok(KvPlan {
                strategy: kv.strategy,
                formats,
                layers,
                n_kv,
                hd,
                main_rows: rows,
                sinks: 0,
                window: rows,
                ring_rows,
                ring_recent,
                chunk: chunk.min(rows),
                max_positions: rows,
                page: rows,
            });
        }
        // A window needs the sinks, spare rows for one chunk and at least one recent position.
        let sinks = SINKS.min(rows / 4);
        let min_rows = sinks + 2;
        if rows < min_rows {
            return Err(Error::invalid(format!(
                "the KV budget holds {rows} tokens; the {} strategy needs at least {min_rows}",
                kv.strategy.as_str()
            )));
        }
        let chunk = chunk.min((rows - sinks) / 2).max(1);
        Ok(KvPlan {
            strategy: kv.strategy,
            formats,
            layers,
            n_kv,
            hd,
            main_rows: rows,
            sinks,
            window: rows - sinks - chunk,
            ring_rows: if progressive { ring_recent + chunk } else { 0 },
            ring_recent,
            chunk,
            max_positions: MAX_WINDOW_POSITIONS.max(rows),
            page: kv.page.max(1),
        })
    }

    /// u32 words per (row, layer) of the main store and of the ring.
    pub fn main_row_words(&self) -> usize {
        self.formats.main.row_words(self.n_kv, self.hd)
    }

    pub fn ring_row_words(&self) -> usize {
        self.formats.ring.row_words(self.n_kv, self.hd)
    }

    /// u32 words of the ring region (before the main store).
    pub fn ring_words(&self) -> usize {
        self.ring_rows * self.layers * self.ring_row_words()
    }

    /// Bytes of one buffer (K or V) holding `rows` main rows.
    pub fn buffer_bytes(&self, rows: usize) -> u64 {
        ((self.ring_words() + rows * self.layers * self.main_row_words()) * 4) as u64
    }

    /// Main rows holding positions once positions `0..=latest` are written.
    pub fn rows_in_use(&self, latest: usize) -> usize {
        let main_latest = if self.ring_rows > 0 { latest.checked_sub(self.ring_recent) } else { Some(latest) };
        main_latest.map_or(0, |l| (l + 1).min(self.main_rows))
    }

    /// Main rows to allocate for `rows` in use: whole pages (all rows for static).
    pub fn rows_to_allocate(&self, rows: usize) -> usize {
        (rows.div_ceil(self.page) * self.page).clamp(1, self.main_rows)
    }

    /// Whether positions past `window + sinks` are dropped (dynamic and progressive).
    pub fn slides(&self) -> bool {
        self.strategy != KvCacheStrategy::Static
    }

    /// The kernel parameters of layer `l`.
    pub fn params(&self, cfg: &ModelConfig, l: usize, rope_rows: usize) -> Result<KvParams> {
        let u = |v: usize, what: &str| u32::try_from(v).map_err(|_| Error::model(format!("{what} {v} is too large")));
        Ok(KvParams {
            n_heads: u(cfg.n_heads, "heads")?,
            n_kv: u(self.n_kv, "kv heads")?,
            hd: u(self.hd, "head dim")?,
            layer: u(l, "layer")?,
            layers: u(self.layers, "layers")?,
            scale: 1.0 / (self.hd as f32).sqrt(),
            sinks: u(self.sinks, "sinks")?,
            window: u(self.window, "window")?,
            main_rows: u(self.main_rows, "kv rows")?,
            main_off: u(self.ring_words(), "kv ring words")?,
            main_row: u(self.main_row_words(), "kv row words")?,
            ring_rows: u(self.ring_rows, "ring rows")?,
            ring_recent: u(self.ring_recent, "ring positions")?,
            ring_row: u(self.ring_row_words(), "ring row words")?,
            rope_rows: u(rope_rows, "rope rows")?,
            score_stride: u(self.sinks + self.window, "score stride")?,
        })
    }
}

/// The K and V buffers and how many main rows they hold.
pub struct KvCache {
    pub plan: KvPlan,
    pub k: wgpu::Buffer,
    pub v: wgpu::Buffer,
    /// Main rows allocated.
    pub rows: usize,
    /// Highest allocation so far, in bytes (K + V).
    pub peak_bytes: u64,
}

impl KvCache {
    /// Static: every row; dynamic and progressive: the first page.
    pub fn new(gpu: &Gpu, plan: KvPlan) -> KvCache {
        let rows = plan.rows_to_allocate(if plan.slides() { 1 } else { plan.main_rows });
        let bytes = plan.buffer_bytes(rows);
        let k = gpu.storage("k_cache", bytes);
        let v = gpu.storage("v_cache", bytes);
        let peak_bytes = k.size() + v.size();
        KvCache { plan, k, v, rows, peak_bytes }
    }

    /// Bytes allocated for K and V now (measured from the buffers).
    pub fn bytes(&self) -> u64 {
        self.k.size() + self.v.size()
    }

    /// Bytes of the rows that hold positions `0..=latest` (plus the whole ring).
    pub fn used_bytes(&self, latest: usize) -> u64 {
        let per_row = (self.plan.main_row_words() * self.plan.layers * 4 * 2) as u64;
        (self.plan.ring_words() * 4 * 2) as u64 + self.plan.rows_in_use(latest) as u64 * per_row
    }

    /// Before a pass that writes positions up to `latest`: grow to whole pages covering
    /// them, copying the old contents in `enc` (queue order puts the copy after every
    /// earlier submission). Returns whether the buffers changed (bind groups must follow).
    pub fn reserve(&mut self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, latest: usize) -> bool {
        let want = self.plan.rows_to_allocate(self.plan.rows_in_use(latest));
        if want <= self.rows {
            return false;
        }
        let bytes = self.plan.buffer_bytes(want);
        let (k, v) = (gpu.storage("k_cache", bytes), gpu.storage("v_cache", bytes));
        let old = self.plan.buffer_bytes(self.rows);
        enc.copy_buffer_to_buffer(&self.k, 0, &k, 0, old);
        enc.copy_buffer_to_buffer(&self.v, 0, &v, 0, old);
        self.k = k;
        self.v = v;
        self.rows = want;
        self.peak_bytes = self.peak_bytes.max(self.bytes());
        true
    }
}

/// cos/sin table for any position below `max_positions`: rows `0..rope_rows` are positions
/// `0..rope_rows`, then row `rope_rows + i` is position `i * rope_rows` (the kernel combines
/// the two by angle addition). Computed in f64, stored as f32 pairs: `[rows, hd/2, 2]`.
pub fn rope_table(cfg: &ModelConfig, rope_rows: usize, max_positions: usize) -> Vec<f32> {
    let half = cfg.head_dim / 2;
    let scale = match cfg.rope_scaling {
        crate::model::RopeScaling::None => 1.0,
        crate::model::RopeScaling::Linear { factor } => 1.0 / f64::from(factor.max(1e-6)),
    };
    let high = max_positions.div_ceil(rope_rows.max(1)) + 1;
    let positions = (0..rope_rows).chain((0..high).map(|i| i * rope_rows));
    let mut out = Vec::with_capacity((rope_rows + high) * half * 2);
    for pos in positions {
        for i in 0..half {
            let inv_freq = f64::from(cfg.rope_theta).powf(-2.0 * i as f64 / cfg.head_dim as f64);
            let a = pos as f64 * scale * inv_freq;
            out.push(a.cos() as f32);
            out.push(a.sin() as f32);
        }
    }
    out
}
