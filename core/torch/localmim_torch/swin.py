"""Swin LocalMIM in PyTorch, as the app's (core/model/swin.ts, swin-windows.ts, swin-localmim.ts; timm / official
names): the encoder sees the visible mask units only, its tokens mask-unit-major (each visible unit's r × r tokens in
raster order, units in raster order), one mask for the whole batch. Which tokens attend to which (windows, shifted
windows, windows packed into groups) is planned on the host from the mask, as the official `GroupingModule`. Every
size comes resolved from the app (`model` of the job spec: core/engine.ts torchModel)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import (Attention, Block, HogLayer, Mlp, PatchEmbed, Targets, fuse, head, masked_mse, normalize, scale_mask,
                    sincos_pos_embed)


def knapsack(W, wt):
    """0/1 knapsack of capacity W over weights = values `wt` (the official DP): the chosen items, increasing."""
    K = [[0] * (W + 1)]
    for w in wt:
        K.append([max(w + K[-1][c - w], K[-1][c]) if w <= c else K[-1][c] for c in range(W + 1)])
    res, c, chosen = K[-1][W], W, []
    for i in range(len(wt), 0, -1):
        if res <= 0:
            break
        if res != K[i - 1][c]:
            chosen.append(i - 1)
            res, c = res - wt[i - 1], c - wt[i - 1]
    return chosen[::-1]


def group_windows(size, counts):
    """The official `group_windows`: knapsack after knapsack over the remaining windows; each group's window indices."""
    ids, groups = list(range(len(counts))), []
    while ids:
        chosen = knapsack(size, [counts[i] for i in ids])
        groups.append([ids[k] for k in chosen])
        ids = [i for k, i in enumerate(ids) if k not in set(chosen)]
    return groups


def group_plan(coords, w, shift):
    """One attention pass's grouping of a stage's tokens at `coords` [(row, col)]: (GS, order, slots, gid, local) where
    order [nG·GS] is the token in each slot (−1 = padding; None in masking mode: one group of all tokens in their
    order), slots each token's slot, gid and local each slot's window and position in it (−1 = padding)."""
    N, off = len(coords), (w - shift) % w
    # The official id multiplies the window row by the token count, not the window columns: same order, same groups.
    gid = [((y + off) // w) * N + (x + off) // w for y, x in coords]
    local = [((y + off) % w) * w + (x + off) % w for y, x in coords]
    if N <= 2 * w * w:  # masking mode
        return N, None, None, gid, local
    windows = {}
    for n in sorted(range(N), key=lambda n: (gid[n], n)):
        windows.setdefault(gid[n], []).append(n)
    windows = list(windows.values())
    GS = min(w * w, max(len(t) for t in windows))
    order = []
    for group in group_windows(GS, [len(t) for t in windows]):
        tokens = [n for k in group for n in windows[k]]
        order += tokens + [-1] * (GS - len(tokens))
    slots = [0] * N
    for s, n in enumerate(order):
        if n >= 0:
            slots[n] = s
    return GS, order, slots, [gid[n] if n >= 0 else -1 for n in order], [local[n] if n >= 0 else -1 for n in order]


class Grouping:
    """A grouping on the device: the gathers to slots (N: a zero row) and back, the relative-position index and the
    window mask."""

    def __init__(self, plan, w, device):
        self.GS, order, slots, gid, local = plan
        self.order = None if order is None else on(device, [len(slots) if n < 0 else n for n in order])
        self.slots = None if slots is None else on(device, slots)
        gid = torch.tensor(gid).view(-1, self.GS)
        local = torch.tensor(local).clamp(min=0).view(-1, self.GS)
        same = (gid[:, :, None] == gid[:, None, :]) & (gid[:, :, None] >= 0)
        self.same = on(device, same.unsqueeze(1))  # [nG, 1, GS, GS]
        dy = local[:, :, None] // w - local[:, None, :] // w
        dx = local[:, :, None] % w - local[:, None, :] % w
        self.index = on(device, (dy + w - 1) * (2 * w - 1) + dx + w - 1)  # [nG, GS, GS]

    def bias(self, table):
        """The relative position bias [nG, heads, GS, GS] within windows, the official −100 across them."""
        b = table[self.index].permute(0, 3, 1, 2)
        return torch.where(self.same, b, torch.full_like(b, -100.0))


class Plan:
    """The host-side bookkeeping of a batch's mask (the visible units, raster, increasing), on the device: the visible
    patches' token ids, per stage its groupings, per stage output the raster order of its tokens (n: masked).
    `official`: the pretraining's token coordinates after a merging, else the true ones (fine-tuning)."""

    def __init__(self, m, units, device, official=True):
        G, g0 = m['maskGrid'], m['grids'][0]
        self.tokens = on(device, unit_major(units, G, g0))
        self.stages = []
        for i, g in enumerate(m['grids']):
            r, w, shift = g // G, m['windows'][i], m['shifts'][i]
            # After a merging the official code reads the unit-major index of a token as a raster index
            # (docs/method.md#swin-coordinates).
            at = [u * r * r + t for u in units for t in range(r * r)] if i and official else unit_major(units, G, g)
            coords = [divmod(n, g) for n in at]
            shifted = Grouping(group_plan(coords, w, shift), w, device) if shift else None
            self.stages.append((Grouping(group_plan(coords, w, 0), w, device), shifted))
        self.restore = []
        for g in m['outGrids']:
            at = unit_major(units, G, g)
            order = [len(at)] * (g * g)
            for k, t in enumerate(at):
                order[t] = k
            self.restore.append(on(device, order))


def on(device, values):
    """A host tensor (or list) on the device without waiting for it: pinned, then copied asynchronously on CUDA."""
    t = values if torch.is_tensor(values) else torch.tensor(values)
    return t.pin_memory().to(device, non_blocking=True) if device.type == 'cuda' else t.to(device)


def unit_major(units, G, g):
    """The raster index on a g × g grid of each token of the visible units of a G × G mask grid, mask-unit-major."""
    r = g // G
    return [(u // G * r + q // r) * g + u % G * r + q % r for u in units for q in range(r * r)]


class WindowAttention(Attention):
    def __init__(self, dim, heads, w):
        super().__init__(dim, heads)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))


class SwinBlock(nn.Module):
    """Windowed attention with relative position bias within a grouping's groups, then the MLP; `norm2_eps`: 1e-6 in
    pretraining, PyTorch's 1e-5 in the official fine-tuning model (the same weights are read both ways)."""

    def __init__(self, dim, heads, w, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention(dim, heads, w)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, g, keep=None, norm2_eps=1e-6):  # x [B, N, C]
        B, _, C = x.shape
        h = self.norm1(x)  # per token, so it commutes with the gather; padding slots are zero rows, masked out
        if g.order is not None:
            h = F.pad(h, (0, 0, 0, 1))[:, g.order]
        a = self.attn(h.reshape(-1, g.GS, C), g.bias(self.attn.relative_position_bias_table)).reshape(B, -1, C)
        if g.order is not None:
            a = a[:, g.slots]
        x = x + (a if keep is None else a * keep[0])
        mlp = self.mlp(F.layer_norm(x, (C,), self.norm2.weight, self.norm2.bias, norm2_eps))
        return x + (mlp if keep is None else mlp * keep[1])


class PatchMerging(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.reduction = nn.Linear(4 * C, 2 * C, bias=False)
        self.norm = nn.LayerNorm(4 * C, eps=1e-6)

    def forward(self, x, r, order):
        """x [B, N, C] in units of r × r tokens (raster within) -> [B, N/4, 2C] in units of r/2 × r/2: each 2×2
        neighbourhood concatenated in (dh, dw) order (`pretrain`, the official pretraining's) or timm's (dw, dh)."""
        B, N, C = x.shape
        grid = x.reshape(-1, 2, r // 2, 2, C)  # [(b, unit, h2), dh, w2, dw, C]
        merged = grid.permute(0, 2, 1, 3, 4) if order == 'pretrain' else grid.permute(0, 2, 3, 1, 4)
        return self.reduction(self.norm(merged.reshape(B, N // 4, 4 * C)))


class Stage(nn.Module):
    def __init__(self, m, i):
        super().__init__()
        W = m['widths'][i]
        self.blocks = nn.ModuleList([SwinBlock(W, m['heads'][i], m['windows'][i], m['mlpRatio'])
                                     for _ in range(m['depths'][i])])
        self.downsample = PatchMerging(W) if i < len(m['widths']) - 1 else None


class SwinBackbone(nn.Module):
    """The patch embedding (conv, LayerNorm) and the stages (`layers.i`, patch merging at the end of all but the last)."""

    def __init__(self, m):
        super().__init__()
        self.m = m
        self.patch_embed = PatchEmbed(m['p'], m['C'], norm=True)
        self.layers = nn.ModuleList([Stage(m, i) for i in range(len(m['depths']))])
        self.full_plan = None  # every unit visible: one plan, made on the images' device

    def encode(self, x, plan, stages, merge='pretrain', isolate=(), keeps=None, norm2_eps=1e-6):
        """Tokens x [B, N0, C] through the first `stages` stages: each stage's output after its merging [B, N_i, C_i];
        the gradient stops after the stages in `isolate`; `keeps(i, j)`: block j of stage i's stochastic depth."""
        outs = []
        for i, stage in enumerate(self.layers[:stages]):
            plain, shifted = plan.stages[i]
            for j, blk in enumerate(stage.blocks):
                x = blk(x, shifted if j % 2 and shifted else plain, keeps(i, j) if keeps else None, norm2_eps)
            if stage.downsample is not None:
                x = stage.downsample(x, self.m['grids'][i] // self.m['maskGrid'], merge)
            outs.append(x)
            if i in isolate:
                x = x.detach()
        return outs

    def tokens(self, images, keeps=None):
        """The last stage's tokens [B, T, C] of images [B, 3, H, W] (0–255) as the official fine-tuning model
        (models_swin.py) sees them: every token (the standard shifted windows, at true coordinates), timm's merge
        order, `norm2` eps 1e-5."""
        if self.full_plan is None:
            self.full_plan = Plan(self.m, list(range(self.m['units'])), images.device, official=False)
        x = self.patch_embed(normalize(images))[:, self.full_plan.tokens]
        return self.encode(x, self.full_plan, len(self.m['depths']), merge='timm', keeps=keeps, norm2_eps=1e-5)[-1]


class SwinEncoder(SwinBackbone):
    """An exported Swin backbone with its final `norm` (embedding): its feature is the mean of the last stage's tokens
    after `norm`, as timm's `forward_head(pre_logits=True)` and the app's."""

    def __init__(self, m):
        super().__init__(m)
        self.norm = nn.LayerNorm(m['widths'][-1], eps=1e-6)

    def features(self, images):
        """images [B, 3, H, W] (0–255) -> [B, C_last]."""
        return self.norm(self.tokens(images)).mean(1)


class SwinDecoder(nn.Module):
    """Decoder k (official `ViT_Decoder`) on its stage's output grid: fixed sin-cos positions without a class row; at
    scale 1 `pred` is one Linear, else the ViT decoders' rescaling head."""

    def __init__(self, m, k):
        super().__init__()
        W, t, s = m['decoderDims'][k], m['reads'][k], m['scales'][k]
        self.g = m['outGrids'][t]
        self.embed = nn.Linear(m['outWidths'][t], W)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, W))
        self.register_buffer('pos_embed', sincos_pos_embed(W, self.g)[:, 1:].clone())
        self.blocks = nn.ModuleList([Block(W, m['decoderHeads'], m['mlpRatio']) for _ in range(m['decoderDepth'])])
        self.norm = nn.LayerNorm(W, eps=1e-6)
        self.pred = nn.Linear(W, m['F'][k]) if s == 1 else head(s, W, m['F'][k])

    def forward(self, latent, restore):
        """latent [B, n, C] -> [B, L_k, F_k]: put back in raster order with mask tokens at the masked positions."""
        x = self.embed(latent)
        B, n, W = x.shape
        x = F.pad(x, (0, 0, 0, 1))[:, restore] + (restore == n).view(1, -1, 1) * self.mask_token + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        if isinstance(self.pred, nn.Linear):
            return self.pred(x)
        return self.pred(x.transpose(1, 2).reshape(B, W, self.g, self.g)).flatten(2).transpose(1, 2)


def swin_mask(noise, m):
    """The official draw, `randperm(units) <= int(ratio · units)`, from noise [units]: the `nMasked` units of lowest
    noise (ties by index) removed. Returns the mask over the units [units], 1 = removed."""
    mask = torch.zeros_like(noise)
    mask[torch.argsort(noise, stable=True)[:m['nMasked']]] = 1
    return mask


class SwinLocalMIM(Targets, SwinBackbone):
    """Each tapped stage's merged output, normalised -> its own decoder -> summed masked losses; `global` decodes the
    last stage only, `isolated` stops the gradients after each tap, `fusion` adds each lower tap's r × r tokens of a
    mask unit, through its own Linear, to the last stage's token of that unit."""

    def __init__(self, m):
        super().__init__(m)
        self.norm = nn.ModuleList([nn.LayerNorm(m['outWidths'][t], eps=1e-6) for t in m['taps']])
        self.decoder = nn.ModuleList([SwinDecoder(m, k) for k in range(len(m['reads']))])
        if m['target'] == 'hog':
            self.hog_enc = nn.ModuleList([HogLayer(m['hogBias']) for _ in m['reads']])
        if m['variant'] == 'fusion':
            top = m['outWidths'][-1]
            self.fuse = nn.ModuleList([nn.Linear((m['outGrids'][t] // m['maskGrid']) ** 2 * m['outWidths'][t], top)
                                       for t in m['taps'][:-1]])
        self.unused = max(m['taps']) < len(m['depths']) - 1  # stages after the last tap (DDP must know)

    def features(self, images):
        """images [B, 3, H, W] (0–255) -> [B, C_last] (the kNN monitor, `--features`): the SwinEncoder's feature, the
        last stage's latent norm as its final `norm`."""
        return self.norm[self.m['taps'].index(len(self.m['depths']) - 1)](self.tokens(images)).mean(1)

    def forward(self, images, noise):
        """images [B, 3, H, W] (0–255), noise [1, units] on the host (the windows are planned there) -> per-decoder
        losses."""
        preds, targets, mask = self.reconstruct(images, noise)
        G, grids = self.m['maskGrid'], self.m['predGrids']
        return [masked_mse(p, t, scale_mask(mask, G, grids[k] / G)) for k, (p, t) in enumerate(zip(preds, targets))]

    def reconstruct(self, images, noise):
        """Per decoder the predictions and targets [B, L_k, F_k], and the mask over the units [B, units] (1 = removed)."""
        m, B = self.m, images.shape[0]
        mask = swin_mask(noise[0].cpu(), m)
        plan = Plan(m, (mask == 0).nonzero().flatten().tolist(), images.device)
        mask = on(images.device, mask)
        normalized = normalize(images)
        x = self.patch_embed(normalized)[:, plan.tokens]
        outs = self.encode(x, plan, max(m['taps']) + 1, isolate=m['taps'] if m['variant'] == 'isolated' else ())
        latents = [self.norm[k](outs[t]) for k, t in enumerate(m['taps'])]
        if m['variant'] == 'fusion':
            n = latents[-1].shape[1]
            latents = [fuse(self.fuse, [z.reshape(B, n, -1) for z in latents])]
        preds = [self.decoder[k](z, plan.restore[m['reads'][k]]) for k, z in enumerate(latents)]
        targets = [self.target(k, images, normalized) for k in range(len(latents))]
        return preds, targets, mask.expand(B, -1)
