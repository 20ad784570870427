// The demo page with the `wsi serve` backend: the page comes from `wsi serve` itself and
// streams a greedy continuation over its WebSocket (/generate of the same host), with
// pause, resume and the completion's stats. Run by tests/e2e/run.sh after demo.test.mjs.
//   DEMO_WS_URL (default http://127.0.0.1:8092/)  CHROMIUM (default /usr/bin/chromium)
import { chromium } from "playwright-core";
import assert from "node:assert/strict";

const url = process.env.DEMO_WS_URL ?? "http://127.0.0.1:8092/";
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
const failures = [];
const page = await browser.newPage();
page.on("console", (m) => console.log(`[page ${m.type()}] ${m.text()}`));
page.on("pageerror", (e) => failures.push(`page error: ${e.message}`));
try {
  console.log(`e2e-ws: open ${url}?backend=ws`);
  await page.goto(`${url}?backend=ws`);
  await page.waitForSelector("body[data-ready=true]", { timeout: 60000 });
  assert.equal(await page.inputValue("#ws-url"), `${url.replace("http", "ws")}generate`);
  assert.ok(await page.isHidden("#page-setup"), "the in-page model controls are hidden");
  await page.check("input[name=mode][value=prompt]");
  await page.fill("#prompt", "Once upon a time, there was a little cat named");
  await page.fill("#max-tokens", "24");
  await page.fill("#temperature", "0");
  await page.click("#generate");
  // Pause as soon as text streams, resume, and the whole text still comes.
  await page.waitForFunction(() => document.getElementById("output").textContent.length > 0, null, { timeout: 60000 });
  await page.click("#pause");
  await page.waitForFunction(() => document.getElementById("s-finish").textContent === "paused", null, { timeout: 60000 });
  await page.click("#pause");
  await page.waitForSelector("body[data-done]", { timeout: 120000 });
  const text = await page.textContent("#output");
  console.log(`e2e-ws: ${JSON.stringify(text)}`);
  assert.ok(text.startsWith(" Max who lived in a big"), text);
  assert.match(await page.textContent("#s-finish"), /^(length|stop)$/);
  assert.match(await page.textContent("#s-tokens"), /^\d+ generated \/ \d+ prompt$/);
  assert.match(await page.textContent("#s-profile"), /fp32, context \d+/);
  assert.equal(await page.isVisible("#error"), false, await page.textContent("#error"));
} catch (e) {
  failures.push(e.stack ?? String(e));
} finally {
  await browser.close();
}
if (failures.length) {
  console.error(failures.join("\n"));
  process.exit(1);
}
console.log("e2e-ws: pass");
