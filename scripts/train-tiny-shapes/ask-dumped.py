#!/usr/bin/env python3
"""Asks transformers (the reference) the questions of a dump of the Rust accuracy test and compares.

    SHAPES_ACCURACY_DUMP=/tmp/dump cargo test --release --workspace --test shapes_accuracy
    /opt/refenv/bin/python scripts/train-tiny-shapes/ask-dumped.py /tmp/dump/cpu [MODEL_DIR]

Prints, per question kind and splitting mode, how many answers are right for the Rust pipeline and
for transformers on the very same pictures, and every picture where the two answer differently.
"""

import os
import sys

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train  # noqa: E402

if len(sys.argv) < 2:
    sys.exit(__doc__)
dump = sys.argv[1]
model_dir = sys.argv[2] if len(sys.argv) > 2 else train.DEFAULT_OUT
model, procs = train.load_checkpoint(model_dir)
rows = [line.split("\t") for line in open(os.path.join(dump, "answers.tsv")).read().splitlines()]
tally, differ = {}, []
for name, split, kind, question, want, got_rust in rows:
    split = split == "true"
    got_ref = train.answer(model, procs[split], Image.open(os.path.join(dump, name)).convert("RGB"), question)
    t = tally.setdefault((kind, split), [0, 0, 0])
    t[0] += got_rust == want
    t[1] += got_ref == want
    t[2] += 1
    if got_ref != got_rust:
        differ.append((name, split, question, want, got_rust, got_ref))
print("| question | splitting | Rust | transformers | of |")
print("| --- | --- | --- | --- | --- |")
for (kind, split), (r, t_, n) in sorted(tally.items()):
    print(f"| {kind} | {'on' if split else 'off'} | {r} | {t_} | {n} |")
print(f"all: Rust {sum(v[0] for v in tally.values())}, transformers {sum(v[1] for v in tally.values())} of {len(rows)}")
print(f"pictures where the answers differ: {len(differ)}")
for d in differ:
    print("  ", d)
