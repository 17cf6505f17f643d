"""Fine-tuning's augmentation after crop and flip, as the app's (core/data/augment.ts, randaugment.ts): timm's
RandAugment on PIL images, then random erasing, every choice drawn from the sample's generator in the app's order. The
RandAugment config (magnitude, layers, magnitudeStd, ops) comes parsed by the app."""
import math

import torch
from PIL import Image, ImageEnhance, ImageOps

from .data import to_tensor
from .model import IMAGENET_MEAN, IMAGENET_STD

MAX_LEVEL = 10
FILL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)  # timm's img_mean: uncovered pixels of geometric ops


def negate(v, rng):
    return -v if rng.next() > 0.5 else v


def enhance_level(m, rng):
    return m / MAX_LEVEL * 1.8 + 0.1


def enhance_increasing(m, rng):
    return 1 + negate(m / MAX_LEVEL * 0.9, rng)


def posterize_bits(m):
    return math.trunc(m / MAX_LEVEL * 4)


def solarize_threshold(m):
    return math.trunc(m / MAX_LEVEL * 256)


def affine(img, matrix):
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=FILL)


def posterize(img, bits):
    return img if bits >= 8 else ImageOps.posterize(img, bits)


def solarize_add(img, add):
    return img.point([min(255, v + add) if v < 128 else v for v in range(256)] * 3)


def enhance(kind):
    return lambda img, f: kind(img).enhance(f)


# Each op: timm's level -> argument (which may draw a sign), and the PIL operation.
OPS = {
    'AutoContrast': (None, lambda img, _: ImageOps.autocontrast(img)),
    'Equalize': (None, lambda img, _: ImageOps.equalize(img)),
    'Invert': (None, lambda img, _: ImageOps.invert(img)),
    'Rotate': (lambda m, rng: negate(m / MAX_LEVEL * 30, rng),
               lambda img, deg: img.rotate(deg, resample=Image.BILINEAR, fillcolor=FILL)),
    'Posterize': (lambda m, rng: posterize_bits(m), posterize),
    'PosterizeIncreasing': (lambda m, rng: 4 - posterize_bits(m), posterize),
    'Solarize': (lambda m, rng: solarize_threshold(m), ImageOps.solarize),
    'SolarizeIncreasing': (lambda m, rng: 256 - solarize_threshold(m), ImageOps.solarize),
    'SolarizeAdd': (lambda m, rng: math.trunc(m / MAX_LEVEL * 110), solarize_add),
    'Color': (enhance_level, enhance(ImageEnhance.Color)),
    'ColorIncreasing': (enhance_increasing, enhance(ImageEnhance.Color)),
    'Contrast': (enhance_level, enhance(ImageEnhance.Contrast)),
    'ContrastIncreasing': (enhance_increasing, enhance(ImageEnhance.Contrast)),
    'Brightness': (enhance_level, enhance(ImageEnhance.Brightness)),
    'BrightnessIncreasing': (enhance_increasing, enhance(ImageEnhance.Brightness)),
    'Sharpness': (enhance_level, enhance(ImageEnhance.Sharpness)),
    'SharpnessIncreasing': (enhance_increasing, enhance(ImageEnhance.Sharpness)),
    'ShearX': (lambda m, rng: negate(m / MAX_LEVEL * 0.3, rng), lambda img, f: affine(img, (1, f, 0, 0, 1, 0))),
    'ShearY': (lambda m, rng: negate(m / MAX_LEVEL * 0.3, rng), lambda img, f: affine(img, (1, 0, 0, f, 1, 0))),
    'TranslateXRel': (lambda m, rng: negate(m / MAX_LEVEL * 0.45, rng),
                      lambda img, pct: affine(img, (1, 0, pct * img.width, 0, 1, 0))),
    'TranslateYRel': (lambda m, rng: negate(m / MAX_LEVEL * 0.45, rng),
                      lambda img, pct: affine(img, (1, 0, 0, 0, 1, pct * img.height))),
}


def rand_augment(img, c, rng):
    """`layers` ops drawn with replacement, each applied with p = 0.5 at a magnitude from N(m, mstd²) clipped to
    [0, 10]."""
    picks = [c['ops'][math.floor(rng.next() * len(c['ops']))] for _ in range(c['layers'])]
    for name in picks:
        if rng.next() > 0.5:
            continue
        drawn = c['magnitude'] + c['magnitudeStd'] * rng.normal() if c['magnitudeStd'] > 0 else c['magnitude']
        level, apply = OPS[name]
        img = apply(img, level(min(MAX_LEVEL, max(0, drawn)), rng) if level else 0)
    return img


def random_erase(x, p, rng):
    """timm's RandomErasing (pixel mode, one box) on [3, H, W] at the 0–255 scale: N(0, 1) noise in the normalised
    space, written back on the 0–255 scale. Whether and where are the app's draws; the noise, the sample's last use of
    its generator, comes from torch's generator seeded by one of them (the app's per-value draws would cost a loader
    worker 0.3 s an image at 224 px)."""
    if rng.next() >= p:
        return x
    _, H, W = x.shape
    for _ in range(10):
        area = rng.uniform(0.02, 1 / 3) * W * H
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        h, w = math.floor(math.sqrt(area * aspect) + 0.5), math.floor(math.sqrt(area / aspect) + 0.5)
        if w >= W or h >= H:
            continue
        top, left = math.floor(rng.next() * (H - h + 1)), math.floor(rng.next() * (W - w + 1))
        noise = torch.randn(3, h, w, generator=torch.Generator().manual_seed(math.floor(rng.next() * 2 ** 32)))
        mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
        x = x.clone()
        x[:, top:top + h, left:left + w] = 255 * (std * noise + mean)
        return x
    return x


class FinetuneAugment:
    """After crop and flip: RandAugment (when the recipe has it), the tensor, random erasing (when `reprob` > 0). A
    class, not a closure, so that loader workers started by spawn can take it."""

    def __init__(self, f):
        self.ra, self.reprob = f['randAugment'], f['reprob']

    def __call__(self, im, rng):
        x = to_tensor(rand_augment(im, self.ra, rng) if self.ra else im)
        return random_erase(x, self.reprob, rng) if self.reprob > 0 else x
