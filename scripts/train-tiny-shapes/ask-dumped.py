#!/usr/bin/env python3
"""Asks transformers (the reference) the questions of a dump of the Rust accuracy test and compares.

    SHAPES_ACCURACY_DUMP=/tmp/dump cargo test --release -p idefics2 --test suite shapes_accuracy
    /opt/refenv/bin/python scripts/train-tiny-shapes/ask-dumped.py /tmp/dump [MODEL_DIR]
        [--write-fixture tests/fixtures/shapes_accuracy.tsv]

Prints, per question kind and splitting mode, how many answers are right for the Rust pipeline (on
the CPU device) and for transformers on the very same pictures, and every picture where the two
answer differently. --write-fixture writes transformers' answers (with each picture's FNV-1a hash of
its RGB bytes, which the Rust test recomputes) for the test to compare with, picture by picture.
"""

import os
import sys

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train  # noqa: E402


def fnv1a(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


args = sys.argv[1:]
fixture = None
if "--write-fixture" in args:
    i = args.index("--write-fixture")
    fixture = args[i + 1]
    del args[i : i + 2]
if not args:
    sys.exit(__doc__)
dump = args[0]
model_dir = args[1] if len(args) > 1 else train.DEFAULT_OUT
model, procs = train.load_checkpoint(model_dir)
rows = [line.split("\t") for line in open(os.path.join(dump, "answers.tsv")).read().splitlines()]
tally, differ, fixture_rows = {}, [], []
for name, split, kind, question, want, got_rust, picture_hash in rows:
    split = split == "true"
    image = Image.open(os.path.join(dump, name)).convert("RGB")
    assert fnv1a(image.tobytes()) == int(picture_hash, 16), f"{name}: not the picture Rust drew"
    got_ref = train.answer(model, procs[split], image, question)
    fixture_rows.append("\t".join([name[:-4], picture_hash, str(split).lower(), question, want, got_ref]))
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
if fixture:
    with open(fixture, "w") as f:
        f.write("index\tpicture_fnv1a\tsplitting\tquestion\texpected\ttransformers\n")
        f.write("".join(r + "\n" for r in fixture_rows))
    print(f"wrote {fixture}")
