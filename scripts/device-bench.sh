#!/usr/bin/env bash
# The benchmark for a Linux machine with an NVIDIA GPU: `idefics2 bench --synthetic idefics2-8b` (random
# weights of the real 8B shapes) in f16, q8 and q4 through wgpu/Vulkan, then transformers (PyTorch, CUDA)
# on the same shapes, prompt and 980x980 image; prints both side by side (and the kernel figures).
#
#   scripts/device-bench.sh [LAYERS]      # LAYERS: decoder layers kept (default 32 = the whole model)
#
# IDEFICS2_BIN: the idefics2 binary (default target/release/idefics2, or .devcarry/idefics2.xz unpacked).
# PYTHONPATH may point at transformers 4.54.1 (the reference); any transformers with Idefics2 works.
# RUN_TIMEOUT: seconds each of the four runs may take (default 900; the device tool allows 600 per call, and
# making the random 8B weights takes 51 s in f16, 105-114 s in q8/q4 on the H200 machine: give each run 200+).
# For the device tool (the tree it copies holds at most 64 MiB with what it carries): carry .devcarry/ with
# idefics2.xz (`xz -9e -c target/release/idefics2`, 15 MB) and, for the transformers side, pyx.tar.xz (transformers
# 4.54.1, tokenizers and huggingface_hub installed with `pip install --no-deps --target pyx`, 5.7 MB), unpacked to
# /tmp/pyx with PYTHONPATH=/tmp/pyx (the machine has torch with CUDA).
set -u
LAYERS=${1:-32}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
OUT=${OUT:-/tmp/device-bench}
mkdir -p "$OUT"
BIN=${IDEFICS2_BIN:-target/release/idefics2}
if [ ! -x "$BIN" ] && [ -f .devcarry/idefics2.xz ]; then
    xz -dc .devcarry/idefics2.xz > /tmp/idefics2 && chmod +x /tmp/idefics2 && BIN=/tmp/idefics2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
run() { # name, flags...
    local name=$1; shift
    echo "== idefics2 bench $*" >&2
    timeout "$RUN_TIMEOUT" "$BIN" bench --synthetic idefics2-8b --layers "$LAYERS" --device gpu --json "$@" \
        > "$OUT/$name.json" 2> "$OUT/$name.err" || { echo "failed: $name" >&2; tail -5 "$OUT/$name.err" >&2; }
}
run f16 --dtype f16 --kernels on
run q8 --dtype f16 --quant q8 --kernels off
run q4 --dtype f16 --quant q4 --kernels off
echo "== transformers" >&2
timeout "$RUN_TIMEOUT" python3 scripts/torch-bench.py --layers "$LAYERS" --dtype float16 ${TOKENIZER:+--tokenizer "$TOKENIZER"} \
    > "$OUT/torch.json" 2> "$OUT/torch.err" || { echo "failed: torch" >&2; tail -5 "$OUT/torch.err" >&2; }
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
for name in ["f16", "q8", "q4", "torch"]:
    p = os.path.join(out, name + ".json")
    try:
        r = json.loads(open(p).read().strip().splitlines()[-1])
    except Exception as e:
        print(f"{name}: no result ({e})"); continue
    label = r["model"].split(" (")[0] if name == "torch" else f"idefics2-rs {name}"
    for s in r["settings"]:
        peak = s.get("accounted_peak_bytes", s.get("peak_bytes", 0)) / 2**30
        rows.append((label, r["device"], "on" if s["image_splitting"] else "off", s["prompt_tokens"],
                     s["time_to_first_token_seconds"], s["prefill_tokens_per_second"], s["decode_tokens_per_second"], peak))
    if r.get("kernels"):
        kernels = r["kernels"]
print("| engine | device | splitting | prompt tokens | time to first token (s) | prefill tok/s | decode tok/s | memory (GiB) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    print("| %s | %s | %s | %d | %.3f | %.1f | %.1f | %.2f |" % r)
try:
    print("\n| kernel | shape | ms | GB/s | GFLOP/s |\n| --- | --- | --- | --- | --- |")
    for k in kernels:
        f = lambda v: "" if v is None else "%.1f" % v
        print(f"| {k['kernel']} | {k['shape']} | {k['ms']:.3f} | {f(k['gb_per_s'])} | {f(k['gflop_per_s'])} |")
except NameError:
    pass
PY
