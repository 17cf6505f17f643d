"""ViT and Swin fine-tuning in PyTorch, as the app's (core/train/finetune.ts): the pretrained backbone and its head
(ViT: a trainable `pos_embed`, mean-pooled patch tokens, `fc_norm`, `head`; Swin: the last stage pooled, `norm`,
`head`); stochastic depth, label smoothing, Mixup or CutMix with the
batch's mirror image drawn from the app's generators, and AdamW with the per-parameter learning-rate scale (layer
decay) and weight-decay choice the app resolves and hands over (`groups` of the job spec)."""
import contextlib
import math

import torch
import torch.nn as nn

from .augment import FinetuneAugment
from .checkpoint import read_safetensors
from .data import STREAMS, Labeled, Rng, seed_for
from .loop import amp_dtype
from .model import Encoder
from .swin import SwinBackbone


def classifier(m, classes, probe=False):
    """The fine-tuning model of the resolved model's family; `probe`: MAE's linear probe (a ViT's: core/engine.ts
    torchCannot fine-tunes ViTs only on this engine)."""
    return SwinClassifier(m, classes) if m['family'] == 'swin' else ViTClassifier(m, classes, probe)


class Finetuning:
    """Fine-tuning as a job of the one loop (core/torch/localmim_torch/loop.py): the classifier, AdamW with the app's
    groups, labeled micro-batches cropped and augmented as the app's; top-1 and loss on the validation images the app
    decoded (`val`: images [N, H, W, 3] 0–255, labels [N]) at each epoch's end."""
    per_scale = False
    unused = False

    def __init__(self, spec, device):
        f = self.schedule = spec['finetune']
        self.model = classifier(spec['model'], spec['classes'], f['linearProbe']).to(device)
        self.opt = make_optimizer(self.model, f, spec['groups'], spec.get('lars'))
        self.crops = {'min_scale': f['minScale'], 'kernel': f['kernel'], 'augment': FinetuneAugment(f)}
        self.seed, self.classes, self.device = spec['seed'], spec['classes'], device
        val = read_safetensors(spec['val'])[0]
        self.val = (val['images'].permute(0, 3, 1, 2).to(torch.uint8), val['labels'].long())  # 8-bit: a quarter the memory
        if device.type == 'cuda':
            self.val = tuple(t.pin_memory() for t in self.val)

    def batches(self, data, micro, steps_per_epoch):
        return Labeled(data)

    def step(self, net, scaler, micro, step, amp, device, no_sync):
        f = self.schedule
        return finetune_step(net, self.opt, scaler, micro, f, self.seed, step, self.classes, device, amp, no_sync)

    @torch.no_grad()
    def evaluate(self):
        """(top-1, mean cross-entropy) on the validation images, in batches of the recipe's."""
        images, labels = self.val
        correct, loss, batch = 0, 0.0, self.schedule['batch']
        self.model.eval()
        for i in range(0, len(labels), batch):
            y = labels[i:i + batch].to(self.device, non_blocking=True)
            logits = self.model(images[i:i + batch].to(self.device, non_blocking=True).float()).float()
            correct = correct + (logits.argmax(-1) == y).sum()
            loss = loss + nn.functional.cross_entropy(logits, y, reduction='sum')
        self.model.train()
        n = max(len(labels), 1)
        return float(correct) / n, float(loss) / n  # one readback


class ProbeNorm(nn.Module):
    """MAE's linear probe's BatchNorm without affine (eps 1e-6): running statistics only, named as MAE's `head.0`."""

    def __init__(self, D):
        super().__init__()
        self.register_buffer('running_mean', torch.zeros(D))
        self.register_buffer('running_var', torch.ones(D))

    def forward(self, x):
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, training=self.training, momentum=0.1,
                                        eps=1e-6)


class ViTClassifier(Encoder):
    """The backbone, `fc_norm` and `head`; with `probe`, MAE's linear probe: `head` is the BatchNorm and the Linear,
    and only the Linear trains."""

    def __init__(self, m, classes, probe=False):
        super().__init__(m)
        self.fc_norm = nn.LayerNorm(m['D'], eps=1e-6)
        self.head = nn.Sequential(ProbeNorm(m['D']), nn.Linear(m['D'], classes)) if probe else nn.Linear(m['D'], classes)
        for name, p in self.named_parameters():
            p.requires_grad_(not probe or name.startswith('head.'))

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


class LARS(torch.optim.Optimizer):
    """LARS as MAE's linear probe uses it (core/train/lars.ts): a tensor of more than one dimension adds weight decay
    to its gradient and scales it by the trust ratio η·‖p‖/‖g‖ (1 when either is 0); then momentum, μ ← m·μ + g,
    p ← p − lr·μ."""
    slots = ('mu',)

    def __init__(self, params, weight_decay, momentum, trust):
        super().__init__(params, {'lr': 0.0, 'weight_decay': weight_decay, 'momentum': momentum, 'trust': trust})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group['params']:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1:
                    g = g + group['weight_decay'] * p
                    p_norm, g_norm = p.norm(), g.norm()
                    trust = torch.where((p_norm > 0) & (g_norm > 0), group['trust'] * p_norm / g_norm, torch.ones_like(p_norm))
                    g = g * trust
                s = self.state[p]
                s['mu'] = s['mu'] * group['momentum'] + g if 'mu' in s else g.clone()
                s['step'] = s.get('step', 0) + 1
                p.sub_(group['lr'] * s['mu'])


def make_optimizer(model, f, groups, lars=None):
    """AdamW with one group per parameter: the app's lr scale (layer decay) and whether it decays; or, for a linear
    probe, LARS on the head with the app's settings (`lars`)."""
    if f['linearProbe']:
        head = [p for p in model.parameters() if p.requires_grad]
        return LARS(head, f['weightDecay'], lars['momentum'], lars['trust'])
    params = [{'params': [p], 'lr_scale': groups[n][0], 'weight_decay': f['weightDecay'] if groups[n][1] else 0.0}
              for n, p in model.named_parameters()]
    return torch.optim.AdamW(params, lr=0.0, betas=(f['beta1'], f['beta2']), eps=f['eps'])


def finetune_step(net, opt, scaler, micro, f, seed, step, classes, device, amp=False, no_sync=None):
    """One AdamW step (its learning rates set: loop.set_lr) over f['accumIter'] micro-batches (images [B, 3, H, W]
    0–255, labels [B]) of the app's 0-based step index `step` (its Mixup and stochastic-depth draws); the loss divided
    by their number, as the official loop. `amp`: the forward pass under autocast (bf16 on CUDA); `no_sync` (DDP)
    skips the gradient all-reduce of all but the last. Returns the loss [1], unread."""
    total, accum = 0, f['accumIter']
    for a, (images, labels) in enumerate(micro):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        mixed, targets = mix_batch(images, labels, classes, f, Rng(seed_for(seed, STREAMS['mix'], step, a)))
        with contextlib.nullcontext() if no_sync is None or a == accum - 1 else no_sync():
            with torch.autocast(device.type, dtype=amp_dtype(device)) if amp else contextlib.nullcontext():
                rate = 0 if f['linearProbe'] else f['dropPath']  # a probe's frozen backbone drops nothing
                logits = net(mixed, Rng(seed_for(seed, STREAMS['drop'], step, a)), rate)
            loss = soft_cross_entropy(logits.float(), targets) / accum
            scaler.scale(loss).backward()
        total = total + loss.detach()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return total.view(1)
