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
import ctypes
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
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import shapes  # noqa: E402

assert transformers.__version__ == "4.54.1", transformers.__version__
transformers.logging.set_verbosity_error()

REPO = os.path.dirname(os.path.dirname(HERE))
TOKENIZER_SRC = os.environ.get("IDEFICS2_TOKENIZER", "/work/shared/reference/idefics2-tokenizer")
# The shipped checkpoint is trained on the CPU; CUDA only speeds up experiments (TRAIN_DEVICE=cuda).
DEV = torch.device(os.environ.get("TRAIN_DEVICE", "cpu"))
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
# What --arch processor.KEY=V may change. shortest_edge: a multiple of 14, thin images are stretched to whole patches.
PROCESSOR = dict(shortest_edge=56)

VISION = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=3,  # 2 layers learn the colour-of-kind question as well but count a little worse (README)
    num_attention_heads=8,
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
    split_frac=0.5,  # fraction of training examples with image splitting on (a split image costs 5 encoder passes)
    jitter=20,  # colour jitter (per channel) of the training images
    latent_std=1.0,  # perceiver latents ~ N(0, latent_std) (transformers fills them with 1.0: all identical)
    phase1_steps=500,  # first steps: only "What shape is this?" (learnt much more slowly in the mix)
    phase1_split_frac=0.0,
    curriculum_steps=1000,  # after phase 1, the smallest shape size (fraction of the shorter side) goes linearly from
    curriculum_min_frac=0.35,  # curriculum_min_frac to the task's 0.12 over the first curriculum_steps
    geometric_frac=0.5,  # scenes re-rasterized by pixel centres (see rerender_geometric)
    aux_weight=1.0,  # weight of the per-patch shape/colour loss on the vision encoder (see image_features)
    scene_aux_weight=1.0,  # weight of the scene loss on the image tokens (see forward_loss)
    crop_count=0,  # the scene loss also counts the shape centres inside each crop of a split image
    centre_label=0,  # a shape's centre patch carries its kind/colour label even when the patch centre misses it
    offset_weight=1.0,  # per-patch regression of where the centre of the shape under the patch is (see patch_targets)
    p_few_colors=0.0,  # multi-shape scenes drawn from only 1-2 colours (counting must not count colours)
    few_colors_count_only=0,  # those scenes are asked only the count question
    p_balanced_colors=0.0,  # multi-shape scenes whose number of distinct colours is uniform in 1..n (see scene_questions)
    few_colors_from=0,  # first step with few-colour scenes (earlier, they hold the colour-of-kind question on its plateau)
    balanced_colors_from=0,  # first step with balanced-colour scenes (the steps before draw exactly the default run's data)
    pos_init=1.0,  # > 0: vision position embeddings start as 2D sin-cos of the 16x16 bucket grid, this amplitude
    cok_weight=1.0,  # loss weight of the colour-of-kind answers against the other answers' 1
    count_weight=1.0,  # loss weight of the count answers against the other answers' 1
    ema_decay=0.0,  # > 0: the saved weights are an exponential moving average of the trained ones, from ema_from
    ema_from=0,
    phase1_cok=0.0,  # share of phase-1 scenes that hold two shapes of different kinds, asked both colour-of-kind questions
    kind_slots=1.0,  # > 0 (with the scene loss): image tokens 0, 1, 2 each predict the colour of the only circle / square / triangle
    count_slot=0.0,  # > 0 (with the scene loss): image token 3 predicts the number of shapes (no gain by step 3200, README)
    kind_counts=0.0,  # > 0 (with kind_slots): image tokens 0, 1, 2 also predict how many circles / squares / triangles
    # there are (kept the colour-of-kind question on its plateau and counted no better, README)
    patch_count=0.0,  # > 0: every real patch also predicts the number of shape centres in its image (0..4), this loss weight
    centre_density=0.0,  # > 0: every patch regresses its share of the shape centres (bilinear, sums to the count; see patch_targets)
    patch_share=0.0,  # > 0: instead, its share of the shapes' pixels (each shape's pixels sum to 1; see patch_targets), this weight
    share_from=0,  # first step of the patch_share loss (its output row stays zero before; a snapshot without it can resume)
    patch_turn=0.0,  # > 0: instead, the turning of the shapes' outlines inside it (each outline turns once; see patch_targets)
    turn_from=0,  # first step of the patch_turn loss (as share_from)
    anchor=0,  # > 0: the per-patch flag marks the patch of each shape's first pixel in reading order, not of its centre
    count_attention=0.0,  # > 0: one perceiver head of image token 3 is taught to attend to the flagged patches (see count_attention_loss)
    count_attention_from=0,  # first step of that loss
    max_pad=1.25,  # image_features: a group of images is padded to at most this times their real pixels
    data_workers=0,  # dev (GPU): > 0 draws each step's batch ahead in that many worker processes, seeded by (seed, step)
    threads=2,
)
EVAL = dict(seed=20240611, n_per_kind=250, max_new_tokens=3)
CENTRE_WEIGHTS = torch.tensor([1.0, 10.0])  # the centre patches are rare
OFFSET_WEIGHT = [0.0]  # set from TRAIN["offset_weight"] in train()
PATCH_COUNT = [0.0]  # set from TRAIN["patch_count"] in train()
DENSITY = [0.0]  # set from TRAIN["centre_density"] (or "patch_share" from "share_from", "patch_turn" from "turn_from") in train()
ANCHOR = [False]  # set from TRAIN["anchor"] in train(): the flag marks each shape's first pixel, not its centre
COUNT_ATTENTION = [0.0]  # the count_attention weight of the current step, set in train()
COUNT_LATENT, COUNT_HEAD = 3, 0  # the image token (after the kind slots 0..2) and perceiver head that count
PERCEIVER_INPUTS = {}  # the first perceiver attention's last inputs (latents, context, mask), kept by a hook
DENSITY_KIND = ["centre"]  # the density target: "centre" share, pixel "share" (patch_share) or outline "turn" (patch_turn)
# The density targets that replace the centre's, each on a row grown onto the patch head: (weight key, first-step key,
# DENSITY_KIND)
GROWN_DENSITIES = (("patch_share", "share_from", "share"), ("patch_turn", "turn_from", "turn"))
LOG_EVERY = 25  # training steps per log line (and the steps a snapshot may be taken at)
# glibc's heap fragments under the ever-changing tensor sizes (images of every size): in one run (session 12,
# processor.shortest_edge=112) the steps slowed from 1.4 s to 5 s between steps 2850 and 3250 with 40% of the time
# inside malloc; one malloc_trim(0), called into the running process, released 1.4 GB and the steps went back to
# 1.7 s. So the heap is trimmed at every log line (no effect on the numbers).
LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
# Scene draws that start late: their probability key, and the key of the first step that uses it.
LATE_SCENES = {"p_few_colors": "few_colors_from", "p_balanced_colors": "balanced_colors_from"}
EXTRA_METRICS = {}  # training accuracies of the optional patch heads, logged with the others


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
        do_image_splitting=split, size={"longest_edge": LONGEST_EDGE, "shortest_edge": PROCESSOR["shortest_edge"]}
    )
    return Idefics2Processor(ip, tok, image_seq_len=N_LATENTS, chat_template=CHAT_TEMPLATE)


# ----------------------------------------------------------------------------------------------------------------
# Training data: on the fly, through the real processor
# ----------------------------------------------------------------------------------------------------------------


class Encoder:
    """Turns shapes examples into model inputs exactly as Idefics2Processor does (splitting off or on)."""

    def __init__(self, centre_label=True):
        self.procs = {False: make_processor(False), True: make_processor(True)}
        self.centre_label = centre_label
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

    def images(self, image, split, drawn):
        """Per-image unpadded (pixel_values [3,h,w], pixel_mask [h,w], patch targets, shape centres inside) as the processor makes
        them (the crops of Idefics2ImageProcessor.split_image, then the whole image, when splitting)."""
        out = self.procs[split].image_processor([[image]], return_tensors="pt")
        pv, pm = out["pixel_values"][0], out["pixel_attention_mask"][0]
        W, H = image.size
        crops = [(0, 0, W, H)]
        if split:
            mw, mh = W // 2, H // 2
            crops = [(0, 0, mw, mh), (mw, 0, W, mh), (0, mh, mw, H), (mw, mh, W, H), (0, 0, W, H)]
        assert pv.shape[0] == len(crops)
        labels = label_map(image.size, drawn)
        res = []
        for i in range(pv.shape[0]):
            h, w = int(pm[i, :, 0].sum()), int(pm[i, 0, :].sum())
            assert pm[i, :h, :w].all() and pm[i].sum() == h * w
            t, off, dens = patch_targets(labels, drawn, crops[i], h, w, centre_label=self.centre_label)
            res.append((pv[i, :, :h, :w], pm[i, :h, :w], t, n_centres(drawn, crops[i]), off, dens))
        return res


def scene_questions(
    rng, jitter, min_frac, p_single, p_count_single, only=None, p_few_colors=0.0, few_count_only=False, n_shapes=None,
    p_balanced_colors=0.0,
):
    """One training scene and the task's questions that apply to it: [(qkind, question, answer)].

    The vision encoder then runs once for several questions. One shape (probability p_single): the colour and
    shape questions, and the count question with probability p_count_single; 2..4 shapes (uniform): the count
    question and "What color is the <kind>?" for every kind that occurs exactly once. With probability p_few_colors
    a scene of several shapes takes its colours from only one or two of the six (few_count_only: and is asked only
    the count question, so the colour-of-kind question keeps seeing varied colours). n_shapes: that many shapes,
    all of different kinds."""
    if n_shapes is not None:
        n, kinds = n_shapes, rng.sample(shapes.KINDS, n_shapes)
    else:
        n = 1 if rng.random() < p_single else rng.randint(2, 4)
        kinds = [rng.choice(shapes.KINDS) for _ in range(n)]
    palette = shapes.COLOR_NAMES
    few = n > 1 and p_few_colors > 0 and rng.random() < p_few_colors
    if few:
        palette = rng.sample(shapes.COLOR_NAMES, rng.randint(1, 2))
    if not few and n > 1 and p_balanced_colors > 0 and rng.random() < p_balanced_colors:
        # With colours drawn independently, the number of distinct colours predicts the count (always for one shape,
        # 83% of two, 56% of three, 28% of four): the shipped model counts colours and takes 3 distinct colours for
        # 3 or 4 shapes alike. Here the number of distinct colours d is uniform in 1..n, so it tells little.
        d = rng.randint(1, n)
        colors = rng.sample(shapes.COLOR_NAMES, d)
        colors += [rng.choice(colors) for _ in range(n - d)]
        rng.shuffle(colors)
    else:
        colors = [rng.choice(palette) for _ in range(n)]
    img, drawn = shapes.draw_scene(
        rng, kinds, colors, jitter=jitter, min_frac=min_frac, max_frac=max(min_frac, shapes.MAX_FRAC)
    )
    if rng.random() < TRAIN["geometric_frac"]:
        img = rerender_geometric(img, drawn)
    qa = []
    if n == 1:
        qa.append(("color", shapes.question_text("color"), colors[0]))
        qa.append(("shape", shapes.question_text("shape"), kinds[0]))
        if rng.random() < p_count_single:
            qa.append(("count", shapes.question_text("count"), "1"))
    else:
        qa.append(("count", shapes.question_text("count"), str(n)))
        asked = [] if few and few_count_only else [k for k in shapes.KINDS if kinds.count(k) == 1]
        for k in asked:
            qa.append(("color_of_kind", shapes.question_text("color_of_kind", k), colors[kinds.index(k)]))
    if only is not None:
        qa = [x for x in qa if x[0] in only]
    return img, qa, drawn


def rerender_geometric(img, drawn):
    """The same scene rasterized another way: a pixel is filled when its centre lies inside the exact
    geometric shape (Pillow's scan conversion differs at the edges). The task defines shapes geometrically,
    so the model should not depend on one rasterizer's edge pixels."""
    a = np.array(img)
    labels = label_map(img.size, drawn)
    ys, xs = np.nonzero(labels == 0)
    bg = a[ys[0], xs[0]].copy()
    fills = []
    for d in drawn:
        x, y, s = d["box"]
        fills.append(a[y + s // 2, x + s // 2].copy())  # the centre is inside every kind
    a[labels > 0] = bg
    for d, fill in zip(drawn, fills):
        x, y, s = d["box"]
        last = s - 1.0
        py, px = np.mgrid[0:s, 0:s].astype(np.float64)
        if d["kind"] == "square":
            inside = np.ones((s, s), dtype=bool)
        elif d["kind"] == "circle":
            r = last / 2 + 0.5
            inside = (px - last / 2) ** 2 + (py - last / 2) ** 2 <= r * r
        else:  # apex up
            inside = np.abs(px - last / 2) <= py / max(last, 1.0) * last / 2 + 0.5
        a[y : y + s, x : x + s][inside] = fill
    return Image.fromarray(a)


def label_map(size, drawn):
    """[h, w] uint8: 0 for the background, i + 1 where shape i was drawn (the same Pillow calls as shapes.py)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", size, 0)
    d = ImageDraw.Draw(img)
    for i, sh in enumerate(drawn):
        x, y, s = sh["box"]
        box = [x, y, x + s - 1, y + s - 1]
        if sh["kind"] == "circle":
            d.ellipse(box, fill=i + 1)
        elif sh["kind"] == "square":
            d.rectangle(box, fill=i + 1)
        else:
            d.polygon([(x + (s - 1) / 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)], fill=i + 1)
    return np.asarray(img)


def patch_targets(labels, drawn, crop, h, w, patch=14, centre_label=True):
    """Auxiliary per-patch targets [h // patch, w // patch, 3] of one processed image of size h x w made from
    the crop (x0, y0, x1, y1) of the original: the shape kind (0..3) and colour (0..6) under each patch centre
    (0 = background), and 1 on the patch holding a shape's centre (one per shape: what counting needs). With
    centre_label, that centre patch also carries the shape's kind and colour (a shape smaller than a patch can miss
    every patch centre)."""
    x0, y0, x1, y1 = crop
    gy, gx = h // patch, w // patch
    ys = y0 + ((np.arange(gy) * patch + patch / 2) * (y1 - y0) / h).astype(np.int64)
    xs = x0 + ((np.arange(gx) * patch + patch / 2) * (x1 - x0) / w).astype(np.int64)
    idx = labels[np.minimum(ys, y1 - 1)][:, np.minimum(xs, x1 - 1)]
    kind_of = np.array([0] + [1 + shapes.KINDS.index(d["kind"]) for d in drawn])
    color_of = np.array([0] + [1 + shapes.COLOR_NAMES.index(d["color"]) for d in drawn])
    idx = idx.copy()
    centre = np.zeros((gy, gx), dtype=np.int64)
    inside = []  # the shapes whose centre lies in the crop (as n_centres)
    for i, d in enumerate(drawn):
        bx, by, bs = d["box"]
        cx, cy = bx + bs / 2, by + bs / 2
        if x0 <= cx < x1 and y0 <= cy < y1:
            inside.append(i)
            px = int((cx - x0) * w / (x1 - x0)) // patch
            py = int((cy - y0) * h / (y1 - y0)) // patch
            if centre_label:  # a centre in the last, partial patch row or column (dropped by the encoder): the last whole one
                px, py = min(px, gx - 1), min(py, gy - 1)
            if px < gx and py < gy:
                centre[py, px] = 1
                if centre_label:
                    # a shape smaller than a patch may miss every patch centre: its centre patch shows it anyway
                    idx[py, px] = i + 1
    if ANCHOR[0]:
        # the flag marks instead the patch holding each shape's first pixel in reading order (its top row, leftmost):
        # a triangle's apex, a square's top-left corner, the top of a circle. Unlike the centre, that is visible in the
        # patch itself (no patch has to know where its shape ends). It was not flagged much more exactly (README:
        # probe-flags.py gives 27.5% of pictures flagged exactly at step 2000, the centre 25.0% at its best margin)
        centre[:] = 0
        for i, d in enumerate(drawn):
            bx, by, bs = d["box"]
            xa, xb, ya, yb = max(bx, x0), min(bx + bs, x1), max(by, y0), min(by + bs, y1)
            if xa >= xb or ya >= yb:
                continue
            m = labels[ya:yb, xa:xb] == i + 1
            rows = np.flatnonzero(m.any(1))
            if rows.size == 0:
                continue
            ay, ax = ya + rows[0] - y0, xa + np.flatnonzero(m[rows[0]])[0] - x0
            centre[min(int((ay + 0.5) * h / (y1 - y0)) // patch, gy - 1), min(int((ax + 0.5) * w / (x1 - x0)) // patch, gx - 1)] = 1
    # where the centre of the shape under each patch lies, relative to the patch centre, in units of 4 patches
    # (NaN on the background): every patch of a shape points at the same spot, which separates touching or
    # same-colour shapes and marks one centre per shape (what counting needs)
    cxs = np.array([np.nan] + [((d["box"][0] + d["box"][2] / 2) - x0) * w / (x1 - x0) for d in drawn])
    cys = np.array([np.nan] + [((d["box"][1] + d["box"][2] / 2) - y0) * h / (y1 - y0) for d in drawn])
    pcx = (np.arange(gx) * patch + patch / 2)[None, :]
    pcy = (np.arange(gy) * patch + patch / 2)[:, None]
    off = np.stack([(cxs[idx] - pcx) / (4 * patch), (cys[idx] - pcy) / (4 * patch)], -1).astype(np.float32)

    def spread(px, py, weights):
        """weights at points (px, py) (pixels of the crop, in the original) summed per patch: the last, partial patch
        row and column go to the last whole ones."""
        pr = np.minimum((py * h / (y1 - y0)).astype(np.int64) // patch, gy - 1)
        pc = np.minimum((px * w / (x1 - x0)).astype(np.int64) // patch, gx - 1)
        return np.bincount(pr * gx + pc, weights=weights, minlength=gy * gx).reshape(gy, gx).astype(np.float32)

    if DENSITY_KIND[0] == "turn":
        # how far each shape's outline turns inside the patch, in whole turns: a convex outline turns exactly once, at
        # the corners of a square or a triangle (its exterior angles) and evenly along a circle. Unlike the centre or
        # the pixel share, this is local (a corner or a bend is visible in the patch that holds it; no patch has to
        # know how large its shape is or where it ends), and it sums to the count on a whole image
        px_, py_, wt = (np.concatenate(a) for a in zip(*(outline_turns(d) for d in drawn)))
        keep = (px_ >= x0) & (px_ < x1) & (py_ >= y0) & (py_ < y1)
        dens = spread(px_[keep] - x0, py_[keep] - y0, wt[keep])
    elif DENSITY_KIND[0] == "share":
        # each shape's pixels spread over the patches they fall in, 1 / (its area in the original) each: a patch inside a
        # shape learns the inverse of the shape's size, and the shares sum to the count on a whole image (the part
        # inside the crop of a cut shape on a crop)
        sub = labels[y0:y1, x0:x1]
        py_, px_ = np.nonzero(sub)
        area = np.bincount(labels.ravel(), minlength=len(drawn) + 1).astype(np.float64)
        dens = spread(px_ + 0.5, py_ + 0.5, 1.0 / area[sub[py_, px_]])
    else:
        # each shape centre inside the crop split bilinearly over the (up to) 4 patch centres around it, clamped into the
        # grid the encoder keeps: the density sums to the count exactly, with no border between patches to guess
        dens = np.zeros((gy, gx), dtype=np.float32)
        for i in inside:
            u, v = cxs[i + 1] / patch - 0.5, cys[i + 1] / patch - 0.5
            i0, j0 = math.floor(u), math.floor(v)
            fu, fv = u - i0, v - j0
            for di, wu in ((0, 1 - fu), (1, fu)):
                for dj, wv in ((0, 1 - fv), (1, fv)):
                    dens[min(max(j0 + dj, 0), gy - 1), min(max(i0 + di, 0), gx - 1)] += wu * wv
    count = np.full((gy, gx), len(inside), dtype=np.int64)
    return torch.from_numpy(np.stack([kind_of[idx], color_of[idx], centre, count], -1)), torch.from_numpy(off), torch.from_numpy(dens)


# exterior angles of the apex-up triangle of shapes.py (base s, height s), in turns: apex, then each base corner
TRIANGLE_APEX_TURN = (math.pi - 2 * math.atan(0.5)) / (2 * math.pi)
TRIANGLE_BASE_TURN = (1 - TRIANGLE_APEX_TURN) / 2
CIRCLE_TURN_POINTS = 256


def outline_turns(d):
    """Where the outline of one drawn shape turns, as points (x, y) in the original image's pixel coordinates, just
    inside the shape, and how much (in turns, summing to 1): 4 corners of a quarter turn for a square, 3 corners for a
    triangle, CIRCLE_TURN_POINTS even steps around a circle."""
    x, y, s = d["box"]
    if d["kind"] == "square":
        px = np.array([x + 0.5, x + s - 0.5, x + 0.5, x + s - 0.5])
        py = np.array([y + 0.5, y + 0.5, y + s - 0.5, y + s - 0.5])
        wt = np.full(4, 0.25)
    elif d["kind"] == "triangle":
        px = np.array([x + s / 2, x + 0.5, x + s - 0.5])
        py = np.array([y + 0.5, y + s - 0.5, y + s - 0.5])
        wt = np.array([TRIANGLE_APEX_TURN, TRIANGLE_BASE_TURN, TRIANGLE_BASE_TURN])
    else:
        a = (np.arange(CIRCLE_TURN_POINTS) + 0.5) * 2 * math.pi / CIRCLE_TURN_POINTS
        r = max(s / 2 - 0.5, 0.0)
        px, py = x + s / 2 + r * np.cos(a), y + s / 2 + r * np.sin(a)
        wt = np.full(CIRCLE_TURN_POINTS, 1.0 / CIRCLE_TURN_POINTS)
    return px, py, wt


def n_centres(drawn, crop):
    """How many shapes have their centre inside the crop (x0, y0, x1, y1): the per-image count target."""
    x0, y0, x1, y1 = crop
    return sum(
        1 for d in drawn if x0 <= d["box"][0] + d["box"][2] / 2 < x1 and y0 <= d["box"][1] + d["box"][2] / 2 < y1
    )


def make_batch(enc, rng, n_scenes, cfg, min_frac=shapes.MIN_FRAC, phase1=False):
    """n_scenes scenes -> (seqs, imgs): seqs[i] = (ids, n_prompt, targets, qkind, image indices into imgs).

    phase1: one-shape scenes and the shape question only. scenes[i] = (index of an image in imgs,
    targets: number of shape centres inside it (minus 1 without crop_count) and, on whole images, per shape kind, 1 + the colour of the only
    shape of that kind or 0 (-100 on crops)); one per scene's whole image, one per crop with crop_count."""
    seqs, imgs, scenes = [], [], []
    for _ in range(n_scenes):
        if phase1:
            if cfg["phase1_cok"] > 0 and rng.random() < cfg["phase1_cok"]:
                img, qa, drawn = scene_questions(rng, cfg["jitter"], min_frac, 0.0, 0.0, only=("color_of_kind",), n_shapes=2)
            else:
                img, qa, drawn = scene_questions(rng, cfg["jitter"], min_frac, 1.0, 0.0, only=("shape",))
            split = rng.random() < cfg["phase1_split_frac"]
        else:
            img, qa, drawn = scene_questions(
                rng, cfg["jitter"], min_frac, cfg["p_single"], cfg["p_count_single"], p_few_colors=cfg["p_few_colors"],
                few_count_only=cfg["few_colors_count_only"] > 0, p_balanced_colors=cfg["p_balanced_colors"],
            )
            split = rng.random() < cfg["split_frac"]
        first = len(imgs)
        imgs.extend(enc.images(img, split, drawn))
        idx = list(range(first, len(imgs)))
        for qkind, question, ans in qa:
            ids, n_prompt, targets = enc.text(question, ans, split)
            seqs.append((ids, n_prompt, targets, qkind, idx))
        kinds = [d["kind"] for d in drawn]
        color_of_kind = [
            1 + shapes.COLOR_NAMES.index(drawn[kinds.index(k)]["color"]) if kinds.count(k) == 1 else 0
            for k in shapes.KINDS
        ]
        # count classes: 0..4 with crop_count (a crop may hold no centre), else 1..4 as 0..3
        # then the number of shapes of each kind (0..4; the count is their sum, and two shapes of one colour are
        # mostly of different kinds, which the kind slots already tell apart)
        kind_counts = [kinds.count(k) for k in shapes.KINDS]
        scenes.append((idx[-1], [len(drawn) - (0 if cfg["crop_count"] > 0 else 1)] + color_of_kind + kind_counts))
        if cfg["crop_count"] > 0:
            for j in idx[:-1]:  # the crops of a split image: count the shape centres inside (0..4)
                scenes.append((j, [imgs[j][3]] + [-100] * 2 * len(shapes.KINDS)))
    return seqs, imgs, scenes


def real_patches(pixel_mask, ps):
    """[n, h, w] pixel mask -> [n, h // ps, w // ps] patch mask, as Idefics2Model.get_image_features (no padding
    images here): a patch is real only if all its pixels are."""
    sub = pixel_mask.unfold(1, ps, ps).unfold(2, ps, ps)
    return (sub.sum(dim=(-1, -2)) == ps * ps).bool()


def image_features(model, imgs, aux_head=None, max_pad=1.25):
    """Vision encoder + connector over a flat list of images, in order -> (features, aux loss, aux accuracy).

    Images are grouped by size so that little padding is computed; the result is what
    Idefics2Model.get_image_features gives for the padded batch (padding is masked out). With aux_head, the
    vision encoder's output at every real patch also predicts the shape kind and colour under the patch centre
    (training only: that dense signal teaches the encoder to see shapes far sooner than the answers alone)."""
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
    aux_logits, aux_tgt, aux_off, aux_dens, dens_sum_err, flag_ok, count_att = [], [], [], [], [], [], []
    ps = model.config.vision_config.patch_size
    for g in groups:
        hmax = max(imgs[j][0].shape[1] for j in g)
        wmax = max(imgs[j][0].shape[2] for j in g)
        pv = torch.zeros(len(g), 3, hmax, wmax)
        pm = torch.zeros(len(g), hmax, wmax, dtype=torch.long)
        tgt = torch.full((len(g), hmax // ps, wmax // ps, 4), -100, dtype=torch.long)
        otgt = torch.full((len(g), hmax // ps, wmax // ps, 2), float("nan"))
        dtgt = torch.zeros(len(g), hmax // ps, wmax // ps)
        for k, j in enumerate(g):
            p, m, t, _, off, dens = imgs[j]
            pv[k, :, : p.shape[1], : p.shape[2]] = p
            pm[k, : m.shape[0], : m.shape[1]] = m
            tgt[k, : t.shape[0], : t.shape[1]] = t
            otgt[k, : off.shape[0], : off.shape[1]] = off
            dtgt[k, : dens.shape[0], : dens.shape[1]] = dens
        pv, pm = pv.to(DEV), pm.to(DEV)
        patch_mask = real_patches(pm, ps)
        hidden = model.model.vision_model(pixel_values=pv, patch_attention_mask=patch_mask).last_hidden_state
        f = model.model.connector(hidden, attention_mask=patch_mask.view(len(g), -1))
        if aux_head is not None and COUNT_ATTENTION[0] > 0:
            flags = ((tgt[..., 2] == 1) & (tgt[..., 0] >= 0)).flatten(1).to(DEV)
            count_att.append(count_attention_loss(model, flags))
        for k, j in enumerate(g):
            feats[j] = f[k]
        if aux_head is not None:
            al = aux_head(hidden)
            with torch.no_grad():  # images whose flagged patches (centre or anchor) are as many as their targets
                c0 = 1 + len(shapes.KINDS) + 1 + len(shapes.COLOR_NAMES)
                # the flag's loss weighs flagged patches CENTRE_WEIGHTS[1] times: even odds lie at this logit margin
                margin = math.log(CENTRE_WEIGHTS[1] / CENTRE_WEIGHTS[0])
                flagged = (al[..., c0 + 1] - al[..., c0] > margin) & (tgt[..., 0] >= 0).flatten(1).to(DEV)
                flag_ok.append(flagged.sum(1) == (tgt[..., 2] == 1).flatten(1).sum(1).to(DEV))
            aux_logits.append(al.flatten(0, 1))
            aux_tgt.append(tgt.flatten(0, 2))
            aux_off.append(otgt.flatten(0, 2))
            if DENSITY[0] > 0:  # per-image sums of the predicted centre density against the count
                real = (tgt[..., 0] >= 0).flatten(1).to(DEV)
                dsum = (al[..., -1].float() * real).sum(1)
                dens_sum_err.append(F.smooth_l1_loss(dsum, dtgt.flatten(1).sum(1).to(DEV), reduction="none", beta=0.25))
                aux_dens.append(dtgt.flatten(0, 2))
    feats = torch.cat(feats, 0)
    if aux_head is None:
        return feats, None, None
    logits, tgt = torch.cat(aux_logits).float(), torch.cat(aux_tgt).to(DEV)
    n_kind, n_col = 1 + len(shapes.KINDS), 1 + len(shapes.COLOR_NAMES)
    loss = (
        F.cross_entropy(logits[:, :n_kind], tgt[:, 0])
        + F.cross_entropy(logits[:, n_kind : n_kind + n_col], tgt[:, 1])
        + F.cross_entropy(logits[:, n_kind + n_col : n_kind + n_col + 2], tgt[:, 2], weight=CENTRE_WEIGHTS.to(logits.device))
    )
    if OFFSET_WEIGHT[0] > 0:  # centre offsets (see patch_targets)
        off = torch.cat(aux_off).to(DEV)
        on = ~torch.isnan(off[:, 0])
        o0 = n_kind + n_col + 2
        loss = loss + OFFSET_WEIGHT[0] * F.smooth_l1_loss(logits[:, o0 : o0 + 2][on], off[on], beta=0.25)
    real = tgt[:, 0] >= 0
    pc0 = n_kind + n_col + 2 + (2 if OFFSET_WEIGHT[0] > 0 else 0)  # the optional outputs follow: count, then density
    if PATCH_COUNT[0] > 0:  # the count of the patch's image, on every real patch
        loss = loss + PATCH_COUNT[0] * F.cross_entropy(logits[:, pc0 : pc0 + 5], tgt[:, 3])
    if DENSITY[0] > 0:  # the last output (see the per-image sums above)
        dens = torch.cat(aux_dens).to(DEV)
        # per patch (x 10: the targets are small) and per image sum
        loss = loss + DENSITY[0] * (
            10 * F.smooth_l1_loss(logits[:, -1][real], dens[real], beta=0.1) + torch.cat(dens_sum_err).mean()
        )
    if count_att:
        att_loss = torch.cat([a for a, _ in count_att])
        loss = loss + COUNT_ATTENTION[0] * att_loss.mean()
        EXTRA_METRICS["count_att"] = torch.cat([ok for _, ok in count_att]).float().mean().item()
    with torch.no_grad():
        shape_px = real & (tgt[:, 0] > 0)
        acc = (logits[:, :n_kind].argmax(-1) == tgt[:, 0])[shape_px].float().mean().item()
        EXTRA_METRICS["flags"] = torch.cat(flag_ok).float().mean().item()
        if PATCH_COUNT[0] > 0:
            EXTRA_METRICS["patch_count"] = (logits[:, pc0 : pc0 + 5].argmax(-1) == tgt[:, 3])[real].float().mean().item()
        if DENSITY[0] > 0:  # images whose rounded density sum is their count
            EXTRA_METRICS["density_count"] = (torch.cat(dens_sum_err) < 0.125).float().mean().item()
    return feats, loss, acc


def count_attention_loss(model, flags):
    """Per image: cross-entropy of one perceiver head's attention (image token COUNT_LATENT, head COUNT_HEAD, over the
    patches and the latents) against the uniform distribution over the flagged patches and that token itself, and
    whether the weight left on itself gives the number of flags.

    A softmax can only average, so a token cannot sum what it attends to; but a key of its own makes the share it keeps
    1 / (c + 1) for c flagged patches of equal weight, and its output mixes its own value with theirs in that
    proportion: the count becomes something the decoder can read. Taught on the flags (a mass spread over two
    neighbouring patches counts alike), this is the encoder's per-patch flag wired to where the answers look."""
    attn = model.model.connector.perceiver_resampler.layers[0].self_attn
    lat, ctx, mask = PERCEIVER_INPUTS["latents"], PERCEIVER_INPUTS["context"], PERCEIVER_INPUTS["attention_mask"]
    hd = attn.head_dim
    q = attn.q_proj(lat[:, COUNT_LATENT])[:, COUNT_HEAD * hd : (COUNT_HEAD + 1) * hd]
    kv = COUNT_HEAD // attn.num_key_value_groups
    k = attn.k_proj(torch.cat([ctx, lat], 1))[..., kv * hd : (kv + 1) * hd]
    logp = F.log_softmax((torch.einsum("bd,bnd->bn", q, k) * attn.scaling + mask[:, 0, COUNT_LATENT]).float(), -1)
    target = torch.cat([flags, torch.zeros_like(lat[..., 0], dtype=torch.bool)], 1)
    target[:, ctx.shape[1] + COUNT_LATENT] = True
    target = target.float() / target.sum(1, keepdim=True)
    loss = -(target * logp.clamp_min(-1e4)).sum(1)
    with torch.no_grad():
        own = logp[:, ctx.shape[1] + COUNT_LATENT].exp()
        ok = torch.round(1 / own - 1) == flags.sum(1)
    return loss, ok


def keep_perceiver_inputs(module, args, kwargs):
    PERCEIVER_INPUTS.update(latents=kwargs["latents"], context=kwargs["context"], attention_mask=kwargs["attention_mask"])


def forward_loss(model, seqs, imgs, scenes=None, heads=None, cfg=None):
    """Cross-entropy on the answer tokens and the following <end_of_utterance> only, plus two auxiliary losses
    (training only, the heads are not saved): the per-patch loss of image_features, and a scene loss on the
    connector's output for each whole image (its 16 image tokens, flattened, predict the number of shapes and
    the colour of the only circle / square / triangle). Both give dense signal where the answers give one token.

    Sequences are right-padded (positions stay 0..n-1, as in unpadded generation) in two groups of similar
    length (prompts with 1 or 5 images) so that little padding is computed."""
    heads = heads or {}
    answer_weight = {"color_of_kind": cfg["cok_weight"], "count": cfg["count_weight"]} if cfg else {}
    feats, aux_loss, aux_acc = image_features(model, imgs, heads.get("patch"), max_pad=(cfg or TRAIN)["max_pad"])
    feats = feats.view(len(imgs), N_LATENTS, -1)
    scene_loss = None
    if "scene" in heads:
        which = torch.tensor([sc[0] for sc in scenes], device=DEV)
        st = torch.tensor([sc[1] for sc in scenes], device=DEV)
        sl = heads["scene"](feats[which].flatten(1)).float()
        n_count, n_col = 5 if cfg["crop_count"] > 0 else 4, 1 + len(shapes.COLOR_NAMES)
        scene_loss = F.cross_entropy(sl[:, :n_count], st[:, 0])
        for k in range(len(shapes.KINDS)):
            scene_loss = scene_loss + F.cross_entropy(sl[:, n_count + k * n_col : n_count + (k + 1) * n_col], st[:, 1 + k])
        with torch.no_grad():
            whole = st[:, 1] >= 0
            scene_count_acc = (sl[:, :n_count].argmax(-1) == st[:, 0])[whole].float().mean().item()
        if "slots" in heads:
            # one image token per kind holds that kind's colour: the answer is then a lookup by the question's word
            slot_logits = heads["slots"](feats[which][:, : len(shapes.KINDS)]).float()  # [scenes, kinds, 1 + colours]
            slot_tgt = st[:, 1 : 1 + len(shapes.KINDS)]
            scene_loss = scene_loss + cfg["kind_slots"] * F.cross_entropy(slot_logits.flatten(0, 1), slot_tgt.flatten())
            with torch.no_grad():
                named = slot_tgt > 0
                slot_acc = (slot_logits.argmax(-1) == slot_tgt)[named].float().mean().item() if named.any() else 0.0
        if "kind_counts" in heads:
            kc_logits = heads["kind_counts"](feats[which][:, : len(shapes.KINDS)]).float()  # [scenes, kinds, 0..4]
            kc_tgt = st[:, 1 + len(shapes.KINDS) : 1 + 2 * len(shapes.KINDS)]
            scene_loss = scene_loss + cfg["kind_counts"] * F.cross_entropy(kc_logits.flatten(0, 1), kc_tgt.flatten(), ignore_index=-100)
            with torch.no_grad():
                kind_counts_acc = (kc_logits.argmax(-1) == kc_tgt).all(-1)[whole].float().mean().item()
        if "count_slot" in heads:
            # one image token holds the count (a latent can count the centre patches against the other latents)
            cl = heads["count_slot"](feats[which][:, len(shapes.KINDS)]).float()
            scene_loss = scene_loss + cfg["count_slot"] * F.cross_entropy(cl, st[:, 0])
            with torch.no_grad():
                count_slot_acc = (cl.argmax(-1) == st[:, 0])[whole].float().mean().item()
    groups = {}
    for s in seqs:
        groups.setdefault(len(s[4]), []).append(s)
    hs, tgt, first, kinds, weights = [], [], [], [], []
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
                weights.append(answer_weight.get(qkind, 1.0))
                word = k == len(targets) - 2 if len(targets) == 3 else k == 0  # the word, not "▁" or the end
                first.append(word)
                if word:
                    kinds.append(qkind)
        f = torch.cat([feats[torch.tensor(s[4], device=DEV)].flatten(0, 1) for s in group], 0)
        out = model.model(input_ids=ids.to(DEV), attention_mask=am.to(DEV), image_hidden_states=f, use_cache=False)
        hs.append(out.last_hidden_state[torch.tensor(rows, device=DEV), torch.tensor(cols, device=DEV)])
    logits = model.lm_head(torch.cat(hs, 0)).float()
    tgt = torch.tensor(tgt, device=DEV)
    if any(v != 1.0 for v in answer_weight.values()):
        w = torch.tensor(weights, device=DEV)
        loss = (F.cross_entropy(logits, tgt, reduction="none") * w).sum() / w.sum()
    else:  # the plain mean, bit for bit as the shipped checkpoint was trained
        loss = F.cross_entropy(logits, tgt)
    with torch.no_grad():
        ok = (logits.argmax(-1) == tgt)[torch.tensor(first, device=DEV)].tolist()
        word_ok = {}
        for qkind, o in zip(kinds, ok):
            word_ok.setdefault(qkind, []).append(o)
        if aux_loss is not None:
            word_ok["patch"] = [aux_acc]
            for k, v in EXTRA_METRICS.items():
                word_ok[k] = [v]
        if scene_loss is not None:
            word_ok["scene_count"] = [scene_count_acc]
            if "slots" in heads:
                word_ok["slots"] = [slot_acc]
            if "count_slot" in heads:
                word_ok["count_slot"] = [count_slot_acc]
            if "kind_counts" in heads:
                word_ok["kind_counts"] = [kind_counts_acc]
    if aux_loss is not None:
        loss = loss + cfg["aux_weight"] * aux_loss
    if scene_loss is not None:
        loss = loss + cfg["scene_aux_weight"] * scene_loss
    return loss, word_ok


# ----------------------------------------------------------------------------------------------------------------
# Evaluation: real processor + chat template + generate, one example at a time (as the Rust side runs it)
# ----------------------------------------------------------------------------------------------------------------


def eval_set(seed, n_per_kind, geometric=False):
    """Fresh held-out examples (exact colours, no jitter): {qkind: [example]}. geometric: the same pictures
    rasterized by pixel centres (rerender_geometric), as the Rust accuracy test draws them."""
    rng = random.Random(seed)
    data = {k: [shapes.sample_example(rng, qkind=k, jitter=0) for _ in range(n_per_kind)] for k in shapes.QUESTION_KINDS}
    if geometric:
        for exs in data.values():
            for ex in exs:
                ex["image"] = rerender_geometric(ex["image"], ex["shapes"])
    return data


@torch.no_grad()
def answer(model, processor, image, question, max_new_tokens=EVAL["max_new_tokens"]):
    prompt = processor.apply_chat_template(shapes.chat_messages(question), add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
    out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    if 32002 in new:
        new = new[: new.index(32002)]
    return processor.tokenizer.decode(new, skip_special_tokens=False).strip()


def evaluate(model, processors, data, log=True, failures=False):
    """Returns {(qkind, split): accuracy} and prints a table."""
    model.eval()
    acc, wrong = {}, {}  # wrong: {(qkind, split): [(example, answer given)]}
    for split in (False, True):
        for k, exs in data.items():
            ok = 0
            for ex in exs:
                a = answer(model, processors[split], ex["image"], ex["question"])
                if a == ex["answer"]:
                    ok += 1
                else:
                    wrong.setdefault((k, split), []).append((ex, a))
                    if failures:
                        W, H = ex["image"].size
                        print(f"  FAIL {k} split={'on' if split else 'off'} {W}x{H} aspect {max(W, H) / min(W, H):.1f} "
                              f"{ex['question']!r} want {ex['answer']} got {a!r} shapes (kind, colour, side px, side px "
                              f"at longest edge {LONGEST_EDGE}): "
                              f"{[(s['kind'], s['color'], s['box'][2], round(s['box'][2] * min(1, LONGEST_EDGE / max(W, H)), 1)) for s in ex['shapes']]}",
                              flush=True)
            acc[(k, split)] = ok / len(exs)
    if log:
        print_table(acc, {k: len(v) for k, v in data.items()})
        print_count_errors(wrong)
        for key, ws in wrong.items():
            print(f"  wrong {key}: {[(ex['image'].size, ex['question'], ex['answer'], a) for ex, a in ws[:6]]}")
    return acc


def print_count_errors(wrong):
    """How the count answers go wrong, against the shortcut of counting colours: under-counts that name the
    number of distinct colours of a picture repeating a colour, over-counts on pictures whose colours all differ.
    wrong: {(qkind, split): [(example, answer given)]}."""
    under = under_colours = over = over_distinct = 0
    for split in (False, True):
        for ex, got in wrong.get(("count", split), []):
            want, cs = ex["answer"], [s["color"] for s in ex["shapes"]]
            if got.isdigit() and int(got) < int(want):
                under += 1
                under_colours += int(got) == len(set(cs)) < len(cs)
            elif got.isdigit() and int(got) > int(want):
                over += 1
                over_distinct += len(set(cs)) == len(cs)
    print(f"count errors (both splitting modes): {under} under-counts, {under_colours} of them the number of distinct "
          f"colours; {over} over-counts, {over_distinct} of them on pictures whose colours all differ", flush=True)


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
    if cfg["pos_init"] > 0:
        pe = model.model.vision_model.embeddings.position_embedding.weight
        pe.copy_(cfg["pos_init"] * sincos_2d(model.config.vision_config.image_size // model.config.vision_config.patch_size, pe.shape[1]))


def sincos_2d(side, dim):
    """[side * side, dim] position codes of a side x side grid (row-major, as the vision position ids): half the
    channels sin/cos of the row, half of the column, at dim / 4 frequencies from a half turn over the grid to a
    period of 2 cells. Their dot products fall off with distance, so attention can group nearby patches from the
    start (transformers' normal(0, 0.02) position embeddings are 50x weaker than the patch embeddings)."""
    n = dim // 4
    freqs = math.pi / side * (side / 2) ** (torch.arange(n, dtype=torch.float64) / max(1, n - 1))
    pos = torch.arange(side, dtype=torch.float64)
    ang = pos[:, None] * freqs[None, :]
    code = torch.cat([torch.sin(ang), torch.cos(ang)], 1)  # [side, dim / 2]
    rows = code[:, None, :].expand(side, side, 2 * n)
    cols = code[None, :, :].expand(side, side, 2 * n)
    return torch.cat([rows, cols], -1).reshape(side * side, 4 * n).float()


def pad_rows(t, rows):
    """t with zero rows appended up to `rows` rows."""
    return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])


def grown_head(head, extra):
    """A copy of the Linear `head` with `extra` more outputs that start at zero (no random numbers drawn: the other
    outputs start as they would without them)."""
    out = torch.nn.utils.skip_init(torch.nn.Linear, head.in_features, head.out_features + extra)
    with torch.no_grad():
        out.weight.copy_(pad_rows(head.weight, out.out_features))
        out.bias.copy_(pad_rows(head.bias, out.out_features))
    return out


def load_grown(head, saved):
    """Loads a head's saved state; a saved head with fewer outputs (a snapshot from before a grown_head knob) fills
    the first rows, the others stay as they are (zero)."""
    with torch.no_grad():
        for name, t in head.state_dict(keep_vars=True).items():
            n = min(t.shape[0], saved[name].shape[0])  # a saved head with an unused grown row (zero) loses it
            t[:n].copy_(saved[name][:n])


def lr_at(step, cfg, frac=None):
    """Warmup, then a cosine decay over the steps, or over the time budget when frac (its elapsed share) is given."""
    if step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    t = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"]) if frac is None else min(1.0, frac)
    return cfg["lr"] * (cfg["min_lr_frac"] + (1 - cfg["min_lr_frac"]) * 0.5 * (1 + math.cos(math.pi * t)))


def step_data_args(step, cfg):
    """The data knobs of one step: (that step's config, smallest shape fraction, phase 1)."""
    phase1 = step < cfg["phase1_steps"]
    c, s2 = cfg["curriculum_min_frac"], step - cfg["phase1_steps"]
    min_frac = c if phase1 else max(shapes.MIN_FRAC, c - (c - shapes.MIN_FRAC) * s2 / max(1, cfg["curriculum_steps"]))
    step_cfg = dict(cfg, **{p: 0.0 for p, start in LATE_SCENES.items() if step < cfg[start]})
    return step_cfg, min_frac, phase1


WORKER = {}  # a data worker's own Encoder


def worker_init(centre_label):
    # Lowest priority, so as not to slow the training's own threads; on the 2-core CPU a worker still gains
    # nothing (100 steps: 113 s with one, 115 s without; README). It is for the GPU's many cores.
    os.nice(19)
    torch.set_num_threads(1)
    WORKER["enc"] = Encoder(centre_label=centre_label)


def worker_batch(step_and_cfg):
    """One step's batch, drawn in a worker from its own generator seeded by (seed, step); tensors travel as numpy
    arrays (pickled bytes: no shared-memory files, whose space a container may lack)."""
    step, cfg = step_and_cfg
    step_cfg, min_frac, phase1 = step_data_args(step, cfg)
    rng = random.Random(cfg["seed"] * 1_000_003 + step)
    seqs, imgs, scenes = make_batch(WORKER["enc"], rng, cfg["scenes_per_batch"], step_cfg, min_frac, phase1)
    imgs = [tuple(x.numpy() if torch.is_tensor(x) else x for x in im) for im in imgs]
    return seqs, imgs, scenes


def parallel_batches(cfg, first):
    """Batches of steps first, first + 1, ... from cfg["data_workers"] processes, in order, at most two per worker
    drawn ahead (Pool.imap would draw them all ahead, as fast as the workers go)."""
    import collections
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(cfg["data_workers"], worker_init, (cfg["centre_label"] > 0,))
    ahead = collections.deque()
    nxt = first
    try:
        while True:
            while nxt < cfg["steps"] and len(ahead) < 2 * cfg["data_workers"]:
                ahead.append(pool.apply_async(worker_batch, ((nxt, cfg),)))
                nxt += 1
            if not ahead:
                return
            seqs, imgs, scenes = ahead.popleft().get()
            yield seqs, [tuple(torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in im) for im in imgs], scenes
    finally:  # also when training stops early (time limit): the batches drawn ahead are dropped with the workers
        pool.terminate()


def train(cfg, log_every=LOG_EVERY, max_seconds=None, snapshot=None, snapshot_at=None, resume=None, time_budget=None):
    """time_budget (dev, seconds): the learning rate decays over that time instead of over the steps, and training
    stops when it is spent (for a GPU run of fixed length whose step time is not known beforehand)."""
    torch.manual_seed(cfg["seed"])
    rng = random.Random(cfg["seed"])
    model = Idefics2ForConditionalGeneration(build_config())
    init_weights(model, cfg)
    model.to(DEV)
    model.train()
    heads = {}
    if cfg["aux_weight"] > 0:
        n_off = 2 if cfg["offset_weight"] > 0 else 0
        OFFSET_WEIGHT[0], PATCH_COUNT[0], DENSITY[0] = cfg["offset_weight"], cfg["patch_count"], cfg["centre_density"]
        ANCHOR[0] = cfg["anchor"] > 0
        if cfg["count_attention"] > 0:
            model.model.connector.perceiver_resampler.layers[0].self_attn.register_forward_pre_hook(
                keep_perceiver_inputs, with_kwargs=True
            )
        n_extra = (5 if cfg["patch_count"] > 0 else 0) + (1 if cfg["centre_density"] > 0 else 0)
        heads["patch"] = torch.nn.Linear(VISION["hidden_size"], 1 + len(shapes.KINDS) + 1 + len(shapes.COLOR_NAMES) + 2 + n_off + n_extra)
        if cfg["centre_density"] > 0:  # the density starts at 0 everywhere: random sums over 256 patches would swamp the rest
            with torch.no_grad():
                heads["patch"].weight[-1].zero_()
                heads["patch"].bias[-1].zero_()
        for knob, _, kind in GROWN_DENSITIES:
            if cfg[knob] > 0:
                assert cfg["centre_density"] == 0 and DENSITY_KIND[0] == "centre", f"{knob} replaces centre_density"
                DENSITY_KIND[0] = kind
                heads["patch"] = grown_head(heads["patch"], 1)
    if cfg["scene_aux_weight"] > 0:
        heads["scene"] = torch.nn.Linear(N_LATENTS * TEXT["hidden_size"], (5 if cfg["crop_count"] > 0 else 4) + len(shapes.KINDS) * (1 + len(shapes.COLOR_NAMES)))
    if cfg["kind_slots"] > 0:
        heads["slots"] = torch.nn.Linear(TEXT["hidden_size"], 1 + len(shapes.COLOR_NAMES))
    if cfg["kind_counts"] > 0:
        assert cfg["kind_slots"] > 0, "kind_counts uses the kind slots' image tokens"
        heads["kind_counts"] = torch.nn.Linear(TEXT["hidden_size"], 5)
    if cfg["count_slot"] > 0:
        heads["count_slot"] = torch.nn.Linear(TEXT["hidden_size"], 5 if cfg["crop_count"] > 0 else 4)
    heads = {k: h.to(DEV) for k, h in heads.items()}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params} ({n_params * 2 / 1e6:.1f} MB in bf16)", flush=True)
    groups = {}
    named = list(model.named_parameters()) + [x for k, h in heads.items() for x in h.named_parameters(k)]
    for n, p in named:
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
    enc = Encoder(centre_label=cfg["centre_label"] > 0)
    t0 = time.time()
    first = 0
    if resume is not None:
        # Dev: go on from a snapshot of another run (same recipe up to its step: runs that differ only later share
        # their first steps). Every state the loop reads is restored, so the result equals the uninterrupted run's.
        st = torch.load(resume, weights_only=False)
        changed = {k: (st["cfg"].get(k), v) for k, v in cfg.items() if st["cfg"].get(k) != v}
        print(f"resumed at step {st['step']} from {resume}; config keys that differ (snapshot, now): {changed}", flush=True)
        model.load_state_dict(st["model"])
        for k, h in heads.items():
            load_grown(h, st["heads"][k])
        opt.load_state_dict(st["opt"])
        for p, state in opt.state.items():  # the rows a grown head adds start with no optimizer history
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state and state[key].shape != p.shape:
                    state[key] = pad_rows(state[key][: p.shape[0]], p.shape[0])
        rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        np.random.set_state(st["np_rng"])
        first = st["step"]
    run_loss, run_ok, t_data = 0.0, {}, 0.0
    ema = None
    batches = parallel_batches(cfg, first) if cfg["data_workers"] > 0 else None
    if batches is not None:  # the workers' start is not training time
        pending = next(batches)
        t0 = time.time()
    for step in range(first, cfg["steps"]):
        if snapshot is not None and step == snapshot_at:
            torch.save(
                {"step": step, "cfg": cfg, "model": model.state_dict(), "heads": {k: h.state_dict() for k, h in heads.items()},
                 "opt": opt.state_dict(), "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                 "np_rng": np.random.get_state()},
                snapshot,
            )
            print(f"snapshot of step {step}: {snapshot}", flush=True)
        if max_seconds is not None and time.time() - t0 > max_seconds:
            print(f"stopped at step {step}: time limit", flush=True)
            break
        frac = None if time_budget is None else (time.time() - t0) / time_budget
        if frac is not None and frac >= 1:
            print(f"stopped at step {step}: time budget spent", flush=True)
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, frac) * g["lr_mult"]
        td = time.time()
        step_cfg, min_frac, phase1 = step_data_args(step, cfg)
        COUNT_ATTENTION[0] = cfg["count_attention"] if step >= cfg["count_attention_from"] else 0.0
        for knob, start, _ in GROWN_DENSITIES:
            if cfg[knob] > 0:
                DENSITY[0] = cfg[knob] if step >= cfg[start] else 0.0
        if batches is not None:
            (seqs, imgs, scenes), pending = pending, next(batches, None)
        else:
            seqs, imgs, scenes = make_batch(enc, rng, cfg["scenes_per_batch"], step_cfg, min_frac, phase1)
        t_data += time.time() - td
        loss, word_ok = forward_loss(model, seqs, imgs, scenes, heads, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        if cfg["ema_decay"] > 0 and step >= cfg["ema_from"]:
            with torch.no_grad():
                if ema is None:
                    ema = [p.detach().clone() for p in model.parameters()]
                else:
                    torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1.0 - cfg["ema_decay"])
        run_loss += loss.item()
        for k, v in word_ok.items():
            run_ok.setdefault(k, []).extend(v)
        if (step + 1) % log_every == 0:
            el = time.time() - t0
            accs = " ".join(f"{k}={sum(run_ok[k]) / len(run_ok[k]):.2f}" for k in shapes.QUESTION_KINDS + ["patch", "scene_count", "slots", "kind_counts", "count_slot", "patch_count", "density_count", "flags", "count_att"] if k in run_ok)
            print(
                f"step {step + 1}/{cfg['steps']} loss {run_loss / log_every:.4f} word-acc {accs} "
                f"lr {lr_at(step, cfg, frac):.2e} elapsed {el:.0f}s (data {t_data:.0f}s) "
                f"eta {el / (step + 1 - first) * (cfg['steps'] - step - 1):.0f}s",
                flush=True,
            )
            run_loss, run_ok = 0.0, {}
            if LIBC is not None:
                LIBC.malloc_trim(0)
    if batches is not None:
        batches.close()  # stops the data workers
    if ema is not None:
        with torch.no_grad():
            for p, e in zip(model.parameters(), ema):
                p.copy_(e)
    model.to("cpu")
    return model, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=TRAIN["steps"])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--eval-n", type=int, default=EVAL["n_per_kind"])
    ap.add_argument("--eval-only", default=None, help="evaluate a saved checkpoint directory and exit")
    ap.add_argument("--no-samples", action="store_true")
    ap.add_argument("--eval-geometric", action="store_true", help="evaluate on pictures rasterized by pixel centres")
    ap.add_argument("--failures", action="store_true", help="print every wrong answer with the image size and shapes")
    ap.add_argument("--arch", action="append", default=[], help="dev: override an architecture key, e.g. --arch vision.num_hidden_layers=3 or processor.shortest_edge=112")
    ap.add_argument("--max-minutes", type=float, default=None, help="dev: stop training after this long")
    ap.add_argument("--time-budget", type=float, default=None, help="dev: minutes; the learning rate decays over them (see train)")
    ap.add_argument("--snapshot", default=None, help="dev: save the whole training state to this file at --snapshot-at")
    ap.add_argument("--snapshot-at", type=int, default=None, help="dev: the step (a multiple of 25) to snapshot")
    ap.add_argument("--resume", default=None, help="dev: go on from a --snapshot file")
    ap.add_argument("--set", action="append", default=[], help="dev: override a TRAIN key, e.g. --set lr=1e-3")
    args = ap.parse_args()
    if args.snapshot is not None and (args.snapshot_at is None or args.snapshot_at % LOG_EVERY != 0):
        ap.error(f"--snapshot needs --snapshot-at, a multiple of {LOG_EVERY} (the log interval, so a resumed run logs alike)")
    torch.set_num_threads(TRAIN["threads"])  # again below, after --set threads=N

    data = eval_set(EVAL["seed"], args.eval_n, args.eval_geometric)
    if args.eval_only:
        model, procs = load_checkpoint(args.eval_only)
        evaluate(model, procs, data, failures=args.failures)
        if not args.no_samples:
            write_samples()
            sample_answers(model, procs)
        return

    for kv in args.arch:
        k, v = kv.split("=", 1)
        part, key = k.split(".", 1)
        table = {"vision": VISION, "perceiver": PERCEIVER, "text": TEXT, "processor": PROCESSOR}[part]
        assert key in table, k
        table[key] = type(table[key])(v)
    # The processor's image_seq_len, the scene head and the image-token reshape follow the
    # perceiver's number of latents (also when --arch changes it).
    global N_LATENTS
    N_LATENTS = PERCEIVER["resampler_n_latents"]
    cfg = dict(TRAIN, steps=args.steps)
    for kv in args.set:
        k, v = kv.split("=", 1)
        assert k in cfg, k
        cfg[k] = type(cfg[k])(float(v)) if isinstance(cfg[k], (int, float)) else v
    if args.snapshot is not None and cfg["ema_decay"] > 0 and args.snapshot_at > cfg["ema_from"]:
        ap.error("--snapshot-at after ema_from: the snapshot does not hold the weight average")
    torch.set_num_threads(cfg["threads"])
    print("train config:", json.dumps(cfg), flush=True)
    model, train_s = train(
        cfg, max_seconds=None if args.max_minutes is None else 60 * args.max_minutes,
        snapshot=args.snapshot, snapshot_at=args.snapshot_at, resume=args.resume,
        time_budget=None if args.time_budget is None else 60 * args.time_budget,
    )
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
