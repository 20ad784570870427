//! TypeScript declarations for what the class takes and returns (added to the generated
//! `wsi.d.ts`). Config and option keys are typed in snake_case and, through
//! `Camelize`, in camelCase.

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = r#"
type SnakeToCamel<S extends string> = S extends `${infer H}_${infer T}` ? `${H}${Capitalize<SnakeToCamel<T>>}` : S;
/** The same keys in camelCase (`top_p` -> `topP`). */
export type Camelize<T> = { [K in keyof T as SnakeToCamel<K & string>]: T[K] };

export type Quantization = "fp32" | "fp16" | "int8" | "int4" | "int3" | "int2" | "mixed";
/** Where the model runs: WebGPU, the CPU (WebAssembly SIMD; int4 or int8 only), or the CPU when
 * the only WebGPU adapter is a software rasteriser (or there is no WebGPU) and the quantization
 * is one the CPU runs. */
export type Device = "gpu" | "cpu" | "auto";
export type BrowserName = "chrome" | "edge" | "firefox" | "safari";
export type DetectedBrowser = BrowserName | "other" | "native";

/** Every option of the engine (DESIGN.md §3); `null` means "the default". */
export interface StreamingConfigOptions {
  /** Default "gpu". */
  device?: Device;
  quantization?: Quantization;
  attention_precision?: Exclude<Quantization, "mixed"> | null;
  feedforward_precision?: Exclude<Quantization, "mixed"> | null;
  kv_cache_optimization?: boolean;
  kv_cache_strategy?: "static" | "dynamic" | "progressive";
  max_kv_cache_mb?: number | null;
  optimize_compute_transfer?: boolean;
  optimize_for_latency?: boolean;
  adaptive_batch_size?: boolean;
  initial_batch_size?: number;
  min_batch_size?: number;
  max_batch_size?: number;
  batch_size_strategy?: "performance" | "memory" | "balanced";
  browser_optimizations?: boolean;
  optimize_for_browser?: BrowserName | null;
  conservative_memory?: boolean | null;
  prefetch_enabled?: boolean;
  prefetch_size?: number;
  prefetch_strategy?: "fixed" | "adaptive" | "context-aware";
  token_prediction_enabled?: boolean;
  workgroup_size?: [number, number, number] | null;
  memory_limit_mb?: number | null;
  token_timeout_ms?: number | null;
  generation_timeout_ms?: number | null;
  max_tokens?: number | null;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  repetition_penalty?: number;
  seed?: number | string | null;
  stop?: string | string[];
}
/** Constructor config: snake_case or camelCase keys. */
export type StreamingConfig = StreamingConfigOptions & Camelize<StreamingConfigOptions>;

export interface ChatMessage { role: "system" | "user" | "assistant" | "tool"; content: string }

export interface GenerateOptionsSnake {
  max_tokens?: number;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  repetition_penalty?: number;
  seed?: number | string;
  stop?: string | string[];
  /** Chat messages: the model's chat template builds the prompt (the prompt argument, if not empty, is appended as a user message). */
  messages?: ChatMessage[];
  /** Wrap the prompt in the chat template as one user message. */
  chat?: boolean;
}
/** Per-call options: snake_case or camelCase keys. */
export type GenerateOptions = GenerateOptionsSnake & Camelize<GenerateOptionsSnake>;

/** Gets each piece of text as it is produced and its token id (none for the final flush). Return `false` to stop. */
export type TokenCallback = (piece: string, tokenId?: number) => boolean | void;

export interface LoadProgress {
  phase: "download" | "upload";
  /** Bytes (download), layers (upload to the GPU) or bytes of weights (repacking for the CPU) done. */
  loaded: number;
  /** Bytes or layers in all; 0 when the server sent no Content-Length. */
  total: number;
  /** loaded / total, 0..1. */
  progress: number;
  source?: "network" | "cache";
}

export interface LoadInfo {
  source: "network" | "cache";
  bytes: number;
  fetch_ms: number;
  upload_ms: number;
  total_ms: number;
}

/** Every figure measured (DESIGN.md §4). */
export interface PerformanceStats {
  /** The engine that ran: "gpu" or "cpu" (before load(), the config's value, which may be "auto"). */
  device: Device;
  tokens_generated: number;
  prompt_tokens: number;
  first_token_latency_ms: number;
  avg_token_latency_ms: number;
  tokens_per_second: number;
  prefill_tokens_per_second: number;
  generation_time_ms: number;
  prefetch_hit_rate: number;
  current_batch_size: number;
  batch_size_history: number[];
  kv_cache_mb: number;
  model_memory_mb: number;
  peak_memory_mb: number;
  quantization: string;
  kv_cache_strategy: string;
  browser: DetectedBrowser;
  adapter: string;
  workgroup_size: [number, number, number];
  latency_optimized: boolean;
  kv_cache_optimized: boolean;
  finish_reason: "stop" | "length" | "cancelled" | "timeout" | null;
  steps_per_submit?: number;
  in_flight?: number;
  submissions?: number;
  dispatches_per_token?: number;
  token_prediction?: boolean;
  prefetch_strategy?: "fixed" | "adaptive" | "context-aware";
  verify_passes?: number;
  tokens_proposed?: number;
  tokens_accepted?: number;
  /** Milliseconds spent quantising weights at load (GPU kernel), 0 when none needed it. */
  quantize_ms?: number;
}

export type ErrorCode =
  | "invalid_request" | "context_length_exceeded" | "memory_pressure" | "timeout" | "internal_error"
  | "model_loading_error" | "busy" | "webgpu_unavailable" | "gpu_error";

/** Thrown by the class (and the rejection value of its promises). */
export interface WsiError extends Error { code: ErrorCode; recoverable: boolean }

export interface ErrorInfo { code: ErrorCode; message: string; recoverable: boolean }
export interface MemoryPressureInfo {
  level: "warning" | "critical";
  message: string;
  current_mb: number;
  limit_mb: number;
  action: string;
}
export interface TimeoutInfo { message: string; elapsed_ms: number; limit_ms: number; tokens_generated: number }

/** The `options` object of a WebSocket `config` frame. */
export interface WebSocketStreamOptions {
  /** A `token` frame per token (default true); else only the `completion`. */
  stream?: boolean;
  /** `generated_text` starts with the prompt (default false). */
  echo_prompt?: boolean;
  /** The `completion` carries `timing` (default true). */
  include_timing?: boolean;
}
/** The second argument of `streamWebsocket`: defaults for every `config` frame on the socket. */
export type WebSocketRequestDefaults = GenerateOptions & {
  options?: WebSocketStreamOptions & Camelize<WebSocketStreamOptions>;
};
/** Frames the peer sends (DESIGN.md §5). */
export type WebSocketPeerFrame =
  | ({ type: "config"; prompt: string } & WebSocketRequestDefaults)
  | { type: "control"; action: "stop" | "pause" | "resume" };
/** Frames the engine sends (DESIGN.md §5). */
export type WebSocketEngineFrame =
  | { type: "init"; model_info: { name: string; quantization: string; context_length: number } }
  | { type: "status"; operation: string; progress: number | null; message: string }
  | { type: "token"; token: string; token_id: number | null; generated_text: string; finished: boolean }
  | {
      type: "completion";
      generated_text: string;
      usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
      finish_reason: "stop" | "length" | "cancelled" | "timeout";
      timing?: { first_token_latency_ms: number; generation_time_ms: number; tokens_per_second: number; segments: number };
    }
  | { type: "error"; error: ErrorCode; message: string; recoverable: boolean };
"#;
