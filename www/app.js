// Demo page: load a GGUF model into the WebGPUStreamingInference class and stream tokens,
// or stream them from a `wsi serve` backend over its WebSocket protocol (?backend=ws).
// Plain ES module; the package comes from `wasm-pack build --target web --out-dir www/pkg`.
import init, { WebGPUStreamingInference } from "./pkg/wsi.js";

const $ = (id) => document.getElementById(id);
const ui = {
  url: $("model-url"), quantization: $("quantization"), device: $("device"), profile: $("profile"), load: $("load"),
  progressWrap: $("progress-wrap"), progress: $("progress"), progressText: $("progress-text"),
  prompt: $("prompt"), maxTokens: $("max-tokens"), temperature: $("temperature"),
  generate: $("generate"), stop: $("stop"), output: $("output"), error: $("error"), chart: $("chart"),
  first: $("s-first"), tps: $("s-tps"), tokens: $("s-tokens"), memory: $("s-memory"),
  profileOut: $("s-profile"), adapter: $("s-adapter"), finish: $("s-finish"),
  backend: $("backend"), wsUrl: $("ws-url"), wsSetup: $("ws-setup"), pageSetup: $("page-setup"), pause: $("pause"),
};

let llm = null;
let latencies = [];

const params = new URLSearchParams(location.search);
if (params.has("model")) ui.url.value = params.get("model");
if (params.has("quantization")) ui.quantization.value = params.get("quantization");
if (params.has("device")) ui.device.value = params.get("device");
// The CPU runs int4 and int8 only: picking it moves other precisions to int4.
ui.device.addEventListener("change", () => {
  if (ui.device.value === "cpu" && !["int4", "int8"].includes(ui.quantization.value)) ui.quantization.value = "int4";
});
// `wsi serve` serves this page and the protocol on /generate of the same host.
ui.wsUrl.value = params.get("ws") ??
  (location.protocol.startsWith("http") ? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/generate` : "ws://127.0.0.1:8765/generate");
if (params.get("backend") === "ws") ui.backend.value = "ws";
const useWs = () => ui.backend.value === "ws";

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
  ui.profileOut.textContent = `${s.browser}, ${s.quantization}, workgroup ${s.workgroup_size.join("×")} (${s.device})`;
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
  ui.generate.disabled = generating || !(llm || useWs());
  ui.stop.disabled = !generating;
  ui.pause.disabled = !generating;
  ui.pause.hidden = !useWs();
  if (!generating) ui.pause.textContent = "Pause";
  ui.load.disabled = generating;
  ui.output.classList.toggle("running", generating);
}

async function load() {
  clearError();
  ui.load.disabled = true;
  ui.generate.disabled = true;
  ui.progressWrap.hidden = false;
  ui.progress.value = 0;
  const config = { quantization: ui.quantization.value, device: ui.device.value, temperature: 0.7 };
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
        : ui.device.value === "gpu"
          ? `uploading to the GPU: layer ${p.loaded} / ${p.total}`
          : `preparing the weights: ${p.loaded} / ${p.total}`;
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
  if (useWs()) return generateOverWebSocket();
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

// --- The `wsi serve` backend: one socket, requests in turn (DESIGN.md §5). ---
let socket = null;

function openSocket() {
  if (socket && socket.readyState === WebSocket.OPEN) return Promise.resolve(socket);
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(ui.wsUrl.value);
    ws.onopen = () => { socket = ws; resolve(ws); };
    ws.onerror = () => reject({ code: "connection", message: `cannot connect to ${ui.wsUrl.value} (is \`wsi serve\` running?)` });
  });
}

function sendControl(action) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "control", action }));
}

async function generateOverWebSocket() {
  clearError();
  ui.output.textContent = "";
  latencies = [];
  drawChart();
  const chat = document.querySelector("input[name=mode]:checked").value === "chat";
  const config = {
    type: "config",
    prompt: ui.prompt.value,
    max_tokens: Number(ui.maxTokens.value) || 64,
    temperature: Number(ui.temperature.value),
    chat,
  };
  setBusy(true);
  document.body.dataset.generating = "true";
  const t0 = performance.now();
  let last = t0, tokens = 0;
  try {
    const ws = await openSocket();
    await new Promise((resolve, reject) => {
      ws.onclose = () => { socket = null; reject({ code: "connection", message: "the server closed the connection" }); };
      ws.onmessage = (e) => {
        const f = JSON.parse(e.data);
        if (f.type === "init") {
          const m = f.model_info;
          ui.profileOut.textContent = `${m.name}, ${m.quantization}, context ${m.context_length}`;
          ui.adapter.textContent = `wsi serve at ${ui.wsUrl.value}`;
          ui.memory.textContent = "–";
          ui.finish.textContent = "running";
        } else if (f.type === "status") {
          ui.finish.textContent = f.operation;
        } else if (f.type === "token") {
          ui.output.textContent = f.generated_text;
          if (f.token_id !== null) {
            const now = performance.now();
            if (tokens === 0) ui.first.textContent = `${(now - t0).toFixed(0)} ms`;
            latencies.push(now - last);
            last = now;
            tokens += 1;
            ui.tokens.textContent = `${tokens} generated`;
            drawChart();
          }
        } else if (f.type === "completion") {
          ui.output.textContent = f.generated_text;
          const u = f.usage;
          ui.tokens.textContent = `${u.completion_tokens} generated / ${u.prompt_tokens} prompt`;
          if (f.timing) ui.tps.textContent = `${f.timing.tokens_per_second.toFixed(2)} tok/s`;
          ui.finish.textContent = f.finish_reason;
          resolve();
        } else if (f.type === "error") {
          reject({ code: f.error, message: f.message });
        }
      };
      ws.send(JSON.stringify(config));
    });
  } catch (err) {
    showError(err);
  } finally {
    delete document.body.dataset.generating;
    setBusy(false);
    document.body.dataset.done = String(Number(document.body.dataset.done || 0) + 1);
  }
}

function showBackend() {
  ui.wsSetup.hidden = !useWs();
  ui.pageSetup.hidden = useWs();
  setBusy(false);
}

ui.backend.addEventListener("change", showBackend);
ui.pause.addEventListener("click", () => {
  const paused = ui.pause.textContent === "Resume";
  sendControl(paused ? "resume" : "pause");
  ui.pause.textContent = paused ? "Pause" : "Resume";
});
ui.load.addEventListener("click", load);
ui.generate.addEventListener("click", generate);
ui.stop.addEventListener("click", () => (useWs() ? sendControl("stop") : llm && llm.stop()));
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !ui.generate.disabled) generate();
});

try {
  await init();
  if (!navigator.gpu) {
    showError({ code: "webgpu_unavailable", message: "This browser has no WebGPU (navigator.gpu is undefined). Use a recent Chrome, Edge, Firefox or Safari in a secure context (https or localhost)." });
  }
  showBackend();
  document.body.dataset.ready = "true";
  if (params.has("autoload") && !useWs()) load();
} catch (err) {
  showError(err);
}
