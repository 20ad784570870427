// Bench page: the browser counterpart of `wsi bench`. Loads a model, runs one short warm-up
// generation (pipelines, first-use costs), then `runs` greedy generations of `tokens` tokens,
// and writes {adapter, load_ms, runs: [getPerformanceStats()...], best} as JSON into #result
// (document.title becomes "done" or "error"), so a WebDriver script can read it.
// `?device=cpu` (or "device" in `?config=`) runs the CPU backend; without a quantization it
// runs int4 there, since the default fp16 does not run on the CPU.
import init, { WebGPUStreamingInference } from "./pkg/wsi.js";

const q = new URLSearchParams(location.search);
const model = new URL(q.get("model") ?? "models/SmolLM2-135M-Instruct.Q4_1.gguf", location.href).href;
const tokens = Number(q.get("tokens") ?? 32);
const runs = Number(q.get("runs") ?? 2);
const prompt = q.get("prompt") ?? "Once upon a time, there was a little cat named";
const config = JSON.parse(q.get("config") ?? "{}");
if (q.has("quantization")) config.quantization = q.get("quantization");
if (q.has("device")) config.device = q.get("device");
if (String(config.device ?? "").toLowerCase() === "cpu" && config.quantization === undefined) config.quantization = "int4";

const log = (line) => {
  document.getElementById("log").textContent += `${line}\n`;
};

async function main() {
  await init();
  const llm = new WebGPUStreamingInference(model, config);
  const t0 = performance.now();
  await llm.load();
  const loadMs = performance.now() - t0;
  log(`loaded in ${loadMs.toFixed(0)} ms`);
  await llm.generate(prompt, { max_tokens: 4, temperature: 0 });
  const results = [];
  for (let i = 0; i < runs; i++) {
    // The CPU engine keeps the KV cache of the prefix a prompt shares with the last context;
    // a one-token generation from another prompt first makes every timed prefill cold.
    await llm.generate("Hello", { max_tokens: 1, temperature: 0 });
    const text = await llm.generate(prompt, { max_tokens: tokens, temperature: 0 });
    const s = llm.getPerformanceStats();
    results.push({ ...s, text });
    log(`run ${i + 1} (${s.device}): ${s.tokens_per_second.toFixed(2)} tok/s, first token ${s.first_token_latency_ms.toFixed(0)} ms`);
  }
  const best = results.reduce((a, b) => (b.tokens_per_second > a.tokens_per_second ? b : a));
  return {
    user_agent: navigator.userAgent,
    device: best.device,
    adapter: best.adapter,
    quantization: best.quantization,
    load_ms: loadMs,
    decode_tokens_per_second: best.tokens_per_second,
    first_token_latency_ms: Math.min(...results.map((r) => r.first_token_latency_ms)),
    prefill_tokens_per_second: best.prefill_tokens_per_second,
    runs: results,
  };
}

main().then(
  (out) => {
    document.getElementById("result").textContent = JSON.stringify(out);
    document.title = "done";
  },
  (err) => {
    document.getElementById("result").textContent = JSON.stringify({ error: err?.code ?? "error", message: String(err?.message ?? err) });
    document.title = "error";
  },
);
