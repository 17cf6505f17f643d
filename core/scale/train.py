#!/usr/bin/env python3
"""LocalMIM pretraining in PyTorch, with DistributedDataParallel: the trainer of LocalMIM Studio, for many GPUs.

The same model and parameter names, targets, masks, losses, AdamW groups, schedule, accumulation and seeded data
order as the app (docs/method.md in its repository); checkpoints in the app's safetensors checkpoint format, so
`localmim scale-in` brings the job back as a run. Needs only torch and pillow.

    python3 train.py                       # one process (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT for more)
    torchrun --nproc_per_node 8 train.py   # one node, eight GPUs
    python3 train.py --features IMAGE      # the backbone's feature of an image, from the last checkpoint

The job folder holds config.json (the run config), manifest.jsonl (images under the data root), init.safetensors
(the starting weights, and the optimizer state when a run is continued) and job.json (where the data was).
"""
import argparse
import contextlib
import glob
import hashlib
import json
import math
import os
import re
import signal
import struct
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_SIZES = {
    'vit-tiny': (192, 12, 3),
    'vit-small': (384, 12, 6),
    'vit-base': (768, 12, 12),
    'vit-large': (1024, 24, 16),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PERMUTATION, CROP, MASK = 1, 2, 3  # streams of seed_for, as the app's
U32 = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------------------
# The app's seeded generator (sfc32) and seed mixer: data order, crops and masks are functions of (seed, epoch, index)


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


# --------------------------------------------------------------------------------------------------------------
# Config


class Dims:
    """What the model needs, derived from the run config's `model` section (the app's modelDims)."""

    def __init__(self, c):
        D, depth, heads = MODEL_SIZES[c['size']]
        self.D, self.depth, self.heads = c.get('D', D), c.get('depth', depth), c.get('heads', heads)
        self.p = c['patchSize']
        self.g = c['imgSize'] // self.p
        self.L = self.g * self.g
        self.n_keep = math.floor(self.L * (1 - c['maskRatio']))
        if c['variant'] == 'global':
            self.scales = c.get('scales', [1])
            self.taps = c.get('taps', [self.depth - 1] * len(self.scales))
        else:
            default = sorted({t for t in (1, 3, self.depth - 3, self.depth - 1) if 0 <= t < self.depth})
            self.taps = c.get('taps', default)
            self.scales = c.get('scales', [4, 2, 1, 0.5][: len(self.taps)])
        self.cells = [int(self.p / s) for s in self.scales]
        self.F = [3 * c['nbins'] if c['target'] == 'hog' else 3 * cell * cell for cell in self.cells]


def peak_lr(o, world):
    return o['lr'] if o.get('lr') is not None else o['blr'] * o['batch'] * o['accumIter'] * world / 256


def lr_at(e, o, world):
    """Linear warmup from 0, then half-cosine down to minLr, at fractional epoch e (every iteration)."""
    peak = peak_lr(o, world)
    if e < o['warmupEpochs']:
        return peak * e / o['warmupEpochs']
    progress = min(1.0, (e - o['warmupEpochs']) / max(o['epochs'] - o['warmupEpochs'], 1e-12))
    return o['minLr'] + (peak - o['minLr']) * 0.5 * (1 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------------------------
# Model (timm / MAE names, the official state dict)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # [B, T, W]
        B, T, W = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)  # [B, H, T, hd]
        attn = (q * (W // self.heads) ** -0.5) @ k.transpose(-2, -1)
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, T, W))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, p, D):
        super().__init__()
        self.proj = nn.Conv2d(3, D, p, p)

    def forward(self, x):  # [B, 3, H, W] -> [B, L, D]
        return self.proj(x).flatten(2).transpose(1, 2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of [B, C, H, W]."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def head(scale, d, out):
    """The rescaling head of a scale (×4, ×2, ×1, ×0.5), with the official `pred.k` indices."""
    if scale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(d, d // 2, 2, 2), LayerNorm2d(d // 2, eps=1e-6), nn.GELU(),
            nn.ConvTranspose2d(d // 2, d // 4, 2, 2), nn.Conv2d(d // 4, out, 1))
    if scale == 2:
        return nn.Sequential(nn.ConvTranspose2d(d, d // 2, 2, 2), nn.Conv2d(d // 2, out, 1))
    if scale == 1:
        return nn.Sequential(nn.Conv2d(d, out, 1))
    return nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(d, out, 1))


class Decoder(nn.Module):
    def __init__(self, c, dims, k):
        super().__init__()
        d = c['decoderDim']
        self.embed = nn.Linear(dims.D, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer('pos_embed', sincos_pos_embed(d, dims.g))
        self.blocks = nn.ModuleList([Block(d, c['decoderHeads'], c['mlpRatio']) for _ in range(c['decoderDepth'])])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.pred = head(dims.scales[k], d, dims.F[k])

    def forward(self, latent, ids_restore):  # latent [B, 1+nKeep, D]
        x = self.embed(latent)
        B, L = ids_restore.shape
        mask_tokens = self.mask_token.expand(B, L + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)[:, 1:]
        g = int(math.isqrt(L))
        out = self.pred(x.transpose(1, 2).reshape(B, -1, g, g))  # [B, F, G, G]
        return out.flatten(2).transpose(1, 2)  # [B, G², F], raster order


class Sobel(nn.Module):
    """The frozen Sobel pair [2, 1, 3, 3] of one scale and, with hogBias, its frozen offsets: buffers, not parameters."""

    def __init__(self, bias):
        super().__init__()
        self.register_buffer('weight', torch.zeros(2, 1, 3, 3))
        self.register_buffer('bias', torch.zeros(2) if bias else None)


class HogLayer(nn.Module):
    def __init__(self, bias):
        super().__init__()
        self.conv = Sobel(bias)


def sincos_pos_embed(W, g):
    """Fixed 2-D sin-cos positions [1, 1+g², W] with a zero class row."""
    Q = W // 4
    omega = 1.0 / 10000 ** (torch.arange(Q, dtype=torch.float64) / Q)
    i, j = torch.meshgrid(torch.arange(g, dtype=torch.float64), torch.arange(g, dtype=torch.float64), indexing='ij')
    col, row = j.reshape(-1, 1) * omega, i.reshape(-1, 1) * omega
    table = torch.cat([col.sin(), col.cos(), row.sin(), row.cos()], dim=1)
    return torch.cat([torch.zeros(1, W, dtype=torch.float64), table]).float().unsqueeze(0)


def normalize(x):  # [B, 3, H, W] on the 0–255 scale
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


class LocalMIM(nn.Module):
    """Encoder taps -> one decoder per scale -> summed masked losses (the `local`, `global` and `isolated` variants)."""

    def __init__(self, c):
        super().__init__()
        self.c, self.dims = c, Dims(c)
        d = self.dims
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d.D))
        self.register_buffer('pos_embed', sincos_pos_embed(d.D, d.g))
        self.patch_embed = PatchEmbed(d.p, d.D)
        self.blocks = nn.ModuleList([Block(d.D, d.heads, c['mlpRatio']) for _ in range(d.depth)])
        self.norm = nn.ModuleList([nn.LayerNorm(d.D, eps=1e-6) for _ in d.taps])
        self.decoder = nn.ModuleList([Decoder(c, d, k) for k in range(len(d.scales))])
        if c['target'] == 'hog':
            self.hog_enc = nn.ModuleList([HogLayer(c['hogBias']) for _ in d.scales])

    def encode_all(self, images):
        """The last block's output on every patch [B, 1+L, D] (features)."""
        x = self.patch_embed(normalize(images)) + self.pos_embed[:, 1:]
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward(self, images, noise):
        """images [B, 3, H, W] (0–255), noise [B, L] -> per-scale losses."""
        preds, targets, mask = self.reconstruct(images, noise)
        g, scales = self.dims.g, self.dims.scales
        return [masked_mse(p, t, scale_mask(mask, g, scales[k])) for k, (p, t) in enumerate(zip(preds, targets))]

    def reconstruct(self, images, noise):
        """Per scale the predictions and targets [B, N, F], and the mask [B, L] (1 = removed)."""
        d = self.dims
        normalized = normalize(images)
        ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # ties by index, as the app
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, : d.n_keep]
        mask = torch.ones_like(noise)
        mask[:, : d.n_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # [B, L], 1 = removed

        x = self.patch_embed(normalized) + self.pos_embed[:, 1:]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d.D))
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        latents = []
        for i in range(max(d.taps) + 1):
            x = self.blocks[i](x)
            latents += [self.norm[j](x) for j, t in enumerate(d.taps) if t == i]
            if self.c['variant'] == 'isolated' and i in d.taps:
                x = x.detach()
        preds = [self.decoder[k](latent, ids_restore) for k, latent in enumerate(latents)]
        targets = [self.target(k, images, normalized) for k in range(len(latents))]
        return preds, targets, mask

    @torch.no_grad()
    @torch.autocast('cuda', enabled=False)  # targets in float32 under --amp
    def target(self, k, images, normalized):
        cell = self.dims.cells[k]
        if self.c['target'] == 'pixel':
            return pixel_targets(normalized, cell, self.c['normPix'])
        conv = self.hog_enc[k].conv
        return hog(normalized if conv.bias is not None else images, conv.weight, conv.bias, self.c['nbins'], cell)


def masked_mse(pred, target, M):
    """Σ M·mean_f (P − T)² / Σ M over the whole batch."""
    return (((pred - target) ** 2).mean(-1) * M).sum() / M.sum()


def scale_mask(mask, g, s):
    """The patch mask [B, g²] on a (s·g)² grid: nearest for s ≥ 1, the 2×2 average for s = 0.5."""
    m = mask.view(-1, 1, g, g)
    m = F.avg_pool2d(m, 2) if s < 1 else m.repeat_interleave(int(s), 2).repeat_interleave(int(s), 3)
    return m.flatten(1)


def pixel_targets(x, c, norm_pix):
    """[B, N, c²·3] tokens of the normalised image, features (dy, dx, channel); standardised per token."""
    B, _, H, W = x.shape
    t = x.reshape(B, 3, H // c, c, W // c, c).permute(0, 2, 4, 3, 5, 1).reshape(B, (H // c) * (W // c), c * c * 3)
    if not norm_pix:
        return t
    return (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()


def hog(x, weight, bias, nbins, cell):
    """HOG of [B, 3, H, W]: Sobel per channel (reflect padding), magnitude into unsigned orientation bins, averaged
    over cell × cell blocks, L2 per cell and channel: [B, N, 3·nbins], channel-then-bin."""
    B, C, H, W = x.shape
    r = F.conv2d(F.pad(x.reshape(B * C, 1, H, W), (1, 1, 1, 1), mode='reflect'), weight, bias)
    c0, c1 = r[:, 0], r[:, 1]
    magnitude = (c0 ** 2 + c1 ** 2).sqrt()
    # Bin k holds orientations in [kπ/nbins, (k+1)π/nbins) of atan2(c0, c1) mod π, decided as the app does:
    # fold into the upper half-plane, then the sign of a cross product with each edge.
    flip = (c0 < 0) | ((c0 == 0) & (c1 < 0))
    y, xx = torch.where(flip, -c0, c0), torch.where(flip, -c1, c1)
    edges = [(k + 1) * math.pi / nbins for k in range(nbins - 1)]
    snap = lambda v: 0.0 if abs(v) < 1e-12 else v  # noqa: E731
    past = [magnitude] + [magnitude * (y * snap(math.cos(e)) - xx * snap(math.sin(e)) >= 0) for e in edges] + [0]
    hist = torch.stack([past[k] - past[k + 1] for k in range(nbins)], dim=1)  # [B·3, nbins, H, W]
    hist = F.avg_pool2d(hist, cell)
    G = hist.shape[-1]
    hist = hist.reshape(B, C, nbins, G * G).permute(0, 3, 1, 2)  # [B, N, 3, nbins]
    hist = hist / hist.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return hist.reshape(B, G * G, C * nbins)


# --------------------------------------------------------------------------------------------------------------
# Data: seeded order and RandomResizedCrop + flip, as functions of (seed, epoch, index)


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
    """Micro-batch i of epoch e: images order[i·batch …] of the epoch's seeded permutation, each cropped with the
    generator of (seed, e, its position in the epoch)."""

    def __init__(self, root, items, img_size, batch, seed):
        self.root, self.items, self.size, self.batch, self.seed = root, items, img_size, batch, seed
        self.keys, self.orders = [], {}

    def order(self, epoch):
        if epoch not in self.orders:
            rng = Rng(seed_for(self.seed, PERMUTATION, epoch))
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
            left, top, w, h, flip = random_crop(Rng(seed_for(self.seed, CROP, epoch, k)), im.width, im.height)
            im = im.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BICUBIC)
            images.append(to_tensor(im.transpose(Image.FLIP_LEFT_RIGHT) if flip else im))
        return torch.stack(images)


class Masked(torch.utils.data.Dataset):
    """(images, noise) of micro-batch u = j·micro + a of an epoch: the mask's noise is a function of (seed, step, a),
    as the app's, drawn here so that loader workers make it."""

    def __init__(self, data, L, micro, steps_per_epoch):
        self.data, self.L, self.micro, self.steps_per_epoch = data, L, micro, steps_per_epoch

    def __len__(self):
        return len(self.data)

    def __getitem__(self, n):
        images = self.data[n]
        epoch, u = self.data.keys[n]
        step = epoch * self.steps_per_epoch + u // self.micro
        noise = Rng(seed_for(self.data.seed, MASK, step, u % self.micro)).fill(images.shape[0] * self.L)
        return images, noise.view(-1, self.L)


class HandedOver(torch.utils.data.Dataset):
    """Micro-batches decoded by the app (`batch.<epoch>.<i>` [B, H, W, 3] in a safetensors file): tests hand them
    over so that both engines see the same pixels (PIL and sharp resample differently)."""

    def __init__(self, path, seed):
        self.tensors, self.seed, self.keys = read_safetensors(path)[0], seed, []

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, n):
        epoch, i = self.keys[n]
        return self.tensors[f'batch.{epoch}.{i}'].permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------------------
# Checkpoints: the app's safetensors checkpoint format


def write_safetensors(path, tensors, metadata):
    """F32 tensors, header padded to 8 bytes, written atomically: temp file, fsync, rename, fsync of the folder."""
    header, offset, blobs = {'__metadata__': metadata}, 0, []
    for name, t in tensors.items():
        blob = t.detach().to('cpu', torch.float32).contiguous().numpy().tobytes()
        header[name] = {'dtype': 'F32', 'shape': list(t.shape), 'data_offsets': [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(',', ':')).encode()
    text += b' ' * ((8 - (8 + len(text)) % 8) % 8)
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'wb') as f:
        f.write(struct.pack('<Q', len(text)) + text)
        for blob in blobs:
            f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def read_safetensors(path):
    with open(path, 'rb') as f:
        data = f.read()
    (n,) = struct.unpack('<Q', data[:8])
    header = json.loads(data[8:8 + n])
    metadata = header.pop('__metadata__', {})
    body = bytearray(data[8 + n:])
    tensors = {}
    for name, e in header.items():
        if e['dtype'] != 'F32':
            sys.exit(f'{path}: {name} has dtype {e["dtype"]}; only F32 is supported')
        start, end = e['data_offsets']
        t = torch.frombuffer(body, dtype=torch.float32, offset=start, count=(end - start) // 4) if end > start else torch.zeros(0)
        tensors[name] = t.reshape(e['shape']).clone()
    return tensors, metadata


def decays(name, p):
    """timm's add_weight_decay: no decay on 1-D tensors and biases."""
    return p.ndim > 1 and not name.endswith('.bias')


def make_optimizer(model, o):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {'params': [p for n, p in named if decays(n, p)], 'weight_decay': o['weightDecay']},
        {'params': [p for n, p in named if not decays(n, p)], 'weight_decay': 0.0},
    ]
    return torch.optim.AdamW(groups, lr=0.0, betas=(o['beta1'], o['beta2']), eps=o['eps'])


def save_checkpoint(path, model, opt, state):
    tensors = dict(model.state_dict())
    steps = 0
    for slot in ('exp_avg', 'exp_avg_sq'):
        for name, p in model.named_parameters():
            s = opt.state.get(p, {})
            tensors[f'optimizer.{slot}.{name}'] = s.get(slot, torch.zeros_like(p))
            steps = max(steps, int(s.get('step', 0)))
    meta = {'format': 'localmim-checkpoint', 'version': '1', 'optimizer_step': str(steps), 'state': json.dumps(state)}
    write_safetensors(path, tensors, meta)


def load_checkpoint(path, model, opt):
    """Weights and, when the file has taken steps, the optimizer's moments; returns its training state."""
    tensors, meta = read_safetensors(path)
    if meta.get('format') != 'localmim-checkpoint':
        sys.exit(f'{path}: not a LocalMIM checkpoint')
    weights = {n: t for n, t in tensors.items() if not n.startswith('optimizer.')}
    missing = set(model.state_dict()) - set(weights)
    unknown = set(weights) - set(model.state_dict())
    if missing or unknown:
        sys.exit(f'{path}: does not fit config.json (missing {sorted(missing)[:3]}, unknown {sorted(unknown)[:3]})')
    model.load_state_dict(weights)
    steps = int(meta.get('optimizer_step', '0'))
    if opt is not None and steps > 0:
        for name, p in model.named_parameters():
            opt.state[p] = {
                'step': torch.tensor(float(steps)),
                'exp_avg': tensors[f'optimizer.exp_avg.{name}'].to(p.device),
                'exp_avg_sq': tensors[f'optimizer.exp_avg_sq.{name}'].to(p.device),
            }
    return json.loads(meta['state'])


def checkpoints(out):
    found = [(int(re.search(r'(\d+)\.safetensors$', f).group(1)), f) for f in glob.glob(os.path.join(out, 'ckpt-*.safetensors'))]
    return sorted(found)


# --------------------------------------------------------------------------------------------------------------
# Training


def amp_dtype(device):
    """bfloat16 where the device has it (no loss scaling needed), else float16."""
    return torch.bfloat16 if device.type == 'cuda' and torch.cuda.is_bf16_supported() else torch.float16


def optimizer_step(net, opt, scaler, micro, accum, amp, device, no_sync=None):
    """One AdamW step over `accum` micro-batches (images, noise), the loss divided by `accum` as the official loop;
    `no_sync` (DDP) skips the gradient all-reduce of all but the last. Returns the per-scale losses [S], unread."""
    total = 0
    for a, (images, noise) in enumerate(micro):
        with contextlib.nullcontext() if no_sync is None or a == accum - 1 else no_sync():
            with torch.autocast(device.type, dtype=amp_dtype(device)) if amp else contextlib.nullcontext():
                losses = torch.stack(net(images.to(device, non_blocking=True), noise.to(device, non_blocking=True))).float()
            scaler.scale(losses.sum() / accum).backward()
        total = total + losses.detach() / accum
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return total



def setup():
    """(rank, world, device): torch.distributed from env:// when WORLD_SIZE is set (torchrun sets it too)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    if torch.cuda.is_available():
        local = int(os.environ.get('LOCAL_RANK', rank % torch.cuda.device_count()))
        torch.cuda.set_device(local)
        device = torch.device('cuda', local)
    else:
        device = torch.device('cpu')
    if 'WORLD_SIZE' in os.environ:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', init_method='env://', rank=rank, world_size=world)
    return rank, world, device


def train(args):
    config = json.load(open(os.path.join(args.job, 'config.json')))
    job = json.load(open(os.path.join(args.job, 'job.json')))
    c, o, seed = config['model'], config['optim'], config['seed']
    rank, world, device = setup()
    if args.amp and device.type != 'cuda':
        sys.exit('--amp needs a GPU')
    torch.manual_seed(seed)
    model = LocalMIM(c).to(device)
    opt = make_optimizer(model, o)
    out = os.path.join(args.job, 'checkpoints')
    os.makedirs(out, exist_ok=True)
    found = checkpoints(out)
    start = found[-1][1] if found else os.path.join(args.job, 'init.safetensors')
    step = load_checkpoint(start, model, opt)['step']
    if rank == 0:
        print(f'starting at step {step} from {os.path.relpath(start, args.job)} on {world} process(es), {device}', flush=True)
    ddp = world > 1 and 'WORLD_SIZE' in os.environ
    last_tap = max(model.dims.taps)
    net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=last_tap < model.dims.depth - 1) if ddp else model

    items = [json.loads(line) for line in open(os.path.join(args.job, 'manifest.jsonl'))]
    data = MicroBatches(args.data or job['dataRoot'], items, c['imgSize'], o['batch'], seed)
    batches_per_epoch = len(items) // o['batch']
    micro = o['accumIter'] * world  # micro-batches per optimizer step, over all processes
    steps_per_epoch = batches_per_epoch // micro
    if steps_per_epoch < 1:
        sys.exit(f'{len(items)} images: fewer than one step of {o["batch"] * micro} ({world} processes)')
    total = o['epochs'] * steps_per_epoch
    stop = min(total, args.max_steps) if args.max_steps else total
    images_per_step = o['batch'] * micro
    L = model.dims.L
    scaler = torch.cuda.amp.GradScaler(enabled=args.amp and amp_dtype(device) == torch.float16)
    metrics = os.path.join(args.job, 'metrics.jsonl')
    if rank == 0 and os.path.exists(metrics):  # a resumed job recomputes the steps after its checkpoint
        kept = [line for line in open(metrics) if json.loads(line)['step'] <= step]
        open(metrics, 'w').writelines(kept)
    losses_since, last_save = [], time.time()

    while step < stop:
        epoch, j0 = divmod(step, steps_per_epoch)
        # This process's micro-batches of the epoch's remaining steps: u = a·world + rank within a step.
        data.keys = [(epoch, j * micro + a * world + rank) for j in range(j0, min(steps_per_epoch, j0 + stop - step))
                     for a in range(o['accumIter'])]
        loader = torch.utils.data.DataLoader(Masked(data, L, micro, steps_per_epoch), batch_size=None, num_workers=args.workers,
                                             pin_memory=device.type == 'cuda')
        batches = iter(loader)
        for j in range(j0, j0 + len(data.keys) // o['accumIter']):
            since = time.time()
            lr = lr_at(epoch + j / steps_per_epoch, o, world)
            for group in opt.param_groups:
                group['lr'] = lr
            micro_batches = (next(batches) for _ in range(o['accumIter']))
            scale_losses = optimizer_step(net, opt, scaler, micro_batches, o['accumIter'], args.amp, device, net.no_sync if ddp else None)
            if ddp:
                dist.all_reduce(scale_losses)
                scale_losses /= world
            step += 1
            values = scale_losses.tolist()
            if not all(math.isfinite(v) for v in values):
                sys.exit(f'loss is not finite at optimizer step {step} (per-scale losses {values}); the last checkpoint is intact')
            loss = sum(values)
            losses_since.append(loss)
            event = {'type': 'step', 'step': step, 'epoch': step / steps_per_epoch, 'samples': step * images_per_step,
                     'loss': loss, 'losses': values, 'lr': lr, 'imagesPerS': images_per_step / (time.time() - since)}
            if rank == 0:
                with open(metrics, 'a') as f:
                    f.write(json.dumps(event) + '\n')
                if step % args.print_every == 0 or step == stop:
                    print(f'step {step}/{total} epoch {event["epoch"]:.2f} loss {loss:.4f} lr {lr:.3g} '
                          f'{event["imagesPerS"]:.1f} img/s', flush=True)
            due = (step % steps_per_epoch == 0 or step % args.every_steps == 0 or step == stop
                   or time.time() - last_save > args.every_minutes * 60)
            if due and rank == 0:
                state = {'step': step, 'epoch': step / steps_per_epoch, 'loss': sum(losses_since) / len(losses_since),
                         'config': config}
                save_checkpoint(os.path.join(out, f'ckpt-{step:07d}.safetensors'), model, opt, state)
                for _, old in checkpoints(out)[: -args.keep]:
                    os.remove(old)
            if due:
                losses_since, last_save = [], time.time()
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------------------
# The app's torch engine: one process, a run's job described by the app, its events as JSON lines on stdout


def emit(event):
    sys.stdout.write(json.dumps(event) + '\n')
    sys.stdout.flush()


def engine_device(name):
    """(device, its description): the one asked for, else the first CUDA device, else MPS, else the CPU."""
    mps = getattr(torch.backends, 'mps', None)
    name = name or ('cuda:0' if torch.cuda.is_available() else 'mps' if mps is not None and mps.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        return device, f'{name} {torch.cuda.get_device_name(device)}'
    return device, name


def stop_signal():
    """Set by SIGTERM or SIGINT (pause), or when the app's end of stdin closes (the job process is gone)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    return stop


@torch.no_grad()
def write_preview(model, probes, path):
    """The predictions and targets of the fixed probe images under their fixed mask, for the app to draw."""
    images, noise = probes
    preds, targets, mask = model.reconstruct(images, noise)
    tensors = {'mask': mask, **{f'pred.{k}': p for k, p in enumerate(preds)}, **{f'target.{k}': t for k, t in enumerate(targets)}}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_safetensors(path, tensors, {})


def engine(spec):
    """Trains the run `spec` describes (written by core/runs/torch.ts) as the app's training loop does: the same
    steps, events, checkpoints (on its cadence and at each epoch end) and pause; resumes from any checkpoint."""
    config, cadence = spec['config'], spec['cadence']
    c, o, seed = config['model'], config['optim'], config['seed']
    stop = stop_signal()
    device, described = engine_device(spec.get('device'))
    model = LocalMIM(c).to(device)
    opt = make_optimizer(model, o)
    step = load_checkpoint(spec['start'], model, opt)['step']
    net = torch.compile(model) if spec.get('compile') and hasattr(torch, 'compile') else model
    amp = bool(spec.get('amp')) and device.type == 'cuda'
    scaler = torch.cuda.amp.GradScaler(enabled=amp and amp_dtype(device) == torch.float16)

    handed = os.environ.get('LOCALMIM_TORCH_BATCHES')
    data = HandedOver(handed, seed) if handed else MicroBatches('', [{'path': p} for p in spec['items']], c['imgSize'], o['batch'], seed)
    accum = o['accumIter']
    steps_per_epoch = len(spec['items']) // o['batch'] // accum
    total = o['epochs'] * steps_per_epoch
    images = o['batch'] * accum
    probes = None
    if spec.get('previewEvery'):
        t = read_safetensors(spec['probes'])[0]
        probes = (t['images'].permute(0, 3, 1, 2).to(device), t['noise'].to(device))
    emit({'type': 'start', 'step': step, 'totalSteps': total, 'stepsPerEpoch': steps_per_epoch, 'device': described})

    pending, losses_since, last_save, since = [], [], time.time(), time.time()

    def flush():
        """Reports the pending steps: one readback for all of them."""
        nonlocal pending
        if not pending:
            return
        values = torch.stack([v for _, _, v in pending]).tolist()
        seconds = (time.time() - since) / len(pending)
        for (at, lr, _), losses in zip(pending, values):
            if not all(math.isfinite(v) for v in losses):
                raise RuntimeError(f'loss is not finite at optimizer step {at} (per-scale losses {losses}); '
                                   'stopped without saving, the last checkpoint is intact')
            losses_since.append(sum(losses))
            emit({'type': 'step', 'step': at, 'epoch': at / steps_per_epoch, 'samples': at * images, 'loss': sum(losses),
                  'losses': losses, 'lr': lr, 'imagesPerS': images / seconds})
        pending = []

    def checkpoint():
        nonlocal losses_since, last_save
        flush()
        loss = sum(losses_since) / len(losses_since) if losses_since else None
        state = {'step': step, 'epoch': step / steps_per_epoch, 'loss': loss, 'config': config}
        path = os.path.join(spec['runDir'], f'ckpt-{step:07d}.safetensors')
        save_checkpoint(path, model, opt, state)
        with open(path, 'rb') as f:
            blob = f.read()
        emit({'type': 'checkpoint', 'path': path, 'step': step, 'epoch': state['epoch'], 'loss': loss, 'size': len(blob),
              'hash': hashlib.sha256(blob).hexdigest()})
        losses_since, last_save = [], time.time()

    while step < total:
        epoch, j0 = divmod(step, steps_per_epoch)
        data.keys = [(epoch, j * accum + a) for j in range(j0, steps_per_epoch) for a in range(accum)]
        loader = torch.utils.data.DataLoader(Masked(data, model.dims.L, accum, steps_per_epoch), batch_size=None,
                                             num_workers=spec.get('workers', 0), pin_memory=device.type == 'cuda')
        batches = iter(loader)
        for j in range(j0, steps_per_epoch):
            lr = lr_at(epoch + j / steps_per_epoch, o, 1)
            for group in opt.param_groups:
                group['lr'] = lr
            if not pending:
                since = time.time()
            values = optimizer_step(net, opt, scaler, (next(batches) for _ in range(accum)), accum, amp, device)
            step += 1
            pending.append((step, lr, values))
            if len(pending) >= spec.get('readEvery', 1):
                flush()
            if probes is not None and (step == 1 or step % spec['previewEvery'] == 0):
                write_preview(model, probes, os.path.join(spec['runDir'], 'previews', str(step), 'arrays.safetensors'))
                flush()
                emit({'type': 'preview', 'step': step})
            stopping = stop.is_set() or step == spec.get('stopAtStep')
            due = (step % steps_per_epoch == 0 or (cadence.get('everySteps') and step % cadence['everySteps'] == 0)
                   or (cadence.get('everyMinutes') and time.time() - last_save > cadence['everyMinutes'] * 60))
            if step == total or stopping or due:
                checkpoint()
            if stopping and step < total:
                return emit({'type': 'end', 'status': 'paused', 'step': step})
    emit({'type': 'end', 'status': 'finished', 'step': step})


# --------------------------------------------------------------------------------------------------------------
# Features


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


@torch.no_grad()
def features(args):
    """Mean of the patch tokens after the last block (no norm): the backbone's feature, as `localmim features`."""
    config = json.load(open(os.path.join(args.job, 'config.json')))
    model = LocalMIM(config['model'])
    found = checkpoints(os.path.join(args.job, 'checkpoints'))
    load_checkpoint(args.weights or found[-1][1], model, None)
    x = model.encode_all(eval_image(args.features, config['model']['imgSize']).unsqueeze(0))
    f = x[0, 1:].mean(0)
    print(json.dumps({'shape': list(f.shape), 'values': f.tolist()}))


def run_engine(path):
    """The engine's errors as one line the app shows: CUDA out of memory, a lost device, a bad checkpoint."""
    try:
        engine(json.load(open(path)))
    except (RuntimeError, OSError, ValueError) as err:
        sys.stderr.write(str(err).strip().split('\n')[0] + '\n')
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description='LocalMIM pretraining with PyTorch DDP (a LocalMIM Studio job)')
    ap.add_argument('--job', default=HERE, help='the job folder (default: the one holding this file)')
    ap.add_argument('--data', help="the images' root (default: the folder the job was written from)")
    ap.add_argument('--max-steps', type=int, help='stop after this many optimizer steps in total, with a checkpoint')
    ap.add_argument('--every-steps', type=int, default=1000, help='checkpoint every N steps (and at each epoch end)')
    ap.add_argument('--every-minutes', type=float, default=30, help='… or when this many minutes have passed')
    ap.add_argument('--keep', type=int, default=3, help='checkpoints kept in checkpoints/')
    ap.add_argument('--workers', type=int, default=4, help='data-loading processes per training process')
    ap.add_argument('--amp', action='store_true', help='automatic mixed precision (GPU only; off by default)')
    ap.add_argument('--print-every', type=int, default=20, help='print a line every N steps')
    ap.add_argument('--features', metavar='IMAGE', help="print the backbone's feature of IMAGE as JSON, and exit")
    ap.add_argument('--weights', metavar='CKPT', help='with --features: this checkpoint (default: the last one)')
    ap.add_argument('--engine', metavar='SPEC', help="train one run of the app, described by SPEC (JSON), reporting on stdout")
    args = ap.parse_args()
    if args.engine:
        run_engine(args.engine)
    elif args.features:
        features(args)
    else:
        train(args)


if __name__ == '__main__':
    main()
