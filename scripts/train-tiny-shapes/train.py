#!/usr/bin/env python3
"""Train the tiny Idefics2 "shapes" model shipped in assets/idefics2-tiny-shapes/.

Run from the repository root with the reference environment (transformers 4.54.1, torch CPU):

    /opt/refenv/bin/python scripts/train-tiny-shapes/train.py

That trains from scratch (fixed seeds, data drawn on the fly by shapes.py), saves the checkpoint in the
hub layout (weights in bfloat16) to assets/idefics2-tiny-shapes/, reloads it from disk in float32 and
measures greedy exact-match accuracy on fresh held-out images through the real Idefics2Processor, chat
template and model.generate, per question kind and with image splitting off and on. See README.md.

Options are for development only (the shipped checkpoint is the no-argument run):
    --steps N --out DIR --eval-n N (per kind and splitting mode) --eval-only DIR
"""

import os

# Two intra-op threads that sleep instead of spinning: with busy-waiting OpenMP threads, a second process on a
# 2-core machine (a compiler, say) slows training down 10-30x; passive waiting costs little when alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import transformers
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    Idefics2Config,
    Idefics2ForConditionalGeneration,
    Idefics2ImageProcessor,
    Idefics2Processor,
)
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import shapes  # noqa: E402

assert transformers.__version__ == "4.54.1", transformers.__version__
transformers.logging.set_verbosity_error()

REPO = os.path.dirname(os.path.dirname(HERE))
TOKENIZER_SRC = "/work/shared/reference/idefics2-tokenizer"
DEFAULT_OUT = os.path.join(REPO, "assets", "idefics2-tiny-shapes")
SAMPLES_DIR = os.path.join(REPO, "assets", "samples")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# ----------------------------------------------------------------------------------------------------------------
# Model and training configuration
# ----------------------------------------------------------------------------------------------------------------

N_LATENTS = 16  # perceiver latents = image tokens per image (image_seq_len)
LONGEST_EDGE = 224  # = vision image_size: the 16x16 position grid covers the largest image natively
SHORTEST_EDGE = 56  # a multiple of 14: thin images are stretched to whole patches

VISION = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_channels=3,
    image_size=LONGEST_EDGE,
    patch_size=14,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    attention_dropout=0.0,
    initializer_range=0.02,
)
PERCEIVER = dict(
    hidden_act="silu",
    resampler_n_latents=N_LATENTS,
    resampler_depth=1,
    resampler_n_heads=4,
    resampler_head_dim=32,
    num_key_value_heads=2,
    attention_dropout=0.0,
    initializer_range=0.02,
)
TEXT = dict(
    model_type="mistral",
    vocab_size=32003,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    hidden_act="silu",
    max_position_embeddings=1024,
    initializer_range=0.02,
    rms_norm_eps=1e-5,
    use_cache=True,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=True,
    rope_theta=10000.0,
    sliding_window=None,
    attention_dropout=0.0,
)

TRAIN = dict(
    seed=1234,
    steps=4000,
    scenes_per_batch=16,  # images per step; each brings ~2.4 questions
    p_single=0.45,  # scenes with one shape
    p_count_single=0.5,  # one-shape scenes that also get the count question
    lr=5e-4,
    embed_lr_mult=4.0,  # the tied embedding / lm_head learns faster
    vision_init_gain=1.0,
    min_lr_frac=0.05,
    warmup=100,
    weight_decay=0.01,
    betas=(0.9, 0.98),
    grad_clip=1.0,
    split_frac=0.5,  # fraction of training examples with image splitting on
    jitter=20,  # colour jitter (per channel) of the training images
    latent_std=1.0,  # perceiver latents ~ N(0, latent_std) (transformers fills them with 1.0: all identical)
    curriculum_steps=1000,  # the smallest shape size (fraction of the shorter side) goes linearly from
    curriculum_min_frac=0.35,  # curriculum_min_frac to the task's 0.12 over the first curriculum_steps
    threads=2,
)
EVAL = dict(seed=20240611, n_per_kind=250, max_new_tokens=3)


def build_config():
    return Idefics2Config(
        use_cache=True,
        image_token_id=32001,
        tie_word_embeddings=True,
        vision_config=dict(VISION),
        perceiver_config=dict(PERCEIVER),
        text_config=dict(TEXT),
    )


def make_generation_config():
    return GenerationConfig(
        bos_token_id=1,
        eos_token_id=[2, 32002],
        pad_token_id=0,
        bad_words_ids=[[32000], [32001]],
    )


def make_processor(split):
    tok = AutoTokenizer.from_pretrained(TOKENIZER_SRC)
    ip = Idefics2ImageProcessor(
        do_image_splitting=split, size={"longest_edge": LONGEST_EDGE, "shortest_edge": SHORTEST_EDGE}
    )
    return Idefics2Processor(ip, tok, image_seq_len=N_LATENTS, chat_template=CHAT_TEMPLATE)


# ----------------------------------------------------------------------------------------------------------------
# Training data: on the fly, through the real processor
# ----------------------------------------------------------------------------------------------------------------


class Encoder:
    """Turns shapes examples into model inputs exactly as Idefics2Processor does (splitting off or on)."""

    def __init__(self):
        self.procs = {False: make_processor(False), True: make_processor(True)}
        self.cache = {}

    def text(self, question, answer, split):
        key = (question, answer, split)
        if key not in self.cache:
            proc = self.procs[split]
            prompt = proc.apply_chat_template(shapes.chat_messages(question), add_generation_prompt=True)
            full = prompt + " " + answer + "<end_of_utterance>"
            dummy = [[shapes.draw_scene(random.Random(0), ["circle"], ["red"], size=(60, 60))[0]]]
            p_ids = proc(text=[prompt], images=dummy)["input_ids"][0]
            f_ids = proc(text=[full], images=dummy)["input_ids"][0]
            assert f_ids[: len(p_ids)] == p_ids, (prompt, answer)
            targets = f_ids[len(p_ids):]
            assert targets[-1] == 32002 and 1 <= len(targets) <= EVAL["max_new_tokens"], targets
            self.cache[key] = (f_ids, len(p_ids), targets)
        return self.cache[key]

    def images(self, image, split):
        """Per-image unpadded (pixel_values [3,h,w], pixel_mask [h,w]) as the processor makes them."""
        out = self.procs[split].image_processor([[image]], return_tensors="pt")
        pv, pm = out["pixel_values"][0], out["pixel_attention_mask"][0]
        res = []
        for i in range(pv.shape[0]):
            h, w = int(pm[i, :, 0].sum()), int(pm[i, 0, :].sum())
            assert pm[i, :h, :w].all() and pm[i].sum() == h * w
            res.append((pv[i, :, :h, :w], pm[i, :h, :w]))
        return res


def scene_questions(rng, jitter, min_frac, p_single, p_count_single):
    """One training scene and the task's questions that apply to it: [(qkind, question, answer)].

    The vision encoder then runs once for several questions. One shape (probability p_single): the colour and
    shape questions, and the count question with probability p_count_single; 2..4 shapes (uniform): the count
    question and "What color is the <kind>?" for every kind that occurs exactly once."""
    n = 1 if rng.random() < p_single else rng.randint(2, 4)
    kinds = [rng.choice(shapes.KINDS) for _ in range(n)]
    colors = [rng.choice(shapes.COLOR_NAMES) for _ in range(n)]
    img, _ = shapes.draw_scene(
        rng, kinds, colors, jitter=jitter, min_frac=min_frac, max_frac=max(min_frac, shapes.MAX_FRAC)
    )
    qa = []
    if n == 1:
        qa.append(("color", shapes.question_text("color"), colors[0]))
        qa.append(("shape", shapes.question_text("shape"), kinds[0]))
        if rng.random() < p_count_single:
            qa.append(("count", shapes.question_text("count"), "1"))
    else:
        qa.append(("count", shapes.question_text("count"), str(n)))
        for k in shapes.KINDS:
            if kinds.count(k) == 1:
                qa.append(("color_of_kind", shapes.question_text("color_of_kind", k), colors[kinds.index(k)]))
    return img, qa


def make_batch(enc, rng, n_scenes, cfg, min_frac=shapes.MIN_FRAC):
    """n_scenes scenes -> (seqs, imgs): seqs[i] = (ids, n_prompt, targets, qkind, image indices into imgs)."""
    seqs, imgs = [], []
    for _ in range(n_scenes):
        img, qa = scene_questions(rng, cfg["jitter"], min_frac, cfg["p_single"], cfg["p_count_single"])
        split = rng.random() < cfg["split_frac"]
        first = len(imgs)
        imgs.extend(enc.images(img, split))
        idx = list(range(first, len(imgs)))
        for qkind, question, ans in qa:
            ids, n_prompt, targets = enc.text(question, ans, split)
            seqs.append((ids, n_prompt, targets, qkind, idx))
    return seqs, imgs


def image_features(model, imgs, max_pad=1.25):
    """Vision encoder + connector over a flat list of images, in order.

    Images are grouped by size so that little padding is computed; the result is what
    Idefics2Model.get_image_features gives for the padded batch (padding is masked out)."""
    order = sorted(range(len(imgs)), key=lambda i: (imgs[i][0].shape[1], imgs[i][0].shape[2]))
    groups, cur = [], []
    for i in order:
        cand = cur + [i]
        hmax = max(imgs[j][0].shape[1] for j in cand)
        wmax = max(imgs[j][0].shape[2] for j in cand)
        real = sum(imgs[j][0].shape[1] * imgs[j][0].shape[2] for j in cand)
        if cur and len(cand) * hmax * wmax > max_pad * real:
            groups.append(cur)
            cur = [i]
        else:
            cur = cand
    if cur:
        groups.append(cur)
    feats = [None] * len(imgs)
    for g in groups:
        hmax = max(imgs[j][0].shape[1] for j in g)
        wmax = max(imgs[j][0].shape[2] for j in g)
        pv = torch.zeros(1, len(g), 3, hmax, wmax)
        pm = torch.zeros(1, len(g), hmax, wmax, dtype=torch.long)
        for k, j in enumerate(g):
            p, m = imgs[j]
            pv[0, k, :, : p.shape[1], : p.shape[2]] = p
            pm[0, k, : m.shape[0], : m.shape[1]] = m
        f = model.model.get_image_features(pv, pm).view(len(g), N_LATENTS, -1)
        for k, j in enumerate(g):
            feats[j] = f[k]
    return torch.cat(feats, 0)


def forward_loss(model, seqs, imgs):
    """Cross-entropy on the answer tokens and the following <end_of_utterance> only.

    Sequences are right-padded (positions stay 0..n-1, as in unpadded generation) in two groups of similar
    length (prompts with 1 or 5 images) so that little padding is computed."""
    feats = image_features(model, imgs).view(len(imgs), N_LATENTS, -1)
    groups = {}
    for s in seqs:
        groups.setdefault(len(s[4]), []).append(s)
    hs, tgt, first, kinds = [], [], [], []
    for _, group in sorted(groups.items()):
        T = max(len(s[0]) for s in group)
        ids = torch.zeros(len(group), T, dtype=torch.long)  # padding id 0 (<unk>)
        am = torch.zeros(len(group), T, dtype=torch.long)
        rows, cols = [], []
        for b, (f_ids, n_prompt, targets, qkind, _) in enumerate(group):
            ids[b, : len(f_ids)] = torch.tensor(f_ids)
            am[b, : len(f_ids)] = 1
            for k, t in enumerate(targets):
                rows.append(b)
                cols.append(n_prompt - 1 + k)
                tgt.append(t)
                word = k == len(targets) - 2 if len(targets) == 3 else k == 0  # the word, not "▁" or the end
                first.append(word)
                if word:
                    kinds.append(qkind)
        f = torch.cat([feats[torch.tensor(s[4])].flatten(0, 1) for s in group], 0)
        out = model.model(input_ids=ids, attention_mask=am, image_hidden_states=f, use_cache=False)
        hs.append(out.last_hidden_state[torch.tensor(rows), torch.tensor(cols)])
    logits = model.lm_head(torch.cat(hs, 0)).float()
    tgt = torch.tensor(tgt)
    loss = F.cross_entropy(logits, tgt)
    with torch.no_grad():
        ok = (logits.argmax(-1) == tgt)[torch.tensor(first)].tolist()
        word_ok = {}
        for qkind, o in zip(kinds, ok):
            word_ok.setdefault(qkind, []).append(o)
    return loss, word_ok


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: real processor + chat template + generate, one example at a time (as the Rust side runs it)
# ----------------------------------------------------------------------------------------------------------------


def eval_set(seed, n_per_kind):
    """Fresh held-out examples (exact colours, no jitter): {qkind: [example]}."""
    rng = random.Random(seed)
    return {k: [shapes.sample_example(rng, qkind=k, jitter=0) for _ in range(n_per_kind)] for k in shapes.QUESTION_KINDS}


@torch.no_grad()
def answer(model, processor, image, question, max_new_tokens=EVAL["max_new_tokens"]):
    prompt = processor.apply_chat_template(shapes.chat_messages(question), add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    if 32002 in new:
        new = new[: new.index(32002)]
    return processor.tokenizer.decode(new, skip_special_tokens=False).strip()


def evaluate(model, processors, data, log=True):
    """Returns {(qkind, split): accuracy} and prints a table."""
    model.eval()
    acc, wrong = {}, {}
    for split in (False, True):
        for k, exs in data.items():
            ok = 0
            for ex in exs:
                a = answer(model, processors[split], ex["image"], ex["question"])
                if a == ex["answer"]:
                    ok += 1
                else:
                    wrong.setdefault((k, split), []).append((ex["image"].size, ex["question"], ex["answer"], a))
            acc[(k, split)] = ok / len(exs)
    if log:
        print_table(acc, {k: len(v) for k, v in data.items()})
        for key, ws in wrong.items():
            print(f"  wrong {key}: {ws[:6]}")
    return acc


def print_table(acc, counts):
    print("| question kind | n | splitting off | splitting on |")
    print("| --- | --- | --- | --- |")
    for k in shapes.QUESTION_KINDS:
        print(f"| {k} | {counts[k]} | {100 * acc[(k, False)]:.1f}% | {100 * acc[(k, True)]:.1f}% |")
    tot_off = sum(acc[(k, False)] * counts[k] for k in counts) / sum(counts.values())
    tot_on = sum(acc[(k, True)] * counts[k] for k in counts) / sum(counts.values())
    print(f"| all | {sum(counts.values())} | {100 * tot_off:.1f}% | {100 * tot_on:.1f}% |", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------


def save_checkpoint(model, out_dir):
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    m = model.to(torch.bfloat16)
    m.generation_config = make_generation_config()
    m.save_pretrained(out_dir, safe_serialization=True)
    model.to(torch.float32)
    proc = make_processor(False)  # splitting off by default; front ends may switch it on
    proc.save_pretrained(out_dir)
    # The fast tokenizer only needs tokenizer.json: write it compact (same content), drop the sentencepiece model.
    tj = os.path.join(out_dir, "tokenizer.json")
    Tokenizer.from_file(tj).save(tj, pretty=False)
    tm = os.path.join(out_dir, "tokenizer.model")
    if os.path.exists(tm):
        os.remove(tm)


def load_checkpoint(d):
    model = Idefics2ForConditionalGeneration.from_pretrained(d, torch_dtype=torch.float32)
    model.eval()
    p_off = AutoProcessor.from_pretrained(d)
    p_on = AutoProcessor.from_pretrained(d)
    p_on.image_processor.do_image_splitting = True
    assert p_off.image_processor.do_image_splitting is False
    return model, {False: p_off, True: p_on}


def dir_size(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))


# ----------------------------------------------------------------------------------------------------------------
# Sample images for the README
# ----------------------------------------------------------------------------------------------------------------

SAMPLES = [
    # name, seed, size, kinds, colours, questions
    ("shapes.png", 1, (200, 150), ["circle"], ["red"], ["What color is the shape?", "What shape is this?", "How many shapes are there?"]),
    ("several.png", 2, (240, 200), ["square", "triangle", "circle"], ["blue", "green", "yellow"],
     ["How many shapes are there?", "What color is the circle?", "What color is the square?", "What color is the triangle?"]),
    ("wide.png", 3, (560, 96), ["triangle", "circle"], ["purple", "orange"],
     ["How many shapes are there?", "What color is the circle?", "What color is the triangle?"]),
    ("tall.png", 4, (110, 420), ["square", "circle", "triangle", "square"], ["green", "red", "orange", "purple"],
     ["How many shapes are there?", "What color is the circle?", "What color is the triangle?"]),
]


def write_samples():
    os.makedirs(SAMPLES_DIR, exist_ok=True)
    for name, seed, size, kinds, colors, _ in SAMPLES:
        img, _ = shapes.draw_scene(random.Random(seed), kinds, colors, size=size)
        img.save(os.path.join(SAMPLES_DIR, name), format="PNG", optimize=True)


def sample_answers(model, processors):
    for name, _, _, kinds, colors, questions in SAMPLES:
        from PIL import Image

        img = Image.open(os.path.join(SAMPLES_DIR, name)).convert("RGB")
        for q in questions:
            a_off = answer(model, processors[False], img, q)
            a_on = answer(model, processors[True], img, q)
            print(f"  {name} {img.size} {list(zip(kinds, colors))}: {q!r} -> off {a_off!r}, on {a_on!r}")


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def init_weights(model, cfg):
    """transformers' init (normal(0, 0.02) everywhere, perceiver latents all 1.0) with two changes that make the
    tiny model learn much faster: vision and connector matrices get LeCun scale normal(0, 1/sqrt(fan_in)), and
    the perceiver latents are random (all-equal latents start out as 16 copies of one token)."""
    g = torch.Generator().manual_seed(cfg["seed"])
    for n, p in model.named_parameters():
        if n.startswith(("model.vision_model.", "model.connector.")) and p.ndim >= 2 and "position" not in n:
            if n.endswith("latents"):
                p.copy_(torch.randn(p.shape, generator=g) * cfg["latent_std"])
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (cfg["vision_init_gain"] / math.sqrt(p[0].numel())))


def lr_at(step, cfg):
    if step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    t = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"])
    return cfg["lr"] * (cfg["min_lr_frac"] + (1 - cfg["min_lr_frac"]) * 0.5 * (1 + math.cos(math.pi * t)))


def train(cfg, log_every=25):
    torch.manual_seed(cfg["seed"])
    rng = random.Random(cfg["seed"])
    model = Idefics2ForConditionalGeneration(build_config())
    init_weights(model, cfg)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params} ({n_params * 2 / 1e6:.1f} MB in bf16)", flush=True)
    groups = {}
    for n, p in model.named_parameters():
        emb = n.endswith("embed_tokens.weight")
        decay = p.ndim >= 2 and "latents" not in n and not emb
        groups.setdefault((emb, decay), []).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": ps, "weight_decay": cfg["weight_decay"] if decay else 0.0,
             "lr_mult": cfg["embed_lr_mult"] if emb else 1.0}
            for (emb, decay), ps in groups.items()
        ],
        lr=cfg["lr"], betas=cfg["betas"],
    )
    enc = Encoder()
    t0 = time.time()
    run_loss, run_ok, t_data = 0.0, {}, 0.0
    for step in range(cfg["steps"]):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g["lr_mult"]
        td = time.time()
        c = cfg["curriculum_min_frac"]
        min_frac = max(shapes.MIN_FRAC, c - (c - shapes.MIN_FRAC) * step / max(1, cfg["curriculum_steps"]))
        seqs, imgs = make_batch(enc, rng, cfg["scenes_per_batch"], cfg, min_frac)
        t_data += time.time() - td
        loss, word_ok = forward_loss(model, seqs, imgs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        run_loss += loss.item()
        for k, v in word_ok.items():
            run_ok.setdefault(k, []).extend(v)
        if (step + 1) % log_every == 0:
            el = time.time() - t0
            accs = " ".join(f"{k}={sum(run_ok[k]) / len(run_ok[k]):.2f}" for k in shapes.QUESTION_KINDS if k in run_ok)
            print(
                f"step {step + 1}/{cfg['steps']} loss {run_loss / log_every:.4f} word-acc {accs} "
                f"lr {lr_at(step, cfg):.2e} elapsed {el:.0f}s (data {t_data:.0f}s) "
                f"eta {el / (step + 1) * (cfg['steps'] - step - 1):.0f}s",
                flush=True,
            )
            run_loss, run_ok = 0.0, {}
    return model, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=TRAIN["steps"])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--eval-n", type=int, default=EVAL["n_per_kind"])
    ap.add_argument("--eval-only", default=None, help="evaluate a saved checkpoint directory and exit")
    ap.add_argument("--no-samples", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="dev: override a TRAIN key, e.g. --set lr=1e-3")
    args = ap.parse_args()
    torch.set_num_threads(TRAIN["threads"])

    data = eval_set(EVAL["seed"], args.eval_n)
    if args.eval_only:
        model, procs = load_checkpoint(args.eval_only)
        evaluate(model, procs, data)
        if not args.no_samples:
            write_samples()
            sample_answers(model, procs)
        return

    cfg = dict(TRAIN, steps=args.steps)
    for kv in args.set:
        k, v = kv.split("=", 1)
        assert k in cfg, k
        cfg[k] = type(cfg[k])(float(v)) if isinstance(cfg[k], (int, float)) else v
    print("train config:", json.dumps(cfg), flush=True)
    model, train_s = train(cfg)
    print(f"training time: {train_s:.0f} s ({train_s / 60:.1f} min)", flush=True)

    save_checkpoint(model, args.out)
    files = sorted(os.listdir(args.out))
    assert "model.safetensors" in files, files
    from safetensors import safe_open

    with safe_open(os.path.join(args.out, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert "lm_head.weight" not in keys, "tied lm_head must not be stored"
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in keys)
    print(f"saved {args.out}: {dir_size(args.out) / 1e6:.2f} MB, files {files}", flush=True)

    # Accuracy of the checkpoint as shipped: bf16 weights from disk, loaded into float32.
    model, procs = load_checkpoint(args.out)
    assert torch.equal(model.lm_head.weight, model.model.text_model.embed_tokens.weight)
    te = time.time()
    evaluate(model, procs, data)
    print(f"evaluation time: {time.time() - te:.0f} s")
    if not args.no_samples:
        write_samples()
        sample_answers(model, procs)
    print(f"training time: {train_s:.0f} s ({train_s / 60:.1f} min)")


if __name__ == "__main__":
    main()
