"""The "shapes" task: simple pictures and one-word questions about them.

This is the data generator used to train `assets/idefics2-tiny-shapes/`. It is deliberately small and
plain so that it can be re-implemented elsewhere (the Rust test draws its own images with its own
generator and seed). Everything is deterministic from a `random.Random` seed; only the standard library
and Pillow are used.

The task
--------
Image
  * size: width and height drawn independently and uniformly from 48..640 px (any aspect ratio);
  * background: white (probability 1/2) or a random light colour (each channel uniform in 200..255);
  * 1 to 4 filled shapes, each a circle, a square or a triangle, each in one of six colours:

        red (255, 0, 0)   green (0, 128, 0)   blue (0, 0, 255)
        yellow (255, 255, 0)   purple (128, 0, 128)   orange (255, 165, 0)

    (the CSS / Pillow named colours). With `jitter` > 0 (training uses 20) each channel is moved by a
    uniform integer in -jitter..jitter and clamped to 0..255; test images may use the exact colours.
  * size s (px, the side of the shape's square bounding box) uniform in
    ceil(0.12 * short) .. max(ceil(0.12 * short), floor(0.5 * short)), where short = min(width, height);
  * position: the bounding box lies inside the image, top-left corner uniform;
  * shapes do not overlap: bounding boxes, each grown by a gap of max(2, round(0.03 * max(width, height)))
    px, do not intersect (a candidate is redrawn, size included, up to 100 times; if a shape still does
    not fit, the whole scene is redrawn);
  * drawing (Pillow ImageDraw, no anti-aliasing), box = [x, y, x + s - 1, y + s - 1]:
      circle   -> ellipse(box)
      square   -> rectangle(box)
      triangle -> polygon([(x + (s - 1) / 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)]) (apex up)

Questions (one image, one user turn, through the Idefics2 chat template) and answers (one lowercase word):
  * "What color is the shape?"    one shape            -> its colour, e.g. "red"
  * "What shape is this?"         one shape            -> "circle" | "square" | "triangle"
  * "How many shapes are there?"  1..4 shapes (uniform) -> "1" | "2" | "3" | "4"
  * "What color is the circle?" / "What color is the square?" / "What color is the triangle?"
                                  2..4 shapes (uniform) with exactly one of the asked kind (the others are of
                                  the two other kinds) -> the colour of that shape
Question kinds are drawn uniformly; kinds and colours of the shapes uniformly (subject to the rule above).
"""

import math
import random

from PIL import Image, ImageDraw

COLORS = {
    "red": (255, 0, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 128),
    "orange": (255, 165, 0),
}
COLOR_NAMES = list(COLORS)
KINDS = ["circle", "square", "triangle"]
QUESTION_KINDS = ["color", "shape", "count", "color_of_kind"]

MIN_SIDE, MAX_SIDE = 48, 640
MIN_FRAC, MAX_FRAC = 0.12, 0.5
MAX_TRIES = 100


def question_text(qkind, target_kind=None):
    if qkind == "color":
        return "What color is the shape?"
    if qkind == "shape":
        return "What shape is this?"
    if qkind == "count":
        return "How many shapes are there?"
    if qkind == "color_of_kind":
        return f"What color is the {target_kind}?"
    raise ValueError(qkind)


def _jittered(rgb, rng, jitter):
    if jitter <= 0:
        return tuple(rgb)
    return tuple(min(255, max(0, c + rng.randint(-jitter, jitter))) for c in rgb)


def _place(rng, width, height, n, min_frac=MIN_FRAC, max_frac=MAX_FRAC):
    """Non-overlapping boxes (x, y, s) for n shapes, or None if they did not fit."""
    short, long = min(width, height), max(width, height)
    s_min = math.ceil(min_frac * short)
    s_max = max(s_min, math.floor(max_frac * short))
    gap = max(2, round(0.03 * long))
    boxes = []
    for _ in range(n):
        for _ in range(MAX_TRIES):
            s = rng.randint(s_min, s_max)
            x = rng.randint(0, width - s)
            y = rng.randint(0, height - s)
            if all(
                x + s + gap <= bx or bx + bs + gap <= x or y + s + gap <= by or by + bs + gap <= y
                for bx, by, bs in boxes
            ):
                boxes.append((x, y, s))
                break
        else:
            return None
    return boxes


def draw_scene(rng, kinds, colors, jitter=0, size=None, min_frac=MIN_FRAC, max_frac=MAX_FRAC):
    """Draw one image holding len(kinds) shapes (kinds[i] in KINDS, colors[i] in COLOR_NAMES).

    Returns (PIL RGB image, list of dicts {kind, color, box=(x, y, s)}).
    size: optional (width, height); drawn uniformly from MIN_SIDE..MAX_SIDE otherwise.
    min_frac, max_frac: the shape size range as fractions of the shorter side (the task uses the defaults;
    training may start with larger shapes).
    """
    n = len(kinds)
    while True:
        if size is None:
            width, height = rng.randint(MIN_SIDE, MAX_SIDE), rng.randint(MIN_SIDE, MAX_SIDE)
        else:
            width, height = size
        if rng.random() < 0.5:
            bg = (255, 255, 255)
        else:
            bg = tuple(rng.randint(200, 255) for _ in range(3))
        boxes = _place(rng, width, height, n, min_frac, max_frac)
        if boxes is not None:
            break
    img = Image.new("RGB", (width, height), bg)
    d = ImageDraw.Draw(img)
    shapes = []
    for kind, color, (x, y, s) in zip(kinds, colors, boxes):
        fill = _jittered(COLORS[color], rng, jitter)
        box = [x, y, x + s - 1, y + s - 1]
        if kind == "circle":
            d.ellipse(box, fill=fill)
        elif kind == "square":
            d.rectangle(box, fill=fill)
        elif kind == "triangle":
            d.polygon([(x + (s - 1) / 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)], fill=fill)
        else:
            raise ValueError(kind)
        shapes.append({"kind": kind, "color": color, "box": (x, y, s)})
    return img, shapes


def sample_example(rng, qkind=None, jitter=0, size=None, min_frac=MIN_FRAC, max_frac=MAX_FRAC):
    """One (image, question, answer) example. qkind in QUESTION_KINDS, drawn uniformly if None.

    Returns a dict: image (PIL RGB), question (str), answer (str), qkind (str), shapes (list).
    """
    if qkind is None:
        qkind = rng.choice(QUESTION_KINDS)
    target = None
    if qkind in ("color", "shape"):
        kinds = [rng.choice(KINDS)]
    elif qkind == "count":
        n = rng.randint(1, 4)
        kinds = [rng.choice(KINDS) for _ in range(n)]
    elif qkind == "color_of_kind":
        n = rng.randint(2, 4)
        target = rng.choice(KINDS)
        others = [k for k in KINDS if k != target]
        kinds = [target] + [rng.choice(others) for _ in range(n - 1)]
        rng.shuffle(kinds)
    else:
        raise ValueError(qkind)
    colors = [rng.choice(COLOR_NAMES) for _ in kinds]
    img, shapes = draw_scene(rng, kinds, colors, jitter=jitter, size=size, min_frac=min_frac, max_frac=max_frac)
    if qkind == "color":
        answer = colors[0]
    elif qkind == "shape":
        answer = kinds[0]
    elif qkind == "count":
        answer = str(len(kinds))
    else:
        answer = colors[kinds.index(target)]
    return {
        "image": img,
        "question": question_text(qkind, target),
        "answer": answer,
        "qkind": qkind,
        "shapes": shapes,
    }


def chat_messages(question):
    """The chat messages for one question about one image (for processor.apply_chat_template)."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


if __name__ == "__main__":
    import sys

    rng = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for i in range(8):
        ex = sample_example(rng)
        print(ex["image"].size, ex["question"], "->", ex["answer"], [(s["kind"], s["color"]) for s in ex["shapes"]])
