//! Browser detection: user agent + adapter features/limits -> [`BrowserProfile`]
//! (workgroup size, memory strategy, submission size, shader paths).
//!
//! The user agent picks the defaults (DESIGN.md §3); feature detection always wins:
//! f16 and subgroup kernels only where the adapter has them, bindings never above the
//! adapter's limits. Pure Rust: the wasm side passes `navigator.userAgent` in.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::config::StreamingConfig;
use crate::error::{Error, Result};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// WebGPU's guaranteed `maxStorageBufferBindingSize`.
pub const WEBGPU_DEFAULT_MAX_STORAGE_BINDING: u64 = 128 * MIB;
/// WebGPU's guaranteed `maxBufferSize`.
pub const WEBGPU_DEFAULT_MAX_BUFFER_SIZE: u64 = 256 * MIB;
/// Shards of weights start at multiples of this (WebGPU's
/// `minStorageBufferOffsetAlignment` at its largest), so `max_binding_bytes` is one too.
pub const BINDING_ALIGN: u64 = 256;

/// The browser (engine family) a profile is tuned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BrowserName {
    /// Chrome and every Chromium-based browser (Opera, Brave, Vivaldi, Samsung Internet).
    Chrome,
    /// Microsoft Edge (Chromium).
    Edge,
    /// Firefox (Gecko).
    Firefox,
    /// Safari and every iOS/iPadOS browser (all WebKit).
    Safari,
    /// Anything else, and native (wgpu on Vulkan/Metal/DX12).
    Other,
}

impl BrowserName {
    /// The names `optimize_for_browser` accepts.
    pub const FORCEABLE: &'static [BrowserName] =
        &[BrowserName::Chrome, BrowserName::Edge, BrowserName::Firefox, BrowserName::Safari];

    /// Lower-case name: chrome, edge, firefox, safari, other.
    pub fn as_str(self) -> &'static str {
        match self {
            BrowserName::Chrome => "chrome",
            BrowserName::Edge => "edge",
            BrowserName::Firefox => "firefox",
            BrowserName::Safari => "safari",
            BrowserName::Other => "other",
        }
    }

    /// Parses a name `optimize_for_browser` accepts (case-insensitive); the error names
    /// `key`.
    pub fn parse_forced(key: &str, s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase();
        Self::FORCEABLE.iter().copied().find(|b| b.as_str() == wanted).ok_or_else(|| {
            let names: Vec<&str> = Self::FORCEABLE.iter().map(|b| b.as_str()).collect();
            Error::invalid(format!("invalid value \"{s}\" for \"{key}\": expected one of {}", names.join(", ")))
        })
    }

    /// Reads a JSON string for `key` with [`BrowserName::parse_forced`].
    pub(crate) fn read_forced(key: &str, v: &Value) -> Result<Self> {
        match v.as_str() {
            Some(s) => Self::parse_forced(key, s),
            None => Err(crate::config::value::type_error(key, "a string (chrome, edge, firefox, safari)", v)),
        }
    }

    /// The engine family behind a user-agent string.
    ///
    /// Order matters: every iOS browser (CriOS, FxiOS, EdgiOS, ...) is WebKit, so Safari;
    /// Edge says "Chrome" too, so it is checked first; any other "Chrome/" is Chromium.
    pub fn from_user_agent(ua: &str) -> BrowserName {
        let has = |t: &str| ua.contains(t);
        let ios = has("iPhone") || has("iPad") || has("iPod");
        if ios || has("CriOS/") || has("FxiOS/") || has("EdgiOS/") || has("OPiOS/") {
            BrowserName::Safari
        } else if has("Edg/") || has("EdgA/") || has("Edge/") {
            BrowserName::Edge
        } else if has("Firefox/") {
            BrowserName::Firefox
        } else if has("Chrome/") || has("Chromium/") || has("HeadlessChrome/") {
            BrowserName::Chrome
        } else if has("AppleWebKit/") && has("Safari/") {
            BrowserName::Safari
        } else {
            BrowserName::Other
        }
    }
}

impl fmt::Display for BrowserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BrowserName {
    type Err = Error;
    /// Any of chrome, edge, firefox, safari, other.
    fn from_str(s: &str) -> Result<Self> {
        if s.trim().eq_ignore_ascii_case("other") {
            return Ok(BrowserName::Other);
        }
        Self::parse_forced("browser", s)
    }
}

/// What the adapter offers (from `GPUAdapter.features` / `.limits` / `.info`, or wgpu's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterCaps {
    /// `shader-f16` is available.
    pub shader_f16: bool,
    /// `subgroups` is available.
    pub subgroups: bool,
    /// `maxStorageBufferBindingSize` in bytes (0 = unknown: WebGPU's default).
    pub max_storage_binding: u64,
    /// `maxBufferSize` in bytes (0 = unknown: WebGPU's default).
    pub max_buffer_size: u64,
    /// Adapter description for stats ("SwiftShader", "llvmpipe", ...).
    pub name: String,
    /// A CPU rasteriser (lavapipe, SwiftShader, WARP): workgroups run as SIMD loops.
    pub is_cpu: bool,
}

impl Default for AdapterCaps {
    /// WebGPU's guaranteed minimum: no optional features, default limits.
    fn default() -> Self {
        AdapterCaps {
            shader_f16: false,
            subgroups: false,
            max_storage_binding: WEBGPU_DEFAULT_MAX_STORAGE_BINDING,
            max_buffer_size: WEBGPU_DEFAULT_MAX_BUFFER_SIZE,
            name: String::new(),
            is_cpu: false,
        }
    }
}

/// How the engine runs in this browser on this adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserProfile {
    /// The browser the values are tuned for.
    pub browser: BrowserName,
    /// Workgroup size of the matvec kernels.
    pub workgroup_size: [u32; 3],
    /// GPU-resident token feedback + async readback while later steps run.
    pub compute_transfer_overlap: bool,
    /// Largest storage binding; weights are sharded to this (a multiple of 256).
    pub max_binding_bytes: u64,
    /// Smaller buffers, chunked uploads, lower budgets.
    pub conservative_memory: bool,
    /// Decode steps encoded in one submission at most.
    pub max_steps_per_submit: u32,
    /// Memory budget when the config gives none.
    pub default_memory_limit_mb: u32,
    /// KV cache budget when the config gives none.
    pub default_kv_cache_mb: u32,
    /// Use the f16 kernels (only with `shader-f16`).
    pub use_f16: bool,
    /// Use the subgroup kernels (only with `subgroups`).
    pub use_subgroups: bool,
    /// The adapter is a CPU rasteriser: the matvec gives each invocation whole rows
    /// (entry point `cpu` of shaders/matvec.wgsl) instead of sharing rows across a workgroup.
    pub cpu_rasteriser: bool,
    /// Output rows per matvec thread (GPUs: per row group of a workgroup).
    pub matvec_rows: u32,
    /// CPU rasterisers: threads per workgroup of the `cpu` matvec (0 on GPUs).
    pub cpu_matvec_workgroup: u32,
}

/// CPU rasterisers: threads per workgroup of the matvec and attention kernels. lavapipe,
/// real SmolLM2 decode (int4): 256 left most matrices to one or two workgroups, i.e. one of
/// the two cores, and attention was slower too (see `cpu_profile_uses_whole_rows_per_thread`).
const CPU_WORKGROUP: u32 = 32;
/// CPU rasterisers: threads per workgroup of the `cpu` matvec, the rasteriser's SIMD width
/// (SwiftShader 4 lanes, lavapipe 8 with AVX2). A workgroup of 32 threads x 8 rows leaves
/// SmolLM2's 576-row matrices three workgroups for two cores; narrower ones balance them.
/// Median ms per dispatch, int4, workgroup 32 -> this (`examples/matvec_bench`):
/// SwiftShader 576x576 0.53 -> 0.34, 960x576 0.65 -> 0.57, 576x1536 SwiGLU 1.69 -> 0.96,
/// 3072x576 1.78 -> 1.77; lavapipe 0.071 -> 0.064, 0.117 -> 0.100, 0.214 -> 0.142,
/// 3072x576 0.28-0.34 either way (workgroups of 4 there: 0.089, 0.140, 0.197, 0.38-0.45).
fn cpu_matvec_workgroup(adapter_name: &str) -> u32 {
    if adapter_name.to_ascii_lowercase().contains("swiftshader") { 4 } else { 8 }
}

/// CPU rasterisers: rows per matvec invocation. Each input element is loaded once per
/// invocation, so more rows amortise it (lavapipe, int4 3072x576: 1 row 0.66 ns/weight,
/// 2: 0.42, 4: 0.26, 8: 0.23); 8 is the most the `cpu` entry point takes.
const CPU_MATVEC_ROWS: u32 = 8;

/// Per-browser defaults before feature detection and conservative mode.
struct Base {
    workgroup_size: [u32; 3],
    overlap: bool,
    binding_cap: u64,
    conservative: bool,
    steps_per_submit: u32,
    memory_limit_mb: u32,
    kv_cache_mb: u32,
}

fn base(browser: BrowserName) -> Base {
    match browser {
        // Dispatch overhead is high (SwiftShader ~0.25 ms each): wide 2-row workgroups.
        BrowserName::Chrome | BrowserName::Edge => Base {
            workgroup_size: [128, 2, 1],
            overlap: true,
            binding_cap: GIB,
            conservative: false,
            steps_per_submit: 8,
            memory_limit_mb: 4096,
            kv_cache_mb: 1024,
        },
        // A GPU->CPU round trip costs ~100 ms: overlap and many steps per submission.
        BrowserName::Firefox => Base {
            workgroup_size: [256, 1, 1],
            overlap: true,
            binding_cap: 128 * MIB,
            conservative: false,
            steps_per_submit: 16,
            memory_limit_mb: 4096,
            kv_cache_mb: 1024,
        },
        // The GPU watchdog kills long submissions: few steps each; tight memory.
        BrowserName::Safari => Base {
            workgroup_size: [64, 1, 1],
            overlap: false,
            binding_cap: 256 * MIB,
            conservative: true,
            steps_per_submit: 2,
            memory_limit_mb: 4096,
            kv_cache_mb: 1024,
        },
        BrowserName::Other => Base {
            workgroup_size: [128, 1, 1],
            overlap: true,
            binding_cap: 2 * GIB,
            conservative: false,
            steps_per_submit: 8,
            memory_limit_mb: 8192,
            kv_cache_mb: 2048,
        },
    }
}

/// Budgets are divided by this in conservative-memory mode.
const CONSERVATIVE_DIVISOR: u32 = 4;

impl BrowserProfile {
    /// The profile for a user agent (`None` = native) on this adapter.
    pub fn detect(user_agent: Option<&str>, caps: &AdapterCaps) -> Self {
        let browser = user_agent.map_or(BrowserName::Other, BrowserName::from_user_agent);
        Self::for_browser(browser, caps)
    }

    /// The profile of `browser` (forced, e.g. `optimize_for_browser`) on this adapter.
    pub fn for_browser(browser: BrowserName, caps: &AdapterCaps) -> Self {
        let b = base(browser);
        let or_default = |x: u64, d: u64| if x == 0 { d } else { x };
        let binding = b
            .binding_cap
            .min(or_default(caps.max_storage_binding, WEBGPU_DEFAULT_MAX_STORAGE_BINDING))
            .min(or_default(caps.max_buffer_size, WEBGPU_DEFAULT_MAX_BUFFER_SIZE));
        let mut p = BrowserProfile {
            browser,
            workgroup_size: b.workgroup_size,
            compute_transfer_overlap: b.overlap,
            max_binding_bytes: (binding / BINDING_ALIGN * BINDING_ALIGN).max(BINDING_ALIGN),
            conservative_memory: false,
            max_steps_per_submit: b.steps_per_submit,
            default_memory_limit_mb: b.memory_limit_mb,
            default_kv_cache_mb: b.kv_cache_mb,
            use_f16: caps.shader_f16,
            use_subgroups: caps.subgroups,
            cpu_rasteriser: caps.is_cpu,
            matvec_rows: if caps.is_cpu { CPU_MATVEC_ROWS } else { 4 },
            cpu_matvec_workgroup: if caps.is_cpu { cpu_matvec_workgroup(&caps.name) } else { 0 },
        };
        if caps.is_cpu {
            p.workgroup_size = [CPU_WORKGROUP, 1, 1];
        }
        p.set_conservative(b.conservative);
        p
    }

    /// The profile an engine uses for `cfg`: `optimize_for_browser` forces one;
    /// `browser_optimizations: false` uses the generic one (keeping the detected name
    /// for stats); then [`BrowserProfile::apply_config`].
    pub fn from_config(user_agent: Option<&str>, caps: &AdapterCaps, cfg: &StreamingConfig) -> Self {
        let detected = user_agent.map_or(BrowserName::Other, BrowserName::from_user_agent);
        let mut p = match cfg.optimize_for_browser {
            Some(forced) => Self::for_browser(forced, caps),
            None if !cfg.browser_optimizations => {
                let mut p = Self::for_browser(BrowserName::Other, caps);
                p.browser = detected;
                p
            }
            None => Self::for_browser(detected, caps),
        };
        p.apply_config(cfg);
        p
    }

    /// Applies the config's overrides: `workgroup_size` (the `cpu` matvec's too) and
    /// `conservative_memory`.
    pub fn apply_config(&mut self, cfg: &StreamingConfig) {
        if let Some(wg) = cfg.workgroup_size {
            self.workgroup_size = wg;
            if self.cpu_rasteriser {
                self.cpu_matvec_workgroup = wg[0];
            }
        }
        if let Some(c) = cfg.conservative_memory {
            self.set_conservative(c);
        }
    }

    /// Turns conservative-memory mode on or off: budgets divided (or multiplied back)
    /// by 4 and at most 4 steps per submission while on.
    pub fn set_conservative(&mut self, on: bool) {
        if on == self.conservative_memory {
            return;
        }
        if on {
            self.default_memory_limit_mb = (self.default_memory_limit_mb / CONSERVATIVE_DIVISOR).max(1);
            self.default_kv_cache_mb = (self.default_kv_cache_mb / CONSERVATIVE_DIVISOR).max(1);
            self.max_steps_per_submit = self.max_steps_per_submit.min(4);
        } else {
            let base = base(self.browser);
            self.default_memory_limit_mb = self.default_memory_limit_mb.saturating_mul(CONSERVATIVE_DIVISOR);
            self.default_kv_cache_mb = self.default_kv_cache_mb.saturating_mul(CONSERVATIVE_DIVISOR);
            self.max_steps_per_submit = base.steps_per_submit;
        }
        self.conservative_memory = on;
    }

    /// The memory budget: the config's, else the profile's.
    pub fn memory_limit_mb(&self, cfg: &StreamingConfig) -> u32 {
        cfg.memory_limit_mb.unwrap_or(self.default_memory_limit_mb)
    }

    /// The KV cache budget: the config's, else the profile's, never above the memory
    /// budget.
    pub fn kv_cache_mb(&self, cfg: &StreamingConfig) -> u32 {
        cfg.max_kv_cache_mb.unwrap_or(self.default_kv_cache_mb).min(self.memory_limit_mb(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const CHROME_LINUX: &str =
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const CHROME_ANDROID: &str = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
    const HEADLESS_CHROMIUM: &str =
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36";
    const EDGE_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51";
    const EDGE_ANDROID: &str = "Mozilla/5.0 (Linux; Android 10; HD1913) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.54 Mobile Safari/537.36 EdgA/124.0.2478.49";
    const EDGE_LEGACY: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/70.0.3538.102 Safari/537.36 Edge/18.19582";
    const EDGE_IOS: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 EdgiOS/124.2478.50 Mobile/15E148 Safari/605.1.15";
    const FIREFOX_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0";
    const FIREFOX_LINUX_ESR: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    const FIREFOX_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0";
    const FIREFOX_ANDROID: &str = "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0";
    const SAFARI_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15";
    const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1";
    const SAFARI_IPAD: &str = "Mozilla/5.0 (iPad; CPU OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1";
    const CHROME_IOS: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1";
    const FIREFOX_IOS: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 14_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/125.0 Mobile/15E148 Safari/605.1.15";
    const OPERA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36 OPR/109.0.0.0";
    const BRAVE: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const VIVALDI: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Vivaldi/6.7.3329.17";
    const SAMSUNG: &str = "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36";

    fn caps_all() -> AdapterCaps {
        AdapterCaps {
            shader_f16: true,
            subgroups: true,
            max_storage_binding: 4 * GIB,
            max_buffer_size: 4 * GIB,
            name: "test".into(),
            is_cpu: false,
        }
    }

    #[test]
    fn detects_real_user_agents() {
        use BrowserName::*;
        let cases = [
            (CHROME_WINDOWS, Chrome),
            (CHROME_MAC, Chrome),
            (CHROME_LINUX, Chrome),
            (CHROME_ANDROID, Chrome),
            (HEADLESS_CHROMIUM, Chrome),
            (EDGE_WINDOWS, Edge),
            (EDGE_ANDROID, Edge),
            (EDGE_LEGACY, Edge),
            (EDGE_IOS, Safari),
            (FIREFOX_WINDOWS, Firefox),
            (FIREFOX_LINUX_ESR, Firefox),
            (FIREFOX_MAC, Firefox),
            (FIREFOX_ANDROID, Firefox),
            (SAFARI_MAC, Safari),
            (SAFARI_IPHONE, Safari),
            (SAFARI_IPAD, Safari),
            (CHROME_IOS, Safari),
            (FIREFOX_IOS, Safari),
            (OPERA, Chrome),
            (BRAVE, Chrome),
            (VIVALDI, Chrome),
            (SAMSUNG, Chrome),
            ("curl/8.5.0", Other),
            ("", Other),
            ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Other),
        ];
        for (ua, want) in cases {
            assert_eq!(BrowserName::from_user_agent(ua), want, "{ua}");
        }
    }

    #[test]
    fn names_parse_and_print() {
        for b in BrowserName::FORCEABLE {
            assert_eq!(b.as_str().parse::<BrowserName>().unwrap(), *b);
            assert_eq!(BrowserName::parse_forced("k", &b.to_string().to_uppercase()).unwrap(), *b);
        }
        assert_eq!("other".parse::<BrowserName>().unwrap(), BrowserName::Other);
        let e = BrowserName::parse_forced("optimizeForBrowser", "opera").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value \"opera\" for \"optimizeForBrowser\": expected one of chrome, edge, firefox, safari"
        );
        assert!(BrowserName::parse_forced("k", "other").is_err());
    }

    #[test]
    fn chrome_and_edge_profiles() {
        for ua in [CHROME_LINUX, EDGE_WINDOWS, OPERA] {
            let p = BrowserProfile::detect(Some(ua), &caps_all());
            assert_eq!(p.workgroup_size, [128, 2, 1], "{ua}");
            assert!(p.compute_transfer_overlap);
            assert!(!p.conservative_memory);
            assert_eq!(p.max_binding_bytes, GIB);
            assert!(p.use_f16 && p.use_subgroups);
        }
        assert_eq!(BrowserProfile::detect(Some(EDGE_WINDOWS), &caps_all()).browser, BrowserName::Edge);
    }

    #[test]
    fn chromium_on_swiftshader_has_no_f16() {
        // DESIGN §6: subgroups yes, shader-f16 no, 1 GiB bindings.
        let caps = AdapterCaps {
            shader_f16: false,
            subgroups: true,
            max_storage_binding: GIB,
            max_buffer_size: GIB,
            name: "SwiftShader".into(),
            is_cpu: true,
        };
        let p = BrowserProfile::detect(Some(HEADLESS_CHROMIUM), &caps);
        assert!(!p.use_f16 && p.use_subgroups);
        assert_eq!(p.max_binding_bytes, GIB);
    }

    #[test]
    fn firefox_profile_shards_to_128_mib() {
        // DESIGN §6: lavapipe in Firefox: f16 yes, subgroups no, 128 MiB bindings.
        let caps = AdapterCaps {
            shader_f16: true,
            subgroups: false,
            max_storage_binding: 128 * MIB,
            max_buffer_size: 256 * MIB,
            name: "llvmpipe".into(),
            is_cpu: true,
        };
        let p = BrowserProfile::detect(Some(FIREFOX_LINUX_ESR), &caps);
        assert_eq!(p.browser, BrowserName::Firefox);
        assert_eq!(p.workgroup_size, [CPU_WORKGROUP, 1, 1], "lavapipe is a CPU rasteriser");
        assert_eq!(p.max_binding_bytes, 128 * MIB);
        assert!(p.use_f16 && !p.use_subgroups);
        assert!(p.max_steps_per_submit >= 8, "round trips cost ~100 ms");
        // Even where the adapter allows more, the Firefox profile caps at 128 MiB.
        let p = BrowserProfile::detect(Some(FIREFOX_ANDROID), &caps_all());
        assert_eq!(p.max_binding_bytes, 128 * MIB);
    }

    #[test]
    fn cpu_matvec_workgroup_is_the_rasterisers_simd_width() {
        assert_eq!(cpu_matvec_workgroup("Google SwiftShader"), 4);
        assert_eq!(cpu_matvec_workgroup("google swiftshader (fallback adapter)"), 4);
        assert_eq!(cpu_matvec_workgroup("llvmpipe (LLVM 15.0.6, 256 bits)"), 8);
        assert_eq!(cpu_matvec_workgroup(""), 8, "an unnamed CPU adapter: AVX2's 8 lanes");
        // In the profile: CPU adapters only, and the config's workgroup size wins.
        let swiftshader = AdapterCaps { is_cpu: true, name: "Google SwiftShader".into(), ..caps_all() };
        assert_eq!(BrowserProfile::for_browser(BrowserName::Chrome, &swiftshader).cpu_matvec_workgroup, 4);
        assert_eq!(BrowserProfile::for_browser(BrowserName::Chrome, &caps_all()).cpu_matvec_workgroup, 0);
        let cfg = StreamingConfig::from_json_value(json!({"workgroupSize": [16, 1, 1]})).unwrap();
        assert_eq!(BrowserProfile::from_config(None, &swiftshader, &cfg).cpu_matvec_workgroup, 16);
        assert_eq!(BrowserProfile::from_config(None, &caps_all(), &cfg).cpu_matvec_workgroup, 0);
    }

    #[test]
    fn cpu_profile_uses_whole_rows_per_thread() {
        let gpu = caps_all();
        let cpu = AdapterCaps { is_cpu: true, ..caps_all() };
        for b in [BrowserName::Chrome, BrowserName::Firefox, BrowserName::Safari, BrowserName::Other] {
            let g = BrowserProfile::for_browser(b, &gpu);
            assert!(!g.cpu_rasteriser && g.matvec_rows == 4, "{b}");
            assert_eq!(g.workgroup_size, base(b).workgroup_size, "{b}: GPUs keep the browser's size");
            let c = BrowserProfile::for_browser(b, &cpu);
            assert!(c.cpu_rasteriser, "{b}");
            assert_eq!((c.workgroup_size, c.matvec_rows), ([CPU_WORKGROUP, 1, 1], CPU_MATVEC_ROWS), "{b}");
            // The rest of the browser's profile stays.
            assert_eq!((c.max_steps_per_submit, c.max_binding_bytes), (g.max_steps_per_submit, g.max_binding_bytes));
        }
        // The config's workgroup size still wins.
        let cfg = StreamingConfig::from_json_value(json!({"workgroupSize": [64, 1, 1]})).unwrap();
        assert_eq!(BrowserProfile::from_config(None, &cpu, &cfg).workgroup_size, [64, 1, 1]);
    }

    #[test]
    fn safari_profile_is_conservative() {
        for ua in [SAFARI_MAC, SAFARI_IPHONE, CHROME_IOS, FIREFOX_IOS] {
            let p = BrowserProfile::detect(Some(ua), &caps_all());
            assert_eq!(p.browser, BrowserName::Safari, "{ua}");
            assert_eq!(p.workgroup_size, [64, 1, 1]);
            assert!(p.conservative_memory);
            assert!(p.max_steps_per_submit <= 2);
            let chrome = BrowserProfile::detect(Some(CHROME_MAC), &caps_all());
            assert!(p.default_memory_limit_mb < chrome.default_memory_limit_mb);
            assert!(p.default_kv_cache_mb < chrome.default_kv_cache_mb);
        }
    }

    #[test]
    fn native_and_unknown_profiles() {
        for ua in [None, Some("curl/8.5.0")] {
            let p = BrowserProfile::detect(ua, &caps_all());
            assert_eq!(p.browser, BrowserName::Other);
            assert_eq!(p.workgroup_size, [128, 1, 1]);
            assert!(p.compute_transfer_overlap && !p.conservative_memory);
        }
    }

    #[test]
    fn feature_detection_wins() {
        let weak = AdapterCaps { max_storage_binding: 100 * MIB + 7, ..AdapterCaps::default() };
        for b in [BrowserName::Chrome, BrowserName::Edge, BrowserName::Firefox, BrowserName::Safari, BrowserName::Other]
        {
            let p = BrowserProfile::for_browser(b, &weak);
            assert!(!p.use_f16 && !p.use_subgroups, "{b}");
            assert_eq!(p.max_binding_bytes, 100 * MIB, "{b}: aligned down to 256");
            assert_eq!(p.max_binding_bytes % BINDING_ALIGN, 0);
        }
        // max_buffer_size bounds the binding too; 0 means "unknown" -> WebGPU defaults.
        let small_buffers =
            AdapterCaps { max_storage_binding: GIB, max_buffer_size: 64 * MIB, ..AdapterCaps::default() };
        assert_eq!(BrowserProfile::for_browser(BrowserName::Chrome, &small_buffers).max_binding_bytes, 64 * MIB);
        let unknown = AdapterCaps { max_storage_binding: 0, max_buffer_size: 0, ..AdapterCaps::default() };
        assert_eq!(BrowserProfile::for_browser(BrowserName::Other, &unknown).max_binding_bytes, 128 * MIB);
    }

    #[test]
    fn apply_config_overrides() {
        let cfg =
            StreamingConfig::from_json_value(json!({"workgroupSize": [32, 4], "conservativeMemory": true})).unwrap();
        let mut p = BrowserProfile::detect(Some(CHROME_WINDOWS), &caps_all());
        let before = p.clone();
        p.apply_config(&cfg);
        assert_eq!(p.workgroup_size, [32, 4, 1]);
        assert!(p.conservative_memory);
        assert!(p.default_memory_limit_mb < before.default_memory_limit_mb);
        assert!(p.default_kv_cache_mb < before.default_kv_cache_mb);
        assert!(p.max_steps_per_submit <= before.max_steps_per_submit);
        // Switching it off again restores the profile's values.
        p.apply_config(&StreamingConfig::from_json_value(json!({"conservative_memory": false})).unwrap());
        assert_eq!(p.default_memory_limit_mb, before.default_memory_limit_mb);
        assert_eq!(p.default_kv_cache_mb, before.default_kv_cache_mb);
        assert_eq!(p.max_steps_per_submit, before.max_steps_per_submit);

        // Safari without conservative memory.
        let mut s = BrowserProfile::detect(Some(SAFARI_MAC), &caps_all());
        s.apply_config(&StreamingConfig::from_json_value(json!({"conservative_memory": false})).unwrap());
        assert!(!s.conservative_memory);
        assert!(
            s.default_memory_limit_mb > BrowserProfile::detect(Some(SAFARI_MAC), &caps_all()).default_memory_limit_mb
        );

        // No overrides: unchanged.
        let mut q = before.clone();
        q.apply_config(&StreamingConfig::default());
        assert_eq!(q, before);
    }

    #[test]
    fn from_config_forces_or_disables_profiles() {
        let forced = StreamingConfig::from_json_value(json!({"optimizeForBrowser": "safari"})).unwrap();
        let p = BrowserProfile::from_config(Some(CHROME_WINDOWS), &caps_all(), &forced);
        assert_eq!(p.browser, BrowserName::Safari);
        assert_eq!(p.workgroup_size, [64, 1, 1]);

        let off = StreamingConfig::from_json_value(json!({"browserOptimizations": false})).unwrap();
        let p = BrowserProfile::from_config(Some(SAFARI_MAC), &caps_all(), &off);
        assert_eq!(p.browser, BrowserName::Safari, "the name stays for stats");
        assert_eq!(p.workgroup_size, [128, 1, 1]);
        assert!(!p.conservative_memory);

        let p = BrowserProfile::from_config(Some(FIREFOX_WINDOWS), &caps_all(), &StreamingConfig::default());
        assert_eq!(p, BrowserProfile::detect(Some(FIREFOX_WINDOWS), &caps_all()));
    }

    #[test]
    fn budgets_prefer_the_config() {
        let p = BrowserProfile::detect(None, &caps_all());
        let d = StreamingConfig::default();
        assert_eq!(p.memory_limit_mb(&d), p.default_memory_limit_mb);
        assert_eq!(p.kv_cache_mb(&d), p.default_kv_cache_mb);
        let c = StreamingConfig::from_json_value(json!({"memoryLimitMb": 300, "maxKvCacheMb": 200})).unwrap();
        assert_eq!((p.memory_limit_mb(&c), p.kv_cache_mb(&c)), (300, 200));
        let c = StreamingConfig::from_json_value(json!({"memoryLimitMb": 100})).unwrap();
        assert_eq!(p.kv_cache_mb(&c), 100, "never above the memory budget");
    }
}
