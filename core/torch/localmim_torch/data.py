"""The app's data, as functions of (seed, epoch, index): its seeded generator (sfc32) and seed mixer, the epoch's
order, RandomResizedCrop + flip, the mask's noise; and the images the app hands over instead (tests)."""
import math
import os

import torch
from PIL import Image, ImageOps

from .checkpoint import read_safetensors

# The streams of seed_for, by name as the app's (core/random.ts STREAMS; test/random.test.ts compares them).
STREAMS = {'permutation': 1, 'crop': 2, 'mask': 3, 'preview': 4, 'split': 5, 'mix': 6, 'drop': 7, 'holdout': 29}
U32 = 0xFFFFFFFF
KERNELS = {'cubic': Image.BICUBIC, 'linear': Image.BILINEAR}  # the app's crop kernels (core/recipe.ts cropKernel)


class Rng:
    def __init__(self, seed):
        self.s = [0x9E3779B9, 0x243F6A88, 0xB7E15162, seed & U32]
        for _ in range(12):
            self.next()

    def next(self):
        """Uniform in [0, 1)."""
        a, b, c, d = self.s
        t = (((a + b) & U32) + d) & U32
        d = (d + 1) & U32
        a = b ^ (b >> 9)
        b = (c + (c << 3)) & U32
        c = ((c << 21) | (c >> 11)) & U32
        c = (c + t) & U32
        self.s = [a, b, c, d]
        return t / 4294967296

    def uniform(self, lo, hi):
        return lo + (hi - lo) * self.next()

    def normal(self):
        """Standard normal (Box–Muller), as the app's."""
        u = 1 - self.next()
        return math.sqrt(-2 * math.log(u)) * math.cos(2 * math.pi * self.next())

    def fill(self, n):
        return torch.tensor([self.next() for _ in range(n)], dtype=torch.float32)


def imul(a, b):
    return (a * b) & U32


def seed_for(*parts):
    h = 0x811C9DC5
    for p in parts:
        h = imul(h ^ (p & U32), 0x01000193)
        h = imul(h ^ (h >> 15), 0x85EBCA6B)
        h ^= h >> 13
    return h & U32



def read_rgb(path):
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert('RGB')


def random_crop(rng, W, H, scale=(0.2, 1.0)):
    """torchvision's RandomResizedCrop.get_params with the app's generator, then a flip with p = 0.5."""
    ratio = (3 / 4, 4 / 3)
    area = W * H
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= W and 0 < h <= H:
            top = math.floor(rng.next() * (H - h + 1))
            left = math.floor(rng.next() * (W - w + 1))
            return left, top, w, h, rng.next() < 0.5
    r = W / H
    w, h = (W, round(W / ratio[0])) if r < ratio[0] else (round(H * ratio[1]), H) if r > ratio[1] else (W, H)
    return (W - w) // 2, (H - h) // 2, w, h, rng.next() < 0.5


def to_tensor(im):
    """PIL RGB -> [3, H, W] float32 on the 0–255 scale."""
    data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return data.view(im.height, im.width, 3).permute(2, 0, 1).float()


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch i of epoch e: images order[i·batch …] of the epoch's seeded permutation, each cropped (area from
    `min_scale`, resized with `kernel`), flipped and, to fine-tune, augmented with the generator of (seed, e, its
    position in the epoch)."""

    def __init__(self, root, items, img_size, batch, seed, min_scale=0.2, kernel='cubic', augment=None):
        self.root, self.items, self.size, self.batch, self.seed = root, items, img_size, batch, seed
        self.scale, self.kernel, self.augment = (min_scale, 1.0), KERNELS[kernel], augment
        self.keys, self.orders = [], {}

    def order(self, epoch):
        if epoch not in self.orders:
            rng = Rng(seed_for(self.seed, STREAMS['permutation'], epoch))
            order = list(range(len(self.items)))
            for i in range(len(order) - 1, 0, -1):
                j = math.floor(rng.next() * (i + 1))
                order[i], order[j] = order[j], order[i]
            self.orders = {epoch: order}
        return self.orders[epoch]

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, n):
        epoch, i = self.keys[n]
        order = self.order(epoch)
        images = []
        for j in range(self.batch):
            k = i * self.batch + j
            im = read_rgb(os.path.join(self.root, self.items[order[k]]['path']))
            rng = Rng(seed_for(self.seed, STREAMS['crop'], epoch, k))  # the crop, the flip, then the augmentation
            left, top, w, h, flip = random_crop(rng, im.width, im.height, self.scale)
            im = im.crop((left, top, left + w, top + h)).resize((self.size, self.size), self.kernel)
            im = im.transpose(Image.FLIP_LEFT_RIGHT) if flip else im
            images.append(self.augment(im, rng) if self.augment else to_tensor(im))
        return torch.stack(images)

    def labels(self, n):
        epoch, i = self.keys[n]
        order = self.order(epoch)
        return torch.tensor([self.items[order[i * self.batch + j]]['label'] for j in range(self.batch)])


class Masked(torch.utils.data.Dataset):
    """(images, noise) of micro-batch u = j·micro + a of an epoch: the mask's noise is a function of (seed, step, a),
    as the app's, drawn here so that loader workers make it: [B, L] (a mask per image), or with `shared` [1, L] (one
    mask for the batch, Swin's)."""

    def __init__(self, data, L, micro, steps_per_epoch, shared=False):
        self.data, self.L, self.micro, self.steps_per_epoch, self.shared = data, L, micro, steps_per_epoch, shared

    def __len__(self):
        return len(self.data)

    def __getitem__(self, n):
        images = self.data[n]
        epoch, u = self.data.keys[n]
        step = epoch * self.steps_per_epoch + u // self.micro
        noise = Rng(seed_for(self.data.seed, STREAMS['mask'], step, u % self.micro)).fill((1 if self.shared else images.shape[0]) * self.L)
        return images, noise.view(-1, self.L)


class HandedOver(torch.utils.data.Dataset):
    """Micro-batches decoded by the app (`batch.<epoch>.<i>` [B, H, W, 3] in a safetensors file, and to fine-tune
    `labels.<epoch>.<i>` [B]): tests hand them over so that both engines see the same pixels (PIL and sharp resample
    differently)."""

    def __init__(self, path, seed):
        self.tensors, self.seed, self.keys = read_safetensors(path)[0], seed, []

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, n):
        epoch, i = self.keys[n]
        return self.tensors[f'batch.{epoch}.{i}'].permute(0, 3, 1, 2)

    def labels(self, n):
        return self.tensors['labels.{}.{}'.format(*self.keys[n])].long()


class Labeled(torch.utils.data.Dataset):
    """(images, labels) of a micro-batch: fine-tuning's."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, n):
        return self.data[n], self.data.labels(n)



def eval_image(path, size):
    """timm's evaluation transform: shorter side to size/0.875 (bicubic), centre crop; none at the input size."""
    im = read_rgb(path)
    if im.size != (size, size):
        side = round(size / 0.875)
        scale = side / min(im.size)
        im = im.resize((max(side, round(im.width * scale)), max(side, round(im.height * scale))), Image.BICUBIC)
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return to_tensor(im)

