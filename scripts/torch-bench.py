#!/usr/bin/env python3
"""transformers (PyTorch) on the shapes `idefics2 bench --synthetic idefics2-8b` uses: random weights of
the real idefics2-8b architecture, the same chat prompt and the same 980x980 test picture, splitting
off and on. Prints one JSON object (the fields of `idefics2 bench --json` that apply).

    python3 scripts/torch-bench.py --layers 32 --dtype float16 [--tokenizer DIR]
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CONFIG_RS = os.path.join(REPO, "crates", "idefics2", "src", "synthetic.rs")


def idefics2_8b_config():
    """The config JSON embedded in crates/idefics2/src/synthetic.rs (one source of truth)."""
    text = open(CONFIG_RS).read()
    start = text.index('r#"') + 3
    return json.loads(text[start : text.index('"#', start)])


def test_image(side):
    """The picture of crates/idefics2-cli/src/bench.rs: gradients with bands."""
    x = np.arange(side)[None, :].repeat(side, 0)
    y = np.arange(side)[:, None].repeat(side, 1)
    band = (((x // 70 + y // 70) % 2) * 60).astype(np.uint8)
    img = np.stack([(x * 255 // side).astype(np.uint8), (y * 255 // side).astype(np.uint8), band + 100], -1)
    return Image.fromarray(img, "RGB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=980)
    ap.add_argument("--tokenizer", default=os.path.join(REPO, "assets", "tokenizer"))
    args = ap.parse_args()

    import transformers
    from transformers import AutoTokenizer, Idefics2Config, Idefics2ForConditionalGeneration
    from transformers import Idefics2ImageProcessor, Idefics2Processor

    dtype = getattr(torch, args.dtype)
    cfg = idefics2_8b_config()
    cfg["text_config"]["num_hidden_layers"] = args.layers
    config = Idefics2Config(**cfg)
    torch.manual_seed(0)
    t0 = time.time()
    with torch.device("cuda"):
        model = Idefics2ForConditionalGeneration(config).to(dtype)
    model.eval()
    torch.cuda.synchronize()
    load = time.time() - t0
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    settings = []
    for split in (False, True):
        proc = Idefics2Processor(Idefics2ImageProcessor(do_image_splitting=split), tok, image_seq_len=64)
        prompt = "User:<image>Describe this image.<end_of_utterance>\nAssistant:"
        inputs = proc(text=[prompt], images=[[test_image(args.image_size)]], return_tensors="pt").to("cuda")
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        n_prompt = inputs["input_ids"].shape[1]
        gen = dict(do_sample=False, max_new_tokens=args.decode_tokens, min_new_tokens=args.decode_tokens)

        def run(max_new):
            torch.cuda.synchronize()
            t = time.time()
            with torch.no_grad():
                model.generate(**inputs, **dict(gen, max_new_tokens=max_new, min_new_tokens=max_new))
            torch.cuda.synchronize()
            return time.time() - t

        t = time.time()
        run(args.decode_tokens)
        warm = time.time() - t
        torch.cuda.reset_peak_memory_stats()
        ttft = sum(run(1) for _ in range(args.runs)) / args.runs
        total = sum(run(args.decode_tokens) for _ in range(args.runs)) / args.runs
        decode = (args.decode_tokens - 1) / max(total - ttft, 1e-9)
        settings.append(dict(image_splitting=split, prompt_tokens=n_prompt, warmup_seconds=warm,
                             time_to_first_token_seconds=ttft, prefill_tokens_per_second=n_prompt / ttft,
                             decode_tokens_per_second=decode,
                             peak_bytes=torch.cuda.max_memory_allocated()))
    print(json.dumps(dict(model=f"transformers {transformers.__version__} idefics2-8b shapes ({args.layers} decoder layers)",
                          device=f"cuda {torch.cuda.get_device_name()} {args.dtype}", load_seconds=load,
                          weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
                          settings=settings)))


if __name__ == "__main__":
    sys.exit(main())
