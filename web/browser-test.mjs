// The browser app end to end: serves the repository on localhost, opens web/index.html in headless
// Debian Chromium with WebGPU on SwiftShader, lets the scripted session load the default model,
// send the sample image and a question, and waits for the streamed answer. Checks it equals the
// CPU library's (the same text and token ids, log-probabilities within 1e-3; the window test
// writes them to library.json), saves a screenshot, then reloads and checks the model came from
// the Cache API (the first load downloaded the weights, the second none) and answers the same.
//
// usage: node web/browser-test.mjs LIBRARY.json SCREENSHOT.png   (run web/build.sh first)
import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize, resolve } from "node:path";

const [libraryPath, screenshot] = process.argv.slice(2);
if (!libraryPath || !screenshot) {
  console.error("usage: node web/browser-test.mjs LIBRARY.json SCREENSHOT.png");
  process.exit(2);
}
const library = JSON.parse(await readFile(libraryPath, "utf8"));
const expected = library.answer;

// Where `report` differs from the library's answer: a list of problems, empty when it matches.
function differences(report) {
  const problems = [];
  if (report.error) problems.push(`error ${JSON.stringify(report.error)}`);
  if (report.answer !== library.answer) problems.push(`answer ${JSON.stringify(report.answer)}`);
  if (JSON.stringify(report.ids) !== JSON.stringify(library.ids)) {
    problems.push(`ids ${JSON.stringify(report.ids)} against ${JSON.stringify(library.ids)}`);
  } else {
    const worst = Math.max(0, ...report.logprobs.map((lp, i) => Math.abs(lp - library.logprobs[i])));
    console.log(`ids equal the library's, logprobs within ${worst.toExponential(2)}`);
    if (!(worst <= 1e-3)) problems.push(`logprobs differ by ${worst}`);
  }
  return problems;
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
  const firstProblems = differences(first);
  if (firstProblems.length) {
    console.error(`FAIL: the browser's answer differs from the library's: ${firstProblems.join("; ")}`);
    failed = true;
  }
  const downloads = weightRequests;
  if (downloads < 1) {
    console.error("FAIL: the first load downloaded no weights (a stale cache would hide the download path)");
    failed = true;
  }
  await page.reload();
  const second = await run();
  console.log("after reload:", JSON.stringify(second), `weight downloads: ${downloads} then ${weightRequests - downloads}`);
  const secondProblems = differences(second);
  if (secondProblems.length || weightRequests !== downloads) {
    console.error(`FAIL: after reload: ${secondProblems.join("; ")}`);
    console.error("FAIL: after a reload the model must come from the browser's cache and answer the same");
    failed = true;
  }
} finally {
  await browser.close();
  server.close();
}
if (failed) process.exit(1);
console.log(`PASS: browser answer ${JSON.stringify(expected)}; screenshot ${screenshot}`);
