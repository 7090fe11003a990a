// The browser app end to end: serves the repository on localhost, opens web/index.html in headless
// Debian Chromium with WebGPU on SwiftShader, lets the scripted session load the default model,
// send the sample image and a question, and waits for the streamed answer. Checks it equals the
// native answer, saves a screenshot, then reloads and checks the model came from the Cache API.
//
// usage: node web/browser-test.mjs EXPECTED_ANSWER SCREENSHOT.png   (run web/build.sh first)
import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize, resolve } from "node:path";

const [expected, screenshot] = process.argv.slice(2);
if (!expected || !screenshot) {
  console.error("usage: node web/browser-test.mjs EXPECTED_ANSWER SCREENSHOT.png");
  process.exit(2);
}
const root = resolve(new URL("..", import.meta.url).pathname);
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm",
  ".json": "application/json", ".png": "image/png" };

// A static server for the repository (the page, web/pkg, assets/), counting weight downloads.
let weightRequests = 0;
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname));
  if (path.endsWith(".safetensors")) weightRequests++;
  try {
    const body = await readFile(join(root, path));
    res.writeHead(200, { "content-type": types[extname(path)] ?? "application/octet-stream" });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const port = server.address().port;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--enable-unsafe-webgpu",
    "--enable-features=Vulkan", "--use-vulkan=swiftshader", "--use-gl=angle",
    "--use-angle=swiftshader"],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 720 } });
  page.on("console", (m) => console.log(`[page] ${m.text()}`));
  page.on("pageerror", (e) => console.log(`[page error] ${e}`));
  const url = `http://127.0.0.1:${port}/web/index.html?image=../assets/samples/shapes.png` +
    `&ask=${encodeURIComponent("What color is the shape?")}`;
  const run = async () => {
    const started = Date.now();
    await page.waitForSelector('#result[data-done="1"]', { state: "attached", timeout: 900_000 });
    const report = JSON.parse(await page.textContent("#result"));
    report.seconds = (Date.now() - started) / 1000;
    return report;
  };
  await page.goto(url);
  const first = await run();
  console.log("browser report:", JSON.stringify(first));
  await page.screenshot({ path: screenshot });
  if (first.error || first.answer !== expected) {
    console.error(`FAIL: the browser answered ${JSON.stringify(first)}, native answer ${JSON.stringify(expected)}`);
    failed = true;
  }
  const downloads = weightRequests;
  await page.reload();
  const second = await run();
  console.log("after reload:", JSON.stringify(second), `weight downloads: ${downloads} then ${weightRequests - downloads}`);
  if (second.answer !== expected || weightRequests !== downloads) {
    console.error("FAIL: after a reload the model must come from the browser's cache and answer the same");
    failed = true;
  }
} finally {
  await browser.close();
  server.close();
}
if (failed) process.exit(1);
console.log(`PASS: browser answer ${JSON.stringify(expected)}; screenshot ${screenshot}`);
