#!/usr/bin/env python3
"""Throughput of `idefics2 serve` under concurrent clients (a benchmark, not a test).

Starts the server on the default model, warms it up, then for 1, 4 and 16 concurrent clients each
sending --requests streamed requests (the `text_generation` client's `generate_stream`, one image
each, sampled so that every request generates --max-new-tokens tokens) prints requests/s, total
generated tokens/s, and time to first token p50/p95, as a markdown table.

  python scripts/bench-server.py --binary "$CARGO_TARGET_DIR/release/idefics2" --device cpu

Needs the Python clients of tests/server/requirements.txt (.ci/run's virtual environment).
"""

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import time
import urllib.request

from text_generation import AsyncClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = ["shapes.png", "several.png", "tall.png", "wide.png"]


def data_uri(name):
    with open(os.path.join(REPO, "assets", "samples", name), "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode()


def start_server(args):
    command = [args.binary, "serve", "--port", "0", "--device", args.device, "--max-batch-size", "16"]
    if args.no_prefix_reuse:
        command += ["--prefix-cache-tokens", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    url = line.strip().rsplit(" ", 1)[-1]
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(url + "/health").status == 200:
                return server, url
        except Exception:
            time.sleep(0.2)
    server.kill()
    sys.exit("the server never became healthy")


async def one_request(client, prompt, seed, max_new_tokens):
    start = time.perf_counter()
    first = None
    tokens = 0
    async for event in client.generate_stream(
        prompt, max_new_tokens=max_new_tokens, do_sample=True, temperature=50.0, seed=seed
    ):
        if first is None:
            first = time.perf_counter() - start
        tokens += 1
    return first, tokens


async def run(url, clients, requests, max_new_tokens, prompts):
    client = AsyncClient(url, timeout=600)

    async def worker(index):
        results = []
        for r in range(requests):
            prompt = prompts[(index + r) % len(prompts)]
            results.append(await one_request(client, prompt, 1000 * index + r, max_new_tokens))
        return results

    start = time.perf_counter()
    per_client = await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - start
    results = [r for rs in per_client for r in rs]
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    p95 = ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))]
    return {
        "clients": clients,
        "requests": len(results),
        "wall": wall,
        "requests_per_s": len(results) / wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": p95,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--no-prefix-reuse",
        action="store_true",
        help="every request encodes its image (the prompts repeat, so reuse would skip that)",
    )
    args = parser.parse_args()
    server, url = start_server(args)
    try:
        prompts = [
            f"User:![]({data_uri(name)})What color is the shape?<end_of_utterance>\nAssistant:"
            for name in IMAGES
        ]
        # Warm-up: on a GPU every batch size compiles and autotunes its kernels once.
        widest = max(int(c) for c in args.clients.split(","))
        asyncio.run(run(url, 1, 1, args.max_new_tokens, prompts))
        asyncio.run(run(url, widest, 1, args.max_new_tokens, prompts))
        rows = [
            asyncio.run(run(url, int(c), args.requests, args.max_new_tokens, prompts))
            for c in args.clients.split(",")
        ]
    finally:
        server.terminate()
        server.wait()
    base = rows[0]["tokens_per_s"]
    reuse = "off" if args.no_prefix_reuse else "on"
    print(f"device: {args.device}; {args.requests} requests per client, {args.max_new_tokens} tokens each, one image each, prefix reuse {reuse}")
    print("| clients | requests/s | tokens/s | x one client | TTFT p50 (s) | TTFT p95 (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['clients']} | {row['requests_per_s']:.2f} | {row['tokens_per_s']:.1f} | "
            f"{row['tokens_per_s'] / base:.1f} | {row['ttft_p50']:.3f} | {row['ttft_p95']:.3f} |"
        )


if __name__ == "__main__":
    main()
