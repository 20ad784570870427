// Demo page: load a GGUF model into the WebGPUStreamingInference class and stream tokens.
// Plain ES module; the package comes from `wasm-pack build --target web --out-dir www/pkg`.
import init, { WebGPUStreamingInference } from "./pkg/wsi.js";

const $ = (id) => document.getElementById(id);
const ui = {
  url: $("model-url"), quantization: $("quantization"), profile: $("profile"), load: $("load"),
  progressWrap: $("progress-wrap"), progress: $("progress"), progressText: $("progress-text"),
  prompt: $("prompt"), maxTokens: $("max-tokens"), temperature: $("temperature"),
  generate: $("generate"), stop: $("stop"), output: $("output"), error: $("error"), chart: $("chart"),
  first: $("s-first"), tps: $("s-tps"), tokens: $("s-tokens"), memory: $("s-memory"),
  profileOut: $("s-profile"), adapter: $("s-adapter"), finish: $("s-finish"),
};

let llm = null;
let latencies = [];

const params = new URLSearchParams(location.search);
if (params.has("model")) ui.url.value = params.get("model");
if (params.has("quantization")) ui.quantization.value = params.get("quantization");

function showError(err) {
  const code = err && err.code ? `[${err.code}] ` : "";
  ui.error.textContent = `${code}${err && err.message ? err.message : String(err)}`;
  ui.error.hidden = false;
  console.error(err);
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
}

const mib = (bytes) => `${(bytes / 1048576).toFixed(1)} MiB`;

function showStats() {
  if (!llm) return;
  const s = llm.getPerformanceStats();
  ui.first.textContent = s.first_token_latency_ms > 0 ? `${s.first_token_latency_ms.toFixed(0)} ms` : "–";
  ui.tps.textContent = s.tokens_per_second > 0 ? `${s.tokens_per_second.toFixed(2)} tok/s` : "–";
  ui.tokens.textContent = `${s.tokens_generated} generated / ${s.prompt_tokens} prompt`;
  ui.memory.textContent = `${s.peak_memory_mb.toFixed(0)} MiB (weights ${s.model_memory_mb.toFixed(0)}, KV ${s.kv_cache_mb.toFixed(0)})`;
  ui.profileOut.textContent = `${s.browser}, ${s.quantization}, workgroup ${s.workgroup_size.join("×")}`;
  ui.adapter.textContent = s.adapter || "–";
  ui.finish.textContent = s.finish_reason ?? (llm.isGenerating ? "running" : "–");
}

function drawChart() {
  const c = ui.chart, g = c.getContext("2d");
  const w = c.width, h = c.height;
  g.clearRect(0, 0, w, h);
  if (latencies.length === 0) return;
  const max = Math.max(...latencies, 1);
  const bw = Math.max(1, Math.min(12, w / latencies.length));
  const shown = latencies.slice(-Math.floor(w / bw));
  g.fillStyle = "#1f6feb";
  shown.forEach((v, i) => {
    const bh = Math.max(1, (v / max) * (h - 14));
    g.fillRect(i * bw, h - bh, Math.max(1, bw - 1), bh);
  });
  g.fillStyle = "#57606a";
  g.font = "11px system-ui";
  g.fillText(`max ${max.toFixed(0)} ms`, 4, 11);
}

function setBusy(generating) {
  ui.generate.disabled = generating || !llm;
  ui.stop.disabled = !generating;
  ui.load.disabled = generating;
  ui.output.classList.toggle("running", generating);
}

async function load() {
  clearError();
  ui.load.disabled = true;
  ui.generate.disabled = true;
  ui.progressWrap.hidden = false;
  ui.progress.value = 0;
  const config = { quantization: ui.quantization.value, temperature: 0.7 };
  if (ui.profile.value) config.optimizeForBrowser = ui.profile.value;
  try {
    if (llm) llm.free();
    llm = null;
    llm = new WebGPUStreamingInference(new URL(ui.url.value, location.href).href, config);
    llm.onError = (info) => console.warn("onError", info);
    llm.onMemoryPressure = (info) => showError({ code: "memory_pressure", message: `${info.level}: ${info.message} (${info.action})` });
    llm.onTimeout = (info) => showError({ code: "timeout", message: info.message });
    const info = await llm.load((p) => {
      ui.progress.value = p.progress;
      ui.progressText.textContent = p.phase === "download"
        ? `${p.source === "cache" ? "reading cache" : "downloading"} ${mib(p.loaded)}${p.total ? ` / ${mib(p.total)}` : ""}`
        : `uploading to the GPU: layer ${p.loaded} / ${p.total}`;
    });
    ui.progress.value = 1;
    ui.progressText.textContent = `loaded ${mib(info.bytes)} from the ${info.source} in ${(info.total_ms / 1000).toFixed(1)} s`;
    document.body.dataset.loaded = "true";
    showStats();
  } catch (err) {
    llm = null;
    ui.progressText.textContent = "load failed";
    showError(err);
  } finally {
    ui.load.disabled = false;
    setBusy(false);
  }
}

async function generate() {
  if (!llm) return;
  clearError();
  ui.output.textContent = "";
  latencies = [];
  drawChart();
  const chat = document.querySelector("input[name=mode]:checked").value === "chat";
  const options = {
    maxTokens: Number(ui.maxTokens.value) || 64,
    temperature: Number(ui.temperature.value),
    chat,
  };
  setBusy(true);
  document.body.dataset.generating = "true";
  let last = performance.now();
  try {
    await llm.generate(ui.prompt.value, options, (piece, tokenId) => {
      ui.output.textContent += piece;
      if (tokenId !== undefined) {
        const now = performance.now();
        latencies.push(now - last);
        last = now;
        drawChart();
      }
      showStats();
    });
  } catch (err) {
    showError(err);
  } finally {
    delete document.body.dataset.generating;
    setBusy(false);
    showStats();
    document.body.dataset.done = String(Number(document.body.dataset.done || 0) + 1);
  }
}

ui.load.addEventListener("click", load);
ui.generate.addEventListener("click", generate);
ui.stop.addEventListener("click", () => llm && llm.stop());
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !ui.generate.disabled) generate();
});

try {
  await init();
  if (!navigator.gpu) {
    showError({ code: "webgpu_unavailable", message: "This browser has no WebGPU (navigator.gpu is undefined). Use a recent Chrome, Edge, Firefox or Safari in a secure context (https or localhost)." });
  }
  document.body.dataset.ready = "true";
  if (params.has("autoload")) load();
} catch (err) {
  showError(err);
}
