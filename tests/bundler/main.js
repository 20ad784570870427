// The package's documented entry, resolved by the bundler from node_modules.
import init, { WebGPUStreamingInference } from "webgpu-streaming-inference";

await init();
const llm = new WebGPUStreamingInference("models/SmolLM2-135M-Instruct.Q4_1.gguf", { quantization: "int4" });
document.body.textContent = typeof llm.load === "function" ? "ok" : "missing load()";
