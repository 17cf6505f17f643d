#!/usr/bin/python3
"""Writes test/golden/swin_finetune.json: the official Swin fine-tuning model's logits, stage outputs and gradients.

Runs the authors' `Swin/models_swin.py` as it is, read from a git checkout of Haoqing-Wang/LocalMIM (never copied
into this repository), on tiny configurations with formula weights and synthetic images. timm is not needed: the
three helpers the file imports from it (DropPath, to_2tuple, trunc_normal_) are stood in below, and none of them
acts in a forward pass with drop path 0.

    /usr/bin/python3 tools/golden-swin-finetune.py /path/to/LocalMIM/.git > test/golden/swin_finetune.json

Provenance and the formulas: test/golden/README.md.
"""
import importlib
import json
import math
import subprocess
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# (name, image side, window, embed dim, depths, heads, classes)
CASES = [
    ("w4_64", 64, 4, 8, [2, 2, 2, 2], [1, 2, 2, 4], 5),
    ("w7_112", 112, 7, 8, [2, 2, 2], [1, 2, 4], 5),
    ("w7_224", 224, 7, 8, [2, 2, 2, 2], [1, 2, 4, 8], 5),
]
# Parameters whose gradients are stored (per case, those that exist).
GRADS = [
    "patch_embed.proj.weight",
    "patch_embed.norm.weight",
    "layers.0.blocks.1.attn.relative_position_bias_table",
    "layers.0.blocks.1.norm2.bias",
    "layers.0.downsample.reduction.weight",
    "layers.1.blocks.1.attn.qkv.weight",
    "norm.weight",
    "head.weight",
    "head.bias",
]


def stub_timm():
    """timm.models.layers with the three names models_swin.py imports."""

    class DropPath(nn.Module):
        def __init__(self, p=0.0):
            super().__init__()
            self.p = p

        def forward(self, x):
            if self.p == 0.0 or not self.training:
                return x
            keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
            return x * keep / (1 - self.p)

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    layers.trunc_normal_ = lambda t, std=1.0: nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0)
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def load_official(git_dir, commit):
    src = subprocess.run(["git", "-C", git_dir, "show", f"{commit}:Swin/models_swin.py"], check=True, capture_output=True).stdout
    tmp = tempfile.mkdtemp()
    (Path(tmp) / "models_swin.py").write_bytes(src)
    sys.path.insert(0, tmp)
    stub_timm()
    return importlib.import_module("models_swin")


def formula(name, shape):
    """1 + 0.1·s for 1-D weights (LayerNorm gains), 0.02·s for biases, 1.0·s for the relative position bias
    tables, 0.2·s otherwise; s = sin(0.731·k + 0.0173·h), h the sum of the name's UTF-8 bytes."""
    n = math.prod(shape)
    h = sum(name.encode())
    base = torch.sin(0.731 * torch.arange(n, dtype=torch.float64) + 0.0173 * h)
    if name.endswith(".bias"):
        v = 0.02 * base
    elif len(shape) == 1:
        v = 1 + 0.1 * base
    elif name.endswith("relative_position_bias_table"):
        v = base
    else:
        v = 0.2 * base
    return v.reshape(shape).float()


def image(side, variant):
    """Integer RGB pixels (y, x, c): ramps, a checkerboard and rings; `variant` shifts the pattern."""
    px = []
    for y in range(side):
        for x in range(side):
            r = (3 * x + 5 * y + 40 * variant) % 256
            g = 255 * (((x // 3) + (y // 5) + variant) % 2)
            b = ((x - side // 2) ** 2 + (y - side // 3) ** 2 + 17 * variant) % 256
            px += [r, g, b]
    return px


def as_input(px, side):
    x = torch.tensor(px, dtype=torch.float64).reshape(side, side, 3) / 255
    x = (x - torch.tensor(MEAN, dtype=torch.float64)) / torch.tensor(STD, dtype=torch.float64)
    return x.permute(2, 0, 1).float()


def flat(t):
    return [round(float(v), 7) for v in t.detach().reshape(-1).tolist()]


def run_case(models_swin, case):
    name, side, window, dim, depths, heads, classes = case
    torch.manual_seed(0)
    model = models_swin.SwinTransformer(
        img_size=side, patch_size=4, in_chans=3, embed_dim=dim, depths=depths, num_heads=heads, window_size=window,
        mlp_ratio=4, num_classes=classes, qkv_bias=True, qk_scale=None, drop_rate=0.0, drop_path_rate=0.0,
        ape=False, patch_norm=True, use_checkpoint=False, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    model.train()  # drop path 0 and no dropout: the same function as eval, with gradients
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(formula(n, list(p.shape)))
    images = [image(side, v) for v in range(2)]
    x = torch.stack([as_input(px, side) for px in images])
    stages = []
    hooks = [layer.blocks[-1].register_forward_hook(lambda m, i, o: stages.append(o)) for layer in model.layers]
    logits = model(x)
    for h in hooks:
        h.remove()
    # Soft targets: label smoothing 0.1 of labels [1, 3], as the fine-tuning loss without mixing.
    labels = [1, 3]
    t = torch.full((2, classes), 0.1 / classes)
    for b, y in enumerate(labels):
        t[b, y] += 0.9
    loss = torch.sum(-t * torch.log_softmax(logits, -1), -1).mean()
    loss.backward()
    blocks = [
        {"stage": i, "block": j, "window": blk.window_size, "shift": blk.shift_size}
        for i, layer in enumerate(model.layers)
        for j, blk in enumerate(layer.blocks)
    ]
    out = {
        "name": name,
        "config": {"img_size": side, "patch_size": 4, "window_size": window, "embed_dim": dim, "depths": depths,
                   "num_heads": heads, "mlp_ratio": 4, "num_classes": classes, "norm_eps": 1e-6},
        "effective_windows": blocks,
        "param_init": [{"name": n, "shape": list(p.shape)} for n, p in params.items()],
        "images": [{"height": side, "width": side, "pixels_u8_hwc": px} for px in images],
        "labels": labels,
        "smoothing": 0.1,
        "logits": flat(logits),
        "loss": float(loss),
        "stage_shapes": [list(s.shape) for s in stages],
        "stage_sums": [[float(s.double().sum()), float(s.double().abs().sum())] for s in stages],
        "grads": {n: flat(params[n].grad) for n in GRADS if n in params},
    }
    if side <= 64:
        out["stage_outputs"] = [flat(s) for s in stages]
    return out


def main():
    git_dir = sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror/Haoqing-Wang+LocalMIM/repo"
    commit = subprocess.run(["git", "-C", git_dir, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    torch.set_num_threads(1)
    models_swin = load_official(git_dir, commit)
    doc = {
        "format_version": 1,
        "source": f"Haoqing-Wang/LocalMIM {commit[:7]} Swin/models_swin.py SwinTransformer (fine-tuning model)",
        "runtime": f"PyTorch {torch.__version__}, CPU, float32, 1 thread",
        "normalization": {"mean": MEAN, "std": STD},
        "cases": [run_case(models_swin, c) for c in CASES],
    }
    json.dump(doc, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
