#!/usr/bin/python3
"""An independent reader of an exported Swin: timm's `SwinTransformer` layout (timm >= 0.9) written out in plain
PyTorch, loading `model.safetensors` strictly and printing the features timm computes, as JSON.

    /usr/bin/python3 tools/timm-swin-features.py EXPORT_DIR PIXELS.json

EXPORT_DIR holds `model.safetensors` and `config.json` (from `localmim export RUN --format safetensors`); PIXELS.json
is `{"height": H, "width": W, "data": [u8, ...]}`, RGB in (y, x, channel) order at the model's input size. Features:
`forward_head(forward_features(x), pre_logits=True)`, the mean over positions of the final-normed last-stage tokens;
with a head, `logits` too. Nothing here comes from this project's TypeScript: it checks the export as timm reads it.
"""
import json
import struct
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-5  # timm's Swin uses nn.LayerNorm's default


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    out = {}
    for name, e in header.items():
        assert e["dtype"] == "F32", name
        a, b = e["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(e["shape"])
    return out


def relative_position_index(w):
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # 2, w²
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)  # w², w², 2
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def windows(x, w):
    """[B, H, W, C] -> [B·nW, w², C], windows row-major."""
    B, H, W, C = x.shape
    return x.reshape(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, C)


def unwindows(x, w, H, W):
    C = x.shape[-1]
    return x.reshape(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


class WindowAttention(nn.Module):
    def __init__(self, dim, heads, w):
        super().__init__()
        self.heads, self.w = heads, w
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(w), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask):
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * (C // self.heads) ** -0.5) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)].reshape(N, N, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            attn = (attn.reshape(-1, nW, self.heads, N, N) + mask.unsqueeze(1).unsqueeze(0)).reshape(-1, self.heads, N, N)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B_, N, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, res, window, shift, mlp_ratio):
        super().__init__()
        self.w = min(window, res)
        self.shift = 0 if res <= self.w else shift
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = WindowAttention(dim, heads, self.w)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", self.shifted_mask(res) if self.shift else None, persistent=False)

    def shifted_mask(self, res):
        w, s = self.w, self.shift
        region = torch.zeros(1, res, res, 1)
        cuts = (slice(0, -w), slice(-w, -s), slice(-s, None))
        for i, (h, v) in enumerate((h, v) for h in cuts for v in cuts):
            region[:, h, v, :] = i
        r = windows(region, w).squeeze(-1)  # nW, w²
        return (r.unsqueeze(1) - r.unsqueeze(2)).ne(0).float() * -100.0

    def forward(self, x):  # NHWC
        B, H, W, C = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = unwindows(self.attn(windows(y, self.w), self.attn_mask), self.w, H, W)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=EPS)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        B, H, W, C = x.shape
        # timm's order of the 2x2 neighbours: (0,0), (1,0), (0,1), (1,1) as (dy, dx).
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class Stage(nn.Module):
    def __init__(self, dim, depth, heads, res, window, mlp_ratio, downsample):
        super().__init__()
        self.downsample = PatchMerging(dim // 2) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *[Block(dim, heads, res, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth)]
        )

    def forward(self, x):
        return self.blocks(self.downsample(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.norm = nn.LayerNorm(dim, eps=EPS)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Head(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.fc = nn.Linear(dim, classes) if classes else nn.Identity()


class SwinTransformer(nn.Module):
    def __init__(self, img_size, patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio, num_classes, **_):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        g = img_size // patch_size
        self.layers = nn.Sequential(
            *[
                Stage(embed_dim * 2**i, d, h, g // 2**i, window_size, mlp_ratio, i > 0)
                for i, (d, h) in enumerate(zip(depths, num_heads))
            ]
        )
        self.norm = nn.LayerNorm(embed_dim * 2 ** (len(depths) - 1), eps=EPS)
        self.head = Head(self.norm.normalized_shape[0], num_classes)

    def forward_features(self, x):
        return self.norm(self.layers(self.patch_embed(x)))

    def forward_head(self, x, pre_logits=False):
        x = x.mean((1, 2))
        return x if pre_logits else self.head.fc(x)


def main():
    export, pixels = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    cfg = json.loads((export / "config.json").read_text())
    args = dict(cfg["model_args"], num_classes=cfg["num_classes"])
    model = SwinTransformer(**args).eval()
    model.load_state_dict(read_safetensors(export / "model.safetensors"), strict=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    u8 = torch.tensor(pixels["data"], dtype=torch.float32).reshape(pixels["height"], pixels["width"], 3)
    x = ((u8 / 255 - mean) / std).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        f = model.forward_features(x)
        out = {"features": model.forward_head(f, pre_logits=True)[0].tolist()}
        if cfg["num_classes"]:
            out["logits"] = model.forward_head(f)[0].tolist()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
