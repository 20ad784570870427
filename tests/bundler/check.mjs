// Opens the bundled page in headless Chromium (playwright-core from tests/e2e) and waits for
// the module to instantiate the wasm and construct the class.
import { createRequire } from "node:module";
const require = createRequire(new URL("../e2e/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const url = process.env.BUNDLE_URL;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
});
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => document.body && document.body.textContent === "ok", null, { timeout: 60000 });
  if (errors.length) throw new Error(errors.join("; "));
  console.log("bundler: the bundled page instantiated the package");
} finally {
  await browser.close();
}
