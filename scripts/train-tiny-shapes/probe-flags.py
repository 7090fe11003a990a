#!/usr/bin/env python3
"""How exactly does a snapshot's per-patch flag (a shape's centre, or its first pixel with `anchor`) mark one patch
per shape? (Splitting off, whole pictures.)

    /opt/refenv/bin/python scripts/train-tiny-shapes/probe-flags.py SNAPSHOT [--n N]

SNAPSHOT: a `train.py --snapshot` file (the shipped architecture; its per-patch training head holds the flag). Draws N
fresh pictures of 1-4 shapes and prints how often the number of flagged patches equals the number of flags the
training targets hold, at several logit margins (the flag's loss weighs flagged patches CENTRE_WEIGHTS[1] times, so
even odds lie at log 10 = 2.30), how often the rounded sum of the flag probabilities does, and, at even odds, the
missed flags and the extra ones by their distance (in patches) to the nearest target.
"""

import argparse
import math
import os
import random
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import shapes  # noqa: E402
import train  # noqa: E402

from transformers import Idefics2ForConditionalGeneration  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("snapshot")
ap.add_argument("--n", type=int, default=200)
args = ap.parse_args()
torch.set_num_threads(2)
st = torch.load(args.snapshot, weights_only=False)
train.ANCHOR[0] = st["cfg"].get("anchor", 0) > 0
model = Idefics2ForConditionalGeneration(train.build_config())
model.load_state_dict(st["model"])
model.eval()
saved = st["heads"]["patch"]
head = torch.nn.Linear(saved["weight"].shape[1], saved["weight"].shape[0])
head.load_state_dict(saved)
print(f"snapshot of step {st['step']}, flag at the {'first pixel' if train.ANCHOR[0] else 'centre'}", flush=True)

enc = train.Encoder(centre_label=False)
rng = random.Random(777)
flag = 1 + len(shapes.KINDS) + 1 + len(shapes.COLOR_NAMES)  # the flag's two logits follow the kind and colour ones
even = math.log(train.CENTRE_WEIGHTS[1] / train.CENTRE_WEIGHTS[0])
margins = (0.0, 1.0, even, 3.0, 4.0)
exact = dict.fromkeys(margins, 0)
soft = missed = n_targets = 0
extra_dist = []
for _ in range(args.n):
    n = rng.randint(1, 4)
    kinds = [rng.choice(shapes.KINDS) for _ in range(n)]
    img, drawn = shapes.draw_scene(rng, kinds, [rng.choice(shapes.COLOR_NAMES) for _ in range(n)])
    pv, pm, tgt, _, _, _ = enc.images(img, False, drawn)[0]
    gy, gx = tgt.shape[:2]
    with torch.no_grad():
        hidden = model.model.vision_model(
            pixel_values=pv[None], patch_attention_mask=train.real_patches(pm[None], 14)
        ).last_hidden_state
        logits = head(hidden)[0]
    margin = (logits[:, flag + 1] - logits[:, flag]).view(gy, gx)
    target = tgt[..., 2] == 1
    n_targets += int(target.sum())
    for m in margins:
        exact[m] += int((margin > m).sum() == target.sum())
    soft += int(round(torch.sigmoid(margin - even).sum().item()) == int(target.sum()))
    flagged = margin > even
    missed += int((target & ~flagged).sum())
    where = target.nonzero().tolist()
    for y, x in (flagged & ~target).nonzero().tolist():
        extra_dist.append(min((max(abs(y - a), abs(x - b)) for a, b in where), default=99))
print("pictures flagged exactly, by logit margin:", {f"{m:.2f}": f"{v / args.n:.1%}" for m, v in exact.items()})
print(f"rounded probability sum right: {soft / args.n:.1%}")
print(
    f"at even odds: {missed} of {n_targets} flags missed, {len(extra_dist)} extra, by distance 0-5+: "
    f"{np.bincount(np.minimum(extra_dist, 5), minlength=6).tolist() if extra_dist else []}"
)
