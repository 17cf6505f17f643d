#!/usr/bin/python3
"""Writes test/golden/swin_tiny.json: the official Swin LocalMIM (`MaskedAutoencoderSwin`) on a tiny configuration.

Run from the repository root with Debian's PyTorch (timm is not needed):

    /usr/bin/python3 tools/golden-swin.py /work/.mirror/Haoqing-Wang+LocalMIM/repo > test/golden/swin_tiny.json

The official code is CC BY-NC and is not part of this repository: the script extracts `Swin/models_mim.py` and
`Swin/util/pos_embed.py` from a clone of `Haoqing-Wang/LocalMIM` (the git directory given as the argument) into a
temporary folder at run time, with small stand-ins of the timm pieces they import (written here, after timm 0.3.2).
The model runs unmodified; only the random mask draw of `forward_encoder` is replaced by the masks listed below.
See test/golden/README.md for the file's layout.
"""

import base64
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
from functools import partial

import numpy as np
import torch
import torch.nn as nn

# The official pos_embed.py uses `np.float`, an alias that NumPy 1.24 removed; it meant the builtin float.
np.float = float

# Stand-ins for the timm pieces the official file imports, with timm 0.3.2's behaviour.
TIMM_LAYERS = '''
import math
import torch
import torch.nn as nn


def to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def trunc_normal_(tensor, mean=0., std=1., a=-2., b=2.):
    with torch.no_grad():
        return tensor.normal_(mean, std).clamp_(a, b)


class DropPath(nn.Module):
    def __init__(self, drop_prob=None):
        super().__init__()
        self.drop_prob = drop_prob or 0.

    def forward(self, x):
        if self.drop_prob == 0. or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
'''

TIMM_VIT = '''
import torch.nn as nn
from timm.models.layers import DropPath, Mlp


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0., proj_drop=0.):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4., qkv_bias=False, qk_scale=None, drop=0., attn_drop=0.,
                 drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
'''

CONFIG = dict(img_size=224, patch_size=4, embed_dim=8, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4], window_size=7,
              mlp_ratio=4, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, hog_nbins=9)
MASK_UNITS = 49  # the last stage's 7×7 grid
PARAMS_WITH_GRADS = [
    'encoder.patch_embed.proj.weight',
    'encoder.patch_embed.norm.weight',
    'encoder.layers.0.blocks.0.attn.relative_position_bias_table',
    'encoder.layers.0.blocks.1.attn.relative_position_bias_table',
    'encoder.layers.1.blocks.1.attn.qkv.bias',
    'encoder.layers.2.blocks.1.attn.relative_position_bias_table',
    'encoder.layers.0.downsample.norm.weight',
    'encoder.layers.2.downsample.reduction.weight',
    'encoder.layers.3.blocks.1.mlp.fc2.bias',
    'encoder.norm.0.bias',
    'decoder.0.mask_token',
    'decoder.1.blocks.0.attn.proj.bias',
    'decoder.3.pred.bias',
]


def extract_official(repo, into):
    for path in ['Swin/models_mim.py', 'Swin/models_swin.py', 'Swin/util/pos_embed.py']:
        text = subprocess.run(['git', '-C', repo, 'show', f'HEAD:{path}'], check=True, capture_output=True, text=True).stdout
        dest = os.path.join(into, path[len('Swin/'):])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, 'w') as f:
            f.write(text)
    for pkg, body in [('timm', ''), ('timm/models', ''), ('util', '')]:
        os.makedirs(os.path.join(into, pkg), exist_ok=True)
        with open(os.path.join(into, pkg, '__init__.py'), 'w') as f:
            f.write(body)
    with open(os.path.join(into, 'timm/models/layers.py'), 'w') as f:
        f.write(TIMM_LAYERS)
    with open(os.path.join(into, 'timm/models/vision_transformer.py'), 'w') as f:
        f.write(TIMM_VIT)
    commit = subprocess.run(['git', '-C', repo, 'rev-parse', 'HEAD'], check=True, capture_output=True, text=True).stdout.strip()
    return commit


def formula(name, shape):
    """base = sin(0.731·k + 0.0173·h), h = Σ UTF-8 bytes of the name without `encoder.` (as forward_tiny.json)."""
    h = sum(name.encode())
    n = math.prod(shape)
    k = torch.arange(n, dtype=torch.float64)
    base = torch.sin(0.731 * k + 0.0173 * h)
    if name.endswith('.weight') and len(shape) == 1:
        v = 1 + 0.1 * base
    elif name.endswith('.bias'):
        v = 0.02 * base
    else:
        v = 0.05 * base
    return v.reshape(shape).float()


def image(seed):
    """A 224×224 RGB image: ramps, a checkerboard and rings, shifted by `seed`."""
    y, x = torch.meshgrid(torch.arange(224), torch.arange(224), indexing='ij')
    r = (x * 255) // 223
    g = ((x // (5 + seed)) + (y // 7)) % 2 * 200 + 25
    b = ((x - 90 - 11 * seed) ** 2 + (y - 120) ** 2) // 37 % 256
    return torch.stack([r, g, b], dim=-1).to(torch.uint8)  # H W C


def normalize(u8):
    x = u8.permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (x - mean) / std


def flat(t, digits=7):
    return [float(f'{v:.{digits}g}') for v in t.detach().reshape(-1).tolist()]


def run_case(models_mim, target, mask_seed, mask_ratio, n_images, with_targets):
    torch.manual_seed(0)
    model = models_mim.MaskedAutoencoderSwin(
        img_size=CONFIG['img_size'], patch_size=CONFIG['patch_size'], embed_dim=CONFIG['embed_dim'], depths=CONFIG['depths'],
        num_heads=CONFIG['num_heads'], window_size=CONFIG['window_size'], mlp_ratio=CONFIG['mlp_ratio'],
        decoder_embed_dim=CONFIG['decoder_embed_dim'], decoder_depth=CONFIG['decoder_depth'],
        decoder_num_heads=CONFIG['decoder_num_heads'], norm_layer=partial(nn.LayerNorm, eps=1e-6), target=target,
        hog_nbins=CONFIG['hog_nbins'], hog_bias=False, norm_pix_loss=True, qkv_bias=True, qk_scale=None, drop_rate=0.0,
        drop_path_rate=0.0, ape=False, patch_norm=True, use_checkpoint=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(formula(name.removeprefix('encoder.'), list(p.shape)))
    images = [image(i) for i in range(n_images)]
    x = torch.stack([normalize(u8) for u8 in images])
    # The official draw (`forward_encoder`), seeded: one mask for the batch over the last stage's grid.
    torch.manual_seed(mask_seed)
    mask = torch.randperm(MASK_UNITS) <= int(mask_ratio * MASK_UNITS)
    mask = mask.unsqueeze(0).repeat(n_images, 1)
    latent, ids_restore = model.encoder(x, mask.bool())
    pred = [model.decoder[i](latent[i], ids_restore[i]) for i in range(len(model.decoder))]
    loss_terms = []
    if target == 'HOG':
        targets = [model.HOG(x, k) for k in range(len(pred))]
    else:
        targets = [model.norm_pixel(model.patchify(x, p)) for p in [8, 16, 32, 32]]
    for k in range(len(pred)):
        M = model.recal_mask(mask, k)
        loss_terms.append((((pred[k] - targets[k]) ** 2).mean(dim=-1) * M).sum() / M.sum())
    loss = sum(loss_terms)
    # The same loss through the official `forward_loss`, to check the reproduction of its steps above.
    assert torch.allclose(loss, model.forward_loss(x, pred, mask))
    loss.backward()
    params = dict(model.named_parameters())
    case = {
        'target': target.lower(),
        'mask_seed': mask_seed,
        'mask_ratio': mask_ratio,
        'mask': [int(v) for v in mask[0].tolist()],
        'latent_shapes': [list(t.shape) for t in latent],
        'latent_first16': [flat(t.reshape(-1)[:16]) for t in latent],
        'pred_shapes': [list(t.shape) for t in pred],
        'n_images': n_images,
        'per_stage_loss': [float(t) for t in loss_terms],
        'total_loss': float(loss),
        'grads': {n.removeprefix('encoder.'): {'shape': list(params[n].shape), 'values': flat(params[n].grad)} for n in PARAMS_WITH_GRADS},
    }
    if target == 'HOG':
        case['preds'] = [flat(t) for t in pred]
        if with_targets:
            case['targets'] = [flat(t) for t in targets]
    else:
        # Pixel predictions are large: every 101st value and the sums of values and squares.
        case['preds_every_101'] = [flat(t.reshape(-1)[::101]) for t in pred]
        case['preds_stats'] = [[float(t.double().sum()), float((t.double() ** 2).sum())] for t in pred]
        case['targets_every_101'] = [flat(t.reshape(-1)[::101]) for t in targets]
    return case, model


def finetune_features(models_swin):
    """The official fine-tuning backbone (`models_swin.SwinTransformer`, a standard Swin) on every token: its features."""
    torch.manual_seed(0)
    model = models_swin.SwinTransformer(
        img_size=CONFIG['img_size'], patch_size=CONFIG['patch_size'], in_chans=3, embed_dim=CONFIG['embed_dim'],
        depths=CONFIG['depths'], num_heads=CONFIG['num_heads'], window_size=CONFIG['window_size'],
        mlp_ratio=CONFIG['mlp_ratio'], num_classes=0, qkv_bias=True, qk_scale=None, drop_rate=0.0, drop_path_rate=0.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), ape=False, patch_norm=True, use_checkpoint=False)
    model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(formula(name, list(p.shape)))
        x = torch.stack([normalize(image(i)) for i in range(2)])
        pooled = []
        model.norm.register_forward_hook(lambda module, inputs, output: pooled.append(inputs[0]))
        features = model.forward_features(x)
    # `forward_features` pools the last stage, then normalises: `pooled` is the norm's input.
    return {'shape': [2, model.num_features], 'pooled': flat(pooled[0]), 'features': flat(features)}


def main():
    warnings.filterwarnings('ignore', message='torch.meshgrid')
    torch.set_num_threads(1)
    repo = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        commit = extract_official(repo, tmp)
        sys.path.insert(0, tmp)
        import models_mim
        import models_swin
        cases = [
            # Mask ratio 0.75 (37 of 49 units): grouping in stages 0-1, masking in stages 2-3.
            run_case(models_mim, 'HOG', 1, 0.75, 2, True),
            # Mask ratio 0.4 (20 of 49): grouping in stages 0-2 (stage 2 with shifted windows), masking in stage 3.
            run_case(models_mim, 'HOG', 2, 0.4, 1, False),
            run_case(models_mim, 'Pixel', 3, 0.75, 1, True),
        ]
        model = cases[0][1]
        out = {
            'format_version': 1,
            'source': f'Haoqing-Wang/LocalMIM@{commit}: Swin/models_mim.py MaskedAutoencoderSwin',
            'runtime': f'torch {torch.__version__}, CPU, float32, 1 thread',
            'config': CONFIG,
            'images': [base64.b64encode(image(i).numpy().tobytes()).decode() for i in range(2)],
            'param_init': {'parameters': [
                {'name': n.removeprefix('encoder.'), 'shape': list(p.shape), 'requires_grad': p.requires_grad}
                for n, p in model.named_parameters()]},
            'cases': [c for c, _ in cases],
            'finetune_features': finetune_features(models_swin),
        }
    json.dump(out, sys.stdout, separators=(',', ':'))
    sys.stdout.write('\n')


if __name__ == '__main__':
    main()
