// End-to-end test of the demo page (www/) in headless Chromium with WebGPU on SwiftShader:
// load the model, generate, check that streamed text appears and the stats update, save a
// screenshot. Run through tests/e2e/run.sh (which builds the package and serves www).
//   DEMO_URL (default http://127.0.0.1:8090/)  CHROMIUM (default /usr/bin/chromium)
//   OUT (default tests/e2e/out)  E2E_TIMEOUT_MS (default 600000)
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const here = dirname(fileURLToPath(import.meta.url));
const url = process.env.DEMO_URL ?? "http://127.0.0.1:8090/";
const out = process.env.OUT ?? join(here, "out");
const timeout = Number(process.env.E2E_TIMEOUT_MS ?? 600000);
mkdirSync(out, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"],
});
const failures = [];
const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
page.on("console", (m) => console.log(`[page ${m.type()}] ${m.text()}`));
page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));

const step = (name) => console.log(`e2e: ${name}`);
try {
  step(`open ${url}`);
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]", { timeout: 60000 });
  assert.equal(await page.isVisible("#error"), false, "no error before loading");

  step("load the model (progress bar)");
  await page.selectOption("#quantization", "fp16");
  await page.click("#load");
  await page.waitForSelector("#progress-wrap:not([hidden])");
  await page.waitForSelector("body[data-loaded=true]", { timeout });
  const progressText = await page.textContent("#progress-text");
  console.log(`e2e: ${progressText}`);
  assert.match(progressText, /^loaded 93\.8 MiB from the (network|cache)/);
  assert.equal(await page.evaluate(() => document.getElementById("progress").value), 1);
  assert.ok(await page.isEnabled("#generate"), "Generate is enabled after load");

  step("generate (chat mode, greedy, 16 tokens)");
  await page.fill("#prompt", "What is 2+2?");
  await page.fill("#max-tokens", "16");
  await page.fill("#temperature", "0");
  await page.click("#generate");
  // Streamed text shows up while the generation still runs.
  await page.waitForFunction(
    () => document.getElementById("output").textContent.length > 0 && document.body.dataset.generating === "true",
    null,
    { timeout },
  );
  const partial = await page.textContent("#output");
  const liveTokens = await page.textContent("#s-tokens");
  console.log(`e2e: streaming: ${JSON.stringify(partial)} (${liveTokens})`);
  await page.waitForSelector("body[data-done]", { timeout });
  const text = await page.textContent("#output");
  console.log(`e2e: output ${JSON.stringify(text)}`);
  assert.ok(text.startsWith(partial), "the final text extends what streamed in");
  assert.ok(text.length > partial.length || text.length > 0);
  assert.match(text, /4/, "SmolLM2 answers 2+2");

  step("stats updated");
  const stats = await page.evaluate(() => ({
    first: document.getElementById("s-first").textContent,
    tps: document.getElementById("s-tps").textContent,
    tokens: document.getElementById("s-tokens").textContent,
    memory: document.getElementById("s-memory").textContent,
    profile: document.getElementById("s-profile").textContent,
    finish: document.getElementById("s-finish").textContent,
    bars: (() => {
      const c = document.getElementById("chart");
      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
      return n;
    })(),
  }));
  console.log(`e2e: stats ${JSON.stringify(stats)}`);
  assert.match(stats.first, /^\d+ ms$/);
  assert.match(stats.tps, /^\d+\.\d+ tok\/s$/);
  assert.match(stats.tokens, /^\d+ generated \/ \d+ prompt$/);
  assert.match(stats.memory, /MiB/);
  assert.match(stats.profile, /^chrome, fp16, workgroup /);
  assert.match(stats.finish, /^(stop|length)$/);
  assert.ok(stats.bars > 0, "the latency chart has bars");
  assert.equal(await page.isVisible("#error"), false, "no error shown");

  step("the page's defaults (int4, device auto): the CPU backend on SwiftShader");
  await page.goto(url);
  await page.waitForSelector("body[data-ready=true]", { timeout: 60000 });
  assert.equal(await page.inputValue("#quantization"), "int4");
  assert.equal(await page.inputValue("#device"), "auto");
  await page.click("#load");
  await page.waitForSelector("body[data-loaded=true]", { timeout });
  await page.fill("#prompt", "What is 2+2?");
  await page.fill("#max-tokens", "16");
  await page.fill("#temperature", "0");
  await page.click("#generate");
  await page.waitForSelector("body[data-done]", { timeout });
  const cpuText = await page.textContent("#output");
  const cpu = await page.evaluate(() => ({
    tps: document.getElementById("s-tps").textContent,
    profile: document.getElementById("s-profile").textContent,
  }));
  console.log(`e2e: defaults: ${JSON.stringify(cpuText)} ${JSON.stringify(cpu)}`);
  assert.match(cpuText, /4/, "SmolLM2 answers 2+2 on the CPU");
  assert.match(cpu.profile, /^chrome, int4, .*\(cpu\)$/);
  assert.match(cpu.tps, /^\d+\.\d+ tok\/s$/);
  assert.equal(await page.isVisible("#error"), false, "no error shown");
} catch (e) {
  failures.push(e.stack ?? String(e));
} finally {
  const shot = join(out, "demo.png");
  await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
  console.log(`e2e: screenshot ${shot}`);
  await browser.close();
}
if (failures.length) {
  console.error(`e2e: FAILED\n${failures.join("\n")}`);
  process.exit(1);
}
console.log("e2e: passed");
