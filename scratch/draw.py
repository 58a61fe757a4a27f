"""`python -m scratch draw "three hundred and twelve" --guidance 3 --out 312.png`: a number in words, drawn digit by digit.

Not math: text-to-image in miniature. The words become an integer (parse_number, the English
number words of scratch/text.py's corpus, or digits as given), the integer its decimal digits,
and each digit an image that the guided U-Net (scratch/guidance.py) draws from that digit's
word, "three", "one", "two"; the images are laid side by side in one PNG.
"""

import json
import os

import numpy as np

from scratch import unet as U
from scratch.text import tokenize

UNITS = {w: i for i, w in enumerate(U.DIGIT_WORDS)}
TEENS = {w: 10 + i for i, w in enumerate(("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                                          "seventeen", "eighteen", "nineteen"))}
TENS = {w: 10 * i for i, w in enumerate(("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"),
                                        start=2)}
SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
DEFAULT_CHECKPOINT = "runs/diffusion-mnist-scratch/checkpoint.npz"


def parse_number(text):
    """The int that English number words (as num2words writes them, "and" and hyphens optional) or digits name.

    "three hundred and twelve" → 312, "forty-two" → 42, "312" → 312. Anything else is a ValueError:
    the words are read as a number, written out again (scratch/data.py's number_words) and must
    come back the same, so "two three" or "hundred twelve" are refused rather than guessed at.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if text.strip().isdigit():
        return int(text.strip())
    words = [w.rstrip("-") for w in tokenize(text) if w.rstrip("-") != "and"]
    unknown = [w for w in words if w not in UNITS and w not in TEENS and w not in TENS and w != "hundred" and w not in SCALES]
    if not words or unknown:
        raise ValueError(f"{text!r} is not a number in English words" + (f" (unknown: {unknown})" if unknown else ""))
    total, current = 0, 0
    for word in words:
        if word == "hundred":
            current *= 100
        elif word in SCALES:
            total, current = total + current * SCALES[word], 0
        else:
            current += UNITS.get(word, 0) + TEENS.get(word, 0) + TENS.get(word, 0)
    number = total + current
    from scratch.data import number_words

    written = [w.rstrip("-") for w in tokenize(number_words(number)[0]) if w.rstrip("-") != "and"]
    if written != words:
        raise ValueError(f"{text!r} is not a number in English words (read as {number}, which is written "
                         f"{number_words(number)[0]!r})")
    return number


def load_guided_model(path):
    """(params, config, alphas_cumprod) of a `train diffusion --data mnist` checkpoint; the config from its metrics.json."""
    from scratch import diffusion as Df
    from scratch.runs import load_checkpoint

    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}: train one with `python -m scratch train diffusion --data mnist`")
    arrays = load_checkpoint(path)
    settings = {}
    metrics = os.path.join(os.path.dirname(os.path.abspath(path)), "metrics.json")
    if os.path.exists(metrics):
        with open(metrics) as f:
            settings = json.load(f).get("config", {})
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items() if k in U.UNetConfig._fields}
    config = U.UNetConfig(**fields)
    shapes = U.parameter_shapes(config)
    wrong = [k for k, s in shapes.items() if k not in arrays or tuple(arrays[k].shape) != s]
    if wrong:
        raise ValueError(f"{path} is not a guided U-Net checkpoint of {config}: {len(wrong)} parameters missing or of "
                         f"another shape, e.g. {wrong[0]}")
    betas = Df.beta_schedule(settings.get("schedule", "linear"), config.num_steps)
    return {k: arrays[k] for k in shapes}, config, Df.alpha_bar(betas)


def draw_number(number, params, config, alphas_cumprod, scale, num_steps, seed):
    """Images (k, 28, 28) in [0, 1] of the k decimal digits of `number`, each from its word; x_T from default_rng(seed)."""
    from scratch import guidance as G
    from scratch.train_conv import single_threaded_blas

    digits = np.array([int(c) for c in str(number)])  # (k,) the word ids are the digits themselves
    x_T = np.random.default_rng(seed).standard_normal((len(digits), 1, 28, 28)).astype(params["unet.conv_in.w"].dtype)
    with single_threaded_blas():
        x0 = G.guided_ddim(params, config, x_T, digits, scale, num_steps, alphas_cumprod)  # (k, 1, 28, 28)
    return np.clip((x0[:, 0] + 1.0) * 0.5, 0.0, 1.0)


def save_strip(images, path, zoom=4, gap=2):
    """images (k, H, W) in [0, 1] side by side, `gap` black columns apart, each pixel zoom × zoom, as a grey PNG.

    The PNG is written with the standard library (zlib, struct): one 8-bit grey channel, each row led by
    filter byte 0, chunks of length, type, data and CRC-32, so scratch needs nothing beyond NumPy.
    """
    import struct
    import zlib

    k, h, w = images.shape
    strip = np.zeros((h, k * w + (k - 1) * gap))  # (H, k·W + gaps)
    for i, image in enumerate(images):
        strip[:, i * (w + gap):i * (w + gap) + w] = image
    strip = strip.repeat(zoom, axis=0).repeat(zoom, axis=1)
    pixels = np.round(np.clip(strip, 0.0, 1.0) * 255.0).astype(np.uint8)  # (H·zoom, W'·zoom)
    raw = np.concatenate([np.zeros((len(pixels), 1), np.uint8), pixels], axis=1).tobytes()  # filter 0 per row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 0, 0, 0, 0)  # width, height, 8-bit grey
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)


def run_draw(args):
    """The `draw` subcommand: one line of error (exit 2) for words that are not a number or a missing checkpoint."""
    import sys

    text = " ".join(args.number) if isinstance(args.number, (list, tuple)) else str(args.number)
    try:
        number = parse_number(text)
        if args.steps < 1:
            raise ValueError(f"--steps must be ≥ 1, got {args.steps}")
        params, config, alphas_cumprod = load_guided_model(args.checkpoint)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    images = draw_number(number, params, config, alphas_cumprod, args.guidance, args.steps, args.seed)
    save_strip(images, args.out)
    print(f"{text} → {number}: {len(images)} digit(s), guidance {args.guidance:g}, written to {args.out}")
    return 0


def add_draw_parser(commands):
    """The `draw` subcommand's options, for scratch/__main__.py."""
    draw = commands.add_parser("draw", help="a number in words (or digits) → an image of its digits, by the guided U-Net")
    draw.add_argument("number", nargs="+", help='English number words ("three hundred and twelve") or an integer')
    draw.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale s (0: unconditional, "
                      "1: conditional, default 3)")
    draw.add_argument("--out", default="number.png", help="the PNG to write")
    draw.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="a `train diffusion --data mnist` checkpoint")
    draw.add_argument("--seed", type=int, default=0, help="the same seed draws the same digits")
    draw.add_argument("--steps", type=int, default=20, help="DDIM steps (η = 0)")
    return draw
