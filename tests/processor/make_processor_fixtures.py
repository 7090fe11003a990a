"""Reference fixtures for the Rust Idefics2 processor (crates/idefics2/src/processor).

Run with transformers 4.54.1 + Pillow 13.0 (the reference venv; Pillow 12 and older order the
two resize passes differently, which moves a few pixels by 1/255):

    /opt/refenv/bin/python tests/processor/make_processor_fixtures.py

Writes, next to this script:
- images/        the committed test inputs (PNG, JPEG with EXIF orientation, WebP, GIF, BMP, ...)
- bad/           unreadable inputs (corrupt, truncated, not an image)
- model_dir/     idefics2-8b's preprocessor_config.json and processor_config.json
- refs/          one RGB PNG per distinct resized image, as uint8 (the reference's pixels before
                 rescale/normalize). The script asserts that the processor's float output equals
                 `((u8 * (1/255) as f64) as f32 - 0.5) / 0.5` exactly, so a PNG is a lossless record
                 of the reference's `pixel_values` and keeps the folder small.
- images/jpeg/   small JPEG variants (progressive, 4:2:2, 4:1:1, 4:4:4, gray, CMYK, restart
                 markers, tiny) whose decoded pixels alone are compared.
- decoded/       the reference's decoded RGB (`load_image`) of the lossy inputs (JPEG, lossy WebP),
                 to tell decoder differences from resize differences.
- pixels.json    pixel cases: inputs, options, the batch shape and, per (sample, image), the ref PNG
                 and its height/width (null for an all-zero padding image).
- text.json      prompt expansion + tokenization, chat template renders, decode and error cases.
"""

import hashlib
import json
import os
import struct
import zlib

import numpy as np
import PIL
import transformers
from PIL import Image
from transformers import AutoTokenizer, Idefics2ImageProcessor, Idefics2Processor
from transformers.image_utils import load_image

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_DIR = os.path.join(HERE, "..", "..", "assets", "tokenizer")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

RNG = np.random.default_rng(20240607)


def path(*parts):
    p = os.path.join(HERE, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p


def scene(h, w, noise_patch=True):
    """Smooth gradients, flat shapes with sharp edges, thin lines and a small noise patch."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 40 + 180 * x / max(w - 1, 1)
    g = 30 + 150 * y / max(h - 1, 1)
    b = 128 + 100 * np.sin(x / max(w, 1) * 7.0) * np.cos(y / max(h, 1) * 5.0)
    img = np.stack([r, g, b], -1)
    # flat rectangle and disc (sharp edges)
    img[h // 5 : h // 2, w // 6 : w // 2] = (230, 40, 60)
    cy, cx, rad = h * 0.65, w * 0.7, min(h, w) * 0.2
    img[(y - cy) ** 2 + (x - cx) ** 2 < rad**2] = (20, 200, 90)
    # one-pixel lines
    img[:, (w * 3) // 4] = (255, 255, 255)
    img[(h * 4) // 5, :] = (0, 0, 0)
    if noise_patch:
        ph, pw = max(1, h // 8), max(1, w // 8)
        img[h - ph :, :pw] = RNG.integers(0, 256, (ph, pw, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_png16(p, w, h, color_type, rows):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + r for r in rows)
    with open(p, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def make_images():
    """Creates the committed inputs; returns {name: file name}."""
    files = {}

    def save(name, im, **kw):
        fn = name
        im.save(path("images", fn), **kw)
        files[name.split(".")[0]] = fn

    save("tiny_5x4.png", Image.fromarray(RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)))
    save("huge_2000x1500.png", Image.fromarray(scene(1500, 2000, noise_patch=False)), optimize=True)
    wide = scene(40, 900)
    wide[::2, ::3] = 255 - wide[::2, ::3]
    save("wide_900x40.png", Image.fromarray(wide), optimize=True)
    save("tall_30x700.png", Image.fromarray(scene(700, 30)), optimize=True)
    save("odd_377x251.png", Image.fromarray(scene(251, 377)), optimize=True)
    save("gray_L_320x240.png", Image.fromarray(scene(240, 320)).convert("L"), optimize=True)
    gray2 = Image.fromarray((RNG.integers(0, 4, (48, 64)) * 85).astype(np.uint8)).convert("L")
    save("gray_2bit_64x48.png", gray2, bits=2)
    pal = Image.fromarray(scene(150, 200)).quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    save("palette_P_200x150.png", pal, optimize=True)
    pal_t = Image.fromarray(scene(120, 160)).quantize(colors=32, method=Image.Quantize.MEDIANCUT)
    save("palette_trns_160x120.png", pal_t, transparency=bytes([0, 128, 255] + [255] * 29))
    rgba = np.dstack([scene(200, 300), np.tile(np.linspace(0, 255, 300).astype(np.uint8), (200, 1))])
    save("rgba_300x200.png", Image.fromarray(rgba, "RGBA"), optimize=True)
    la = np.dstack([np.array(Image.fromarray(scene(100, 200)).convert("L")), np.full((100, 200), 90, np.uint8)])
    save("la_200x100.png", Image.fromarray(la, "LA"))
    g16 = (np.linspace(0, 420, 250)[None, :] + np.linspace(0, 60, 180)[:, None]).astype(">u2")
    write_png16(path("images", "gray16_250x180.png"), 250, 180, 0, [r.tobytes() for r in g16])
    files["gray16_250x180"] = "gray16_250x180.png"
    s = scene(90, 120).astype(np.uint32)
    rgb16 = (s * 257 + RNG.integers(0, 257, s.shape)).astype(">u2")
    write_png16(path("images", "rgb16_120x90.png"), 120, 90, 2, [r.tobytes() for r in rgb16])
    files["rgb16_120x90"] = "rgb16_120x90.png"

    exif6 = Image.Exif()
    exif6[0x0112] = 6
    save("exif6_640x480.jpg", Image.fromarray(scene(480, 640)), quality=85, exif=exif6.tobytes())
    exif8 = Image.Exif()
    exif8[0x0112] = 8
    save("exif8_200x120.jpg", Image.fromarray(scene(120, 200)), quality=90, exif=exif8.tobytes())
    save("plain_500x375.jpg", Image.fromarray(scene(375, 500)), quality=80)
    save("lossless_260x190.webp", Image.fromarray(scene(190, 260)), lossless=True)
    save("lossy_300x220.webp", Image.fromarray(scene(220, 300)), quality=80)
    frames = [Image.fromarray(scene(130, 180)).quantize(colors=48), Image.fromarray(255 - scene(130, 180)).quantize(colors=48)]
    frames[0].save(path("images", "anim_180x130.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["anim_180x130"] = "anim_180x130.gif"
    save("bitmap_150x110.bmp", Image.fromarray(scene(110, 150)))
    return files


def make_jpeg_variants():
    """Small JPEGs covering the decoder's paths; only their decoded pixels are compared."""
    base = Image.fromarray(scene(77, 123))
    variants = {
        "progressive_420.jpg": (base, dict(quality=90, progressive=True)),
        "progressive_444.jpg": (base, dict(quality=95, progressive=True, subsampling=0)),
        "progressive_gray.jpg": (base.convert("L"), dict(quality=90, progressive=True)),
        "baseline_422.jpg": (base, dict(quality=85, subsampling=1)),
        "baseline_411.jpg": (base, dict(quality=85, subsampling="4:1:1")),
        "baseline_444_q100.jpg": (base, dict(quality=100, subsampling=0)),
        "gray.jpg": (base.convert("L"), dict(quality=75)),
        "restart_blocks.jpg": (base, dict(quality=90, restart_marker_blocks=3)),
        "restart_rows_progressive.jpg": (base, dict(quality=90, restart_marker_rows=1, progressive=True)),
        "optimized_huffman.jpg": (base, dict(quality=60, optimize=True)),
        "tiny_3x5.jpg": (Image.fromarray(scene(5, 3, noise_patch=False)), dict(quality=90)),
        "tiny_4x2.jpg": (Image.fromarray(scene(2, 4, noise_patch=False)), dict(quality=90)),
        "odd_101x67_420.jpg": (Image.fromarray(scene(67, 101)), dict(quality=70)),
        "cmyk.jpg": (base.convert("CMYK"), dict(quality=90)),
    }
    names = []
    for name, (im, kw) in variants.items():
        im.save(path("images", "jpeg", name), **kw)
        names.append("jpeg/" + name)
    return names


def make_bad_files():
    with open(path("images", "odd_377x251.png"), "rb") as f:
        png = f.read()
    with open(path("bad", "truncated.png"), "wb") as f:
        f.write(png[: len(png) // 2])
    corrupt = bytearray(png)
    for i in range(100, min(len(corrupt), 4000)):
        corrupt[i] ^= 0x5A
    with open(path("bad", "corrupt.png"), "wb") as f:
        f.write(bytes(corrupt))
    with open(path("bad", "not_an_image.txt"), "w") as f:
        f.write("this is not an image\n")


def write_model_dir():
    pre = {
        "do_convert_rgb": True,
        "do_image_splitting": True,
        "do_normalize": True,
        "do_pad": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Idefics2ImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Idefics2Processor",
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 980, "shortest_edge": 378},
    }
    with open(path("model_dir", "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=2)
    with open(path("model_dir", "processor_config.json"), "w") as f:
        json.dump({"image_seq_len": 64, "processor_class": "Idefics2Processor"}, f, indent=2)
    with open(path("model_dir", "chat_template.json"), "w") as f:
        json.dump({"chat_template": CHAT_TEMPLATE}, f, indent=2)


class RefStore:
    """Stores each distinct uint8 image once, as refs/<sha>.png."""

    def __init__(self):
        self.seen = set()

    def put(self, u8):
        key = hashlib.sha256(u8.tobytes() + str(u8.shape).encode()).hexdigest()[:16]
        if key not in self.seen:
            Image.fromarray(u8).save(path("refs", key + ".png"), optimize=True)
            self.seen.add(key)
        return key


def normalize_like_reference(u8):
    x = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    return (x - np.float32(0.5)) / np.float32(0.5)


def record_pixels(store, out, per_sample_u8):
    """Checks `out` against the uint8 images and returns the JSON description of the batch."""
    pv = np.asarray(out["pixel_values"])
    mask = np.asarray(out["pixel_attention_mask"])
    b, n, c, H, W = pv.shape
    assert c == 3 and mask.shape == (b, n, H, W), (pv.shape, mask.shape)
    assert pv.dtype == np.float32, pv.dtype
    expect = np.zeros_like(pv)
    expect_mask = np.zeros((b, n, H, W), np.int64)
    images = []
    for bi in range(b):
        row = []
        for ii in range(n):
            if ii < len(per_sample_u8[bi]):
                u8 = per_sample_u8[bi][ii]
                h, w, _ = u8.shape
                expect[bi, ii, :, :h, :w] = normalize_like_reference(u8).transpose(2, 0, 1)
                expect_mask[bi, ii, :h, :w] = 1
                row.append({"ref": store.put(u8), "height": h, "width": w})
            else:
                row.append(None)
        images.append(row)
    assert np.array_equal(pv, expect), "pixel_values are not normalize(uint8 refs)"
    assert np.array_equal(mask.astype(np.int64), expect_mask), "pixel mask mismatch"
    return {"shape": list(pv.shape), "images": images}


def resized_u8(proc, pil_images, split, size):
    """The reference's uint8 images right after resize (the step before rescale)."""
    p = Idefics2ImageProcessor(do_image_splitting=split, size=size, do_rescale=False, do_normalize=False, do_pad=False)
    out = p([pil_images])["pixel_values"][0]
    return [np.ascontiguousarray(np.asarray(im).transpose(1, 2, 0)).astype(np.uint8) for im in out]


SETTINGS = {
    "8b": {"longest_edge": 980, "shortest_edge": 378},
    "small": {"longest_edge": 112, "shortest_edge": 42},
}


def pixel_cases(files, store):
    cases = []

    def run_case(name, samples, loader, split, setting):
        size = SETTINGS[setting]
        if loader == "load_image":
            pil = [[load_image(path("images", files[f])) for f in s] for s in samples]
        else:
            pil = [[Image.open(path("images", files[f])) for f in s] for s in samples]
        proc = Idefics2ImageProcessor(do_image_splitting=split, size=size)
        out = proc(pil)
        u8 = [resized_u8(proc, s, split, size) if s else [] for s in pil]
        rec = record_pixels(store, out, u8)
        cases.append(
            {
                "name": name,
                "samples": [[files[f] for f in s] for s in samples],
                "loader": loader,
                "do_image_splitting": split,
                "longest_edge": size["longest_edge"],
                "shortest_edge": size["shortest_edge"],
                **rec,
            }
        )

    for key in files:
        for setting in ("8b", "small"):
            for split in (False, True):
                run_case(f"{key}/{setting}/split={split}", [[key]], "load_image", split, setting)
    # alpha composited onto white when an RGBA/LA/P image reaches the image processor directly
    for key in ("rgba_300x200", "la_200x100", "palette_trns_160x120"):
        run_case(f"{key}/open/8b/split=False", [[key]], "open", False, "8b")
    # batches: padding to the batch's max H/W and to the max image count with all-zero images
    run_case("batch/2+1/8b/split=False", [["odd_377x251", "wide_900x40"], ["tall_30x700"]], "load_image", False, "8b")
    run_case("batch/1+2/small/split=True", [["plain_500x375"], ["gray_L_320x240", "tiny_5x4"]], "load_image", True, "small")
    return cases


def image_bytes_decoded(files, key):
    return np.asarray(load_image(path("images", files[key])))


def text_cases(tok):
    out = {"expansion": [], "chat": [], "decode": [], "errors": []}
    prompts_single = ["User:<image>What is in this image?<end_of_utterance>\nAssistant:"]
    prompts_multi = ["<image><image>Compare these two images. One is <b>bold</b> & 'quoted'.\n\nDone"]
    prompts_batch = [
        "User: Hi there!<image>Describe it.<end_of_utterance>\nAssistant:",
        "<image>A longer second prompt, with an image first, several words, ünïcødé and emoji 🦀.<image> end",
    ]
    prompts_noimg = ["No images here, just text.", "Second."]
    for seq in (64, 8):
        for split in (False, True):
            proc = Idefics2Processor(
                image_processor=Idefics2ImageProcessor(do_image_splitting=split),
                tokenizer=tok,
                image_seq_len=seq,
                chat_template=CHAT_TEMPLATE,
            )
            for label, prompts in (
                ("single", prompts_single),
                ("multi", prompts_multi),
                ("batch", prompts_batch),
                ("noimg", prompts_noimg),
            ):
                enc = proc(text=prompts, padding=True)
                n_images = [p.count("<image>") for p in prompts]
                out["expansion"].append(
                    {
                        "name": f"{label}/seq={seq}/split={split}",
                        "prompts": prompts,
                        "n_images": n_images,
                        "image_seq_len": seq,
                        "do_image_splitting": split,
                        "input_ids": enc["input_ids"],
                        "attention_mask": enc["attention_mask"],
                    }
                )
    proc = Idefics2Processor(
        image_processor=Idefics2ImageProcessor(do_image_splitting=False), tokenizer=tok, chat_template=CHAT_TEMPLATE
    )
    conversations = {
        "single": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What do we see in this image?"}]}
        ],
        "text_first": [
            {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"}, {"type": "text", "text": " and"}, {"type": "image"}]}
        ],
        "multi_turn": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red square and a green disc."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this one?"}]},
        ],
        "system_text_only": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Hello {{ not a tag }} \"quotes\""}]},
        ],
    }
    for name, msgs in conversations.items():
        for agp in (True, False):
            text = proc.apply_chat_template(msgs, add_generation_prompt=agp, tokenize=False)
            out["chat"].append({"name": f"{name}/agp={agp}", "messages": msgs, "add_generation_prompt": agp, "text": text})
    # chat batches of 2, tokenized with left padding
    out["chat_batch"] = []
    for seq in (64, 8):
        for split in (False, True):
            batch_proc = Idefics2Processor(
                image_processor=Idefics2ImageProcessor(do_image_splitting=split),
                tokenizer=tok,
                image_seq_len=seq,
                chat_template=CHAT_TEMPLATE,
            )
            texts = [
                batch_proc.apply_chat_template(conversations["single"], add_generation_prompt=True),
                batch_proc.apply_chat_template(conversations["multi_turn"], add_generation_prompt=True),
            ]
            enc = batch_proc(text=texts, padding=True)
            out["chat_batch"].append(
                {
                    "conversations": ["single", "multi_turn"],
                    "image_seq_len": seq,
                    "do_image_splitting": split,
                    "input_ids": enc["input_ids"],
                    "attention_mask": enc["attention_mask"],
                }
            )
    for text in ("Hello world", "A crab 🦀, ünïcødé\n\ttabs  and  spaces", "User:<image>x<end_of_utterance>\nAssistant: ok</s>"):
        ids = tok(text)["input_ids"]
        out["decode"].append(
            {
                "ids": ids,
                "skip_special_tokens_false": tok.decode(ids, skip_special_tokens=False),
                "skip_special_tokens_true": tok.decode(ids, skip_special_tokens=True),
            }
        )
    # error: placeholder count != number of images
    try:
        proc(text=["<image><image>two"], images=[[Image.new("RGB", (8, 8))]])
        raise AssertionError("expected an error")
    except ValueError as e:
        out["errors"].append({"prompts": ["<image><image>two"], "n_images": [1], "reference_error": str(e)})
    return out


def main():
    assert transformers.__version__ == "4.54.1", transformers.__version__
    files = make_images()
    make_bad_files()
    write_model_dir()
    store = RefStore()
    cases = pixel_cases(files, store)
    decoded = {}
    for key in ("exif6_640x480", "exif8_200x120", "plain_500x375", "lossy_300x220"):
        Image.fromarray(image_bytes_decoded(files, key)).save(path("decoded", key + ".png"), optimize=True)
        decoded[files[key]] = key + ".png"
    for name in make_jpeg_variants():
        png = name.replace("/", "_").replace(".jpg", ".png")
        Image.fromarray(np.asarray(load_image(path("images", name)))).save(path("decoded", png), optimize=True)
        decoded[name] = png
    # model_dir round trip: from_pretrained reads the same JSON the Rust side reads
    p = Idefics2ImageProcessor.from_pretrained(path("model_dir"))
    assert p.do_image_splitting and p.size["longest_edge"] == 980
    with open(path("pixels.json"), "w") as f:
        json.dump({"pillow": PIL.__version__, "transformers": transformers.__version__, "decoded": decoded, "cases": cases}, f, indent=1)
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    with open(path("text.json"), "w", encoding="utf-8") as f:
        json.dump(text_cases(tok), f, indent=1, ensure_ascii=False)
    total = sum(os.path.getsize(os.path.join(d, fn)) for d, _, fns in os.walk(HERE) for fn in fns)
    print(f"{len(cases)} pixel cases, {len(store.seen)} refs, folder {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
