"""Writes randaugment_pil.json: Pillow's outputs for the image ops of timm's RandAugment (see README.md).

Run with any Python 3 and Pillow: python3 test/golden/randaugment_pil.py > test/golden/randaugment_pil.json
Each op is called the way timm 0.3.2 calls it (bilinear resampling, fill = the ImageNet mean as 8-bit RGB).
"""
import base64
import json

import PIL
from PIL import Image, ImageEnhance, ImageOps

FILL = (124, 116, 104)


def image(width, height, formula):
    pixels = [formula(x, y, c) % 256 for y in range(height) for x in range(width) for c in range(3)]
    return {'width': width, 'height': height, 'pixels': pixels}


IMAGES = {
    # Full range: ramps, a checkerboard and a quadratic pattern.
    'mixed_9x7': image(9, 7, lambda x, y, c: [x * 29 + y * 3, (x * x + 3 * y * y) * 7, 255 * ((x + y) % 2)][c]),
    # A narrow range (40–199) with few levels, for autocontrast and equalize.
    'narrow_12x10': image(12, 10, lambda x, y, c: 40 + ((x * 13 + y * 7 + c * 50) % 160) // 20 * 20),
}


def affine(img, m):
    return img.transform(img.size, Image.AFFINE, m, resample=Image.BILINEAR, fillcolor=FILL)


def solarize_add(img, add):
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * 3)


OPS = {
    'AutoContrast': lambda img, _: ImageOps.autocontrast(img),
    'Equalize': lambda img, _: ImageOps.equalize(img),
    'Invert': lambda img, _: ImageOps.invert(img),
    'Rotate': lambda img, deg: img.rotate(deg, resample=Image.BILINEAR, fillcolor=FILL),
    'Posterize': lambda img, bits: ImageOps.posterize(img, bits),
    'Solarize': lambda img, t: ImageOps.solarize(img, t),
    'SolarizeAdd': solarize_add,
    'Color': lambda img, f: ImageEnhance.Color(img).enhance(f),
    'Contrast': lambda img, f: ImageEnhance.Contrast(img).enhance(f),
    'Brightness': lambda img, f: ImageEnhance.Brightness(img).enhance(f),
    'Sharpness': lambda img, f: ImageEnhance.Sharpness(img).enhance(f),
    'ShearX': lambda img, f: affine(img, (1, f, 0, 0, 1, 0)),
    'ShearY': lambda img, f: affine(img, (1, 0, 0, f, 1, 0)),
    'TranslateXRel': lambda img, pct: affine(img, (1, 0, pct * img.size[0], 0, 1, 0)),
    'TranslateYRel': lambda img, pct: affine(img, (1, 0, 0, 0, 1, pct * img.size[1])),
}

# Arguments as timm's level functions give them, at magnitudes 9 (the recipe), 5.3 and 10, with both signs.
ARGS = {
    'AutoContrast': [0],
    'Equalize': [0],
    'Invert': [0],
    'Rotate': [27.0, -27.0, 15.9, -30.0],
    'Posterize': [0, 1, 2, 3, 4],
    'Solarize': [26, 120, 256],
    'SolarizeAdd': [99, 58],
    'Color': [0.19, 1.81, 0.523, 1.9],
    'Contrast': [0.19, 1.81, 0.523, 1.9],
    'Brightness': [0.19, 1.81, 0.523, 1.9],
    'Sharpness': [0.19, 1.81, 0.523, 1.9],
    'ShearX': [0.27, -0.27, 0.159],
    'ShearY': [0.27, -0.27, 0.159],
    'TranslateXRel': [0.405, -0.405, 0.2385],
    'TranslateYRel': [0.405, -0.405, 0.2385],
}


def main():
    cases = []
    for name, spec in IMAGES.items():
        img = Image.frombytes('RGB', (spec['width'], spec['height']), bytes(spec['pixels']))
        for op, args in ARGS.items():
            for arg in args:
                out = OPS[op](img, arg)
                cases.append({'image': name, 'op': op, 'arg': arg, 'out_b64': base64.b64encode(out.tobytes()).decode()})
    print(json.dumps({'format_version': 1, 'source': f'Pillow {PIL.__version__}', 'images': IMAGES, 'cases': cases}))


if __name__ == '__main__':
    main()
