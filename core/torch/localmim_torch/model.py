"""The LocalMIM pretraining model in PyTorch (timm / MAE names, the official state dict): a ViT encoder, one decoder
per scale, HOG or pixel targets, the masked per-scale losses. Every size comes resolved from the app (`model` of the
job spec: core/runs/torch.ts torchSpec), so nothing here has a size table or a default of its own."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias=None):  # [B, T, W]
        """`bias` [n, H, T, T] is added to the scores of sequence b as its row b mod n (Swin's windows)."""
        B, T, W = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)  # [B, H, T, hd]
        attn = (q * (W // self.heads) ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            attn = (attn.view(-1, *bias.shape) + bias).flatten(0, 1)
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

    def forward(self, x, keep=None):
        """`keep`: stochastic depth's per-sample scales [B, 1, 1] of the two branches, 0 (dropped) or 1/(1−rate)."""
        attn = self.attn(self.norm1(x))
        x = x + (attn if keep is None else attn * keep[0])
        mlp = self.mlp(self.norm2(x))
        return x + (mlp if keep is None else mlp * keep[1])


class PatchEmbed(nn.Module):
    """The patch conv, and with `norm` (Swin) a LayerNorm after it."""

    def __init__(self, p, D, norm=False):
        super().__init__()
        self.proj = nn.Conv2d(3, D, p, p)
        self.norm = nn.LayerNorm(D, eps=1e-6) if norm else None

    def forward(self, x):  # [B, 3, H, W] -> [B, L, D]
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.norm is None else self.norm(x)


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
    def __init__(self, m, k):
        super().__init__()
        d = m['decoderDim']
        self.embed = nn.Linear(m['D'], d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer('pos_embed', sincos_pos_embed(d, m['g']))
        self.blocks = nn.ModuleList([Block(d, m['decoderHeads'], m['mlpRatio']) for _ in range(m['decoderDepth'])])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.pred = head(m['scales'][k], d, m['F'][k])
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


class Encoder(nn.Module):
    """The ViT backbone with trainable positions (fine-tuning, embedding): its feature is the mean of the patch tokens
    after the last block (no norm), as the app's."""

    def __init__(self, m):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, m['D']))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + m['L'], m['D']))
        self.patch_embed = PatchEmbed(m['p'], m['D'])
        self.blocks = nn.ModuleList([Block(m['D'], m['heads'], m['mlpRatio']) for _ in range(m['depth'])])

    def features(self, images, keeps=None):
        """images [B, 3, H, W] (0–255) -> [B, D]; `keeps`: per block, stochastic depth's scales (or None)."""
        x = self.patch_embed(normalize(images)) + self.pos_embed[:, 1:]
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        for i, blk in enumerate(self.blocks):
            x = blk(x, keeps(i, x.shape[0], x.device) if keeps else None)
        return x[:, 1:].mean(1)


class Targets:
    """The targets of decoder k, HOG cells or pixel patches, of a pretraining model with `m` and `hog_enc`."""

    @torch.no_grad()
    @torch.autocast('cuda', enabled=False)  # targets in float32 under --amp
    def target(self, k, images, normalized):
        m, cell = self.m, self.m['cells'][k]
        if m['target'] == 'pixel':
            return pixel_targets(normalized, cell, m['normPix'])
        conv = self.hog_enc[k].conv
        return hog(normalized if conv.bias is not None else images, conv.weight, conv.bias, m['nbins'], cell)


def fuse(layers, latents):
    """The fusion variant's features: the last tap's latent plus each lower tap's through its own Linear."""
    return latents[-1] + sum(layer(x) for layer, x in zip(layers, latents))


class LocalMIM(Targets, nn.Module):
    """Encoder taps -> one decoder per scale -> summed masked losses (the `local`, `global`, `isolated` and `fusion`
    variants). `m` is the resolved model: the run config's `model` section with its dims (D, depth, heads, p, g, L, nKeep, taps,
    scales, cells, F)."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        self.cls_token = nn.Parameter(torch.zeros(1, 1, m['D']))
        self.register_buffer('pos_embed', sincos_pos_embed(m['D'], m['g']))
        self.patch_embed = PatchEmbed(m['p'], m['D'])
        self.blocks = nn.ModuleList([Block(m['D'], m['heads'], m['mlpRatio']) for _ in range(m['depth'])])
        self.norm = nn.ModuleList([nn.LayerNorm(m['D'], eps=1e-6) for _ in m['taps']])
        self.decoder = nn.ModuleList([Decoder(m, k) for k in range(len(m['scales']))])
        if m['target'] == 'hog':
            self.hog_enc = nn.ModuleList([HogLayer(m['hogBias']) for _ in m['scales']])
        if m['variant'] == 'fusion':
            self.fuse = nn.ModuleList([nn.Linear(m['D'], m['D']) for _ in m['taps'][:-1]])
        self.unused = max(m['taps']) < m['depth'] - 1  # blocks after the last tap (DDP must know)

    def features(self, images):
        """images [B, 3, H, W] (0–255) -> [B, D]: the mean of the patch tokens after the last block, on every patch
        (the kNN monitor, `--features`), as the Encoder's."""
        x = self.patch_embed(normalize(images)) + self.pos_embed[:, 1:]
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return x[:, 1:].mean(1)

    def forward(self, images, noise):
        """images [B, 3, H, W] (0–255), noise [B, L] -> per-scale losses."""
        preds, targets, mask = self.reconstruct(images, noise)
        g, scales = self.m['g'], self.m['scales']
        return [masked_mse(p, t, scale_mask(mask, g, scales[k])) for k, (p, t) in enumerate(zip(preds, targets))]

    def reconstruct(self, images, noise):
        """Per scale the predictions and targets [B, N, F], and the mask [B, L] (1 = removed)."""
        m, n_keep = self.m, self.m['nKeep']
        normalized = normalize(images)
        ids_shuffle = torch.argsort(noise, dim=1, stable=True)  # ties by index, as the app
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :n_keep]
        mask = torch.ones_like(noise)
        mask[:, :n_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # [B, L], 1 = removed

        x = self.patch_embed(normalized) + self.pos_embed[:, 1:]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, m['D']))
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        latents = []
        for i in range(max(m['taps']) + 1):
            x = self.blocks[i](x)
            latents += [self.norm[j](x) for j, t in enumerate(m['taps']) if t == i]
            if m['variant'] == 'isolated' and i in m['taps']:
                x = x.detach()
        if m['variant'] == 'fusion':
            latents = [fuse(self.fuse, latents)]
        preds = [self.decoder[k](latent, ids_restore) for k, latent in enumerate(latents)]
        targets = [self.target(k, images, normalized) for k in range(len(latents))]
        return preds, targets, mask


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

