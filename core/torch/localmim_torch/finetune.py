"""ViT and Swin fine-tuning in PyTorch, as the app's (core/train/finetune.ts): the pretrained backbone and its head
(ViT: a trainable `pos_embed`, mean-pooled patch tokens, `fc_norm`, `head`; Swin: the last stage pooled, `norm`,
`head`); stochastic depth, label smoothing, Mixup or CutMix with the
batch's mirror image drawn from the app's generators, and AdamW with the per-parameter learning-rate scale (layer
decay) and weight-decay choice the app resolves and hands over (`groups` of the job spec)."""
import contextlib
import math

import torch
import torch.nn as nn

from .data import STREAMS, Rng, seed_for
from .loop import amp_dtype
from .model import Encoder
from .swin import SwinBackbone


def classifier(m, classes):
    """The fine-tuning model of the resolved model's family."""
    return (SwinClassifier if m['family'] == 'swin' else ViTClassifier)(m, classes)


class ViTClassifier(Encoder):
    """The backbone, `fc_norm` and `head`."""

    def __init__(self, m, classes):
        super().__init__(m)
        self.fc_norm = nn.LayerNorm(m['D'], eps=1e-6)
        self.head = nn.Linear(m['D'], classes)

    def forward(self, images, drop_rng=None, rate=0.0):
        """Class scores; stochastic depth rising linearly over the blocks to `rate`, drawn from `drop_rng`."""
        depth = len(self.blocks)
        keeps = (lambda i, B, device: keep_masks(drop_rng, rate * i / max(depth - 1, 1), B, device)) if drop_rng and rate > 0 else None
        return self.head(self.fc_norm(self.features(images, keeps)))


class SwinClassifier(SwinBackbone):
    """The official Swin fine-tuning model (models_swin.py), as the app's: the backbone on every token (the standard
    shifted windows, at true coordinates), timm's merge order and `norm2` eps 1e-5; the last stage's tokens averaged,
    `norm`, `head`."""

    def __init__(self, m, classes):
        super().__init__(m)
        self.norm = nn.LayerNorm(m['widths'][-1], eps=1e-6)
        self.head = nn.Linear(m['widths'][-1], classes)

    def forward(self, images, drop_rng=None, rate=0.0):
        """Class scores; stochastic depth rising linearly over all blocks to `rate`, drawn from `drop_rng` (none at 0)."""
        depths, B = self.m['depths'], images.shape[0]
        total = sum(depths)

        def keeps(i, j):
            r = rate * (sum(depths[:i]) + j) / max(total - 1, 1)
            return keep_masks(drop_rng, r, B, images.device) if r > 0 else None

        x = self.tokens(images, keeps if drop_rng and rate > 0 else None)
        return self.head(self.norm(x.mean(1)))


def keep_masks(rng, rate, B, device):
    """Two per-sample keep scales (attention, MLP) [B, 1, 1], drawn in the app's order."""
    def mask():
        return torch.tensor([0.0 if rng.next() < rate else 1 / (1 - rate) for _ in range(B)], device=device).view(B, 1, 1)
    return mask(), mask()


def beta(alpha, rng):
    """Beta(α, α) from two Gamma(α) draws (Marsaglia–Tsang, boosted for α < 1), as the app's."""
    def gamma(a):
        if a < 1:
            return gamma(a + 1) * rng.next() ** (1 / a)
        d = a - 1 / 3
        c = 1 / math.sqrt(9 * d)
        while True:
            x = rng.normal()
            v = (1 + c * x) ** 3
            if v > 0 and math.log(1 - rng.next()) < 0.5 * x * x + d - d * v + d * math.log(v):
                return d * v
    x, y = gamma(alpha), gamma(alpha)
    return x / (x + y)


def mix_batch(images, labels, K, f, rng):
    """Label smoothing and, when enabled, Mixup or CutMix with the batch's mirror image (timm's batch mode, the app's
    draws): images [B, 3, H, W], labels [B] -> (mixed images, soft targets [B, K])."""
    smooth = torch.full((len(labels), K), f['smoothing'] / K, device=images.device)
    smooth[torch.arange(len(labels)), labels] += 1 - f['smoothing']
    use_cutmix = f['cutmix'] > 0 and (f['mixup'] == 0 or rng.next() < 0.5)
    alpha = f['cutmix'] if use_cutmix else f['mixup']
    if alpha <= 0:
        return images, smooth
    lam = beta(alpha, rng)
    H, W = images.shape[2:]
    mirror = images.flip(0)
    if use_cutmix:
        cut_h, cut_w = math.trunc(H * math.sqrt(1 - lam)), math.trunc(W * math.sqrt(1 - lam))
        cy, cx = math.floor(rng.next() * H), math.floor(rng.next() * W)
        y0, y1 = min(H, max(0, cy - cut_h // 2)), min(H, max(0, cy + cut_h // 2))
        x0, x1 = min(W, max(0, cx - cut_w // 2)), min(W, max(0, cx + cut_w // 2))
        mixed = images.clone()
        mixed[:, :, y0:y1, x0:x1] = mirror[:, :, y0:y1, x0:x1]
        lam = 1 - (x1 - x0) * (y1 - y0) / (W * H)
    else:
        mixed = lam * images + (1 - lam) * mirror
    return mixed, lam * smooth + (1 - lam) * smooth.flip(0)


def soft_cross_entropy(logits, targets):
    return (-targets * logits.log_softmax(-1)).sum(-1).mean()


def make_optimizer(model, f, groups):
    """AdamW with one group per parameter: the app's lr scale (layer decay) and whether it decays."""
    params = [{'params': [p], 'lr_scale': groups[n][0], 'weight_decay': f['weightDecay'] if groups[n][1] else 0.0}
              for n, p in model.named_parameters()]
    return torch.optim.AdamW(params, lr=0.0, betas=(f['beta1'], f['beta2']), eps=f['eps'])


def finetune_step(model, opt, micro, lr, f, seed, step, classes, device, amp=False):
    """One AdamW step over the micro-batches (images [B, 3, H, W] 0–255, labels [B]) of the app's 0-based step
    index `step` (its Mixup and stochastic-depth draws); the loss divided by their number, as the official loop.
    `amp`: the forward pass under autocast (bf16 on CUDA). Returns the loss, unread."""
    for group in opt.param_groups:
        group['lr'] = lr * group['lr_scale']
    total, accum = 0, len(micro)
    for a, (images, labels) in enumerate(micro):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        mixed, targets = mix_batch(images, labels, classes, f, Rng(seed_for(seed, STREAMS['mix'], step, a)))
        with torch.autocast(device.type, dtype=amp_dtype(device)) if amp else contextlib.nullcontext():
            logits = model(mixed, Rng(seed_for(seed, STREAMS['drop'], step, a)), f['dropPath'])
        loss = soft_cross_entropy(logits.float(), targets) / accum
        loss.backward()
        total = total + loss.detach()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total
