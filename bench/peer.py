"""The same LocalMIM pretraining step in PyTorch, for `npm run bench -- --peer`.

vit-tiny (192-d, 12 blocks, 3 heads), 64 px, patch 8, mask 0.75, taps after blocks 1, 3, 9, 11, four 256-d
decoders (x4, x2, x1, x0.5), HOG targets (9 bins, cells 2/4/8/16), AdamW (0.9, 0.95). Written plainly and
efficiently: fused qkv, batched matmuls, gather-based un-shuffle, no Python loops over the batch.
HOG histograms are computed once per step and average-pooled per cell size. Threads: --torch-threads, with
OPENBLAS_NUM_THREADS set by the caller (bench/peer.ts tries 1 x 2 and 2 x 1 and keeps the faster).
"""
import argparse, ctypes, json, math, os, resource, time
import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos(width, g):
    q = width // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)
    i, j = torch.meshgrid(torch.arange(g, dtype=torch.float64), torch.arange(g, dtype=torch.float64), indexing="ij")
    i, j = i.reshape(-1, 1) * omega, j.reshape(-1, 1) * omega
    table = torch.cat([torch.sin(j), torch.cos(j), torch.sin(i), torch.cos(i)], 1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), table]).float().unsqueeze(0)


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = ((q * (D // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        x = x + self.proj((a @ v).transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ChannelNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def head(scale, d, f):
    if scale == 4:
        return nn.Sequential(nn.ConvTranspose2d(d, d // 2, 2, 2), ChannelNorm(d // 2, eps=1e-6), nn.GELU(), nn.ConvTranspose2d(d // 2, d // 4, 2, 2), nn.Conv2d(d // 4, f, 1))
    if scale == 2:
        return nn.Sequential(nn.ConvTranspose2d(d, d // 2, 2, 2), nn.Conv2d(d // 2, f, 1))
    if scale == 1:
        return nn.Sequential(nn.Conv2d(d, f, 1))
    return nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(d, f, 1))


class Decoder(nn.Module):
    def __init__(self, D, d, g, scale, f):
        super().__init__()
        self.embed, self.mask_token = nn.Linear(D, d), nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("pos", sincos(d, g))
        self.block, self.norm, self.pred, self.g = Block(d, 8), nn.LayerNorm(d, eps=1e-6), head(scale, d, f), g

    def forward(self, z, ids_restore):
        x = self.embed(z)
        B, n, d = x.shape
        L = ids_restore.shape[1]
        full = torch.cat([x[:, 1:], self.mask_token.expand(B, L + 1 - n, d)], 1)
        full = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = self.norm(self.block(torch.cat([x[:, :1], full], 1) + self.pos))[:, 1:]
        y = self.pred(x.transpose(1, 2).reshape(B, d, self.g, self.g))
        return y.flatten(2).transpose(1, 2)


class LocalMIM(nn.Module):
    def __init__(self, img=64, p=8, D=192, depth=12, heads=3, d=256, nbins=9):
        super().__init__()
        self.g, self.p, self.nbins = img // p, p, nbins
        self.patch_embed = nn.Conv2d(3, D, p, p)
        self.register_buffer("pos", sincos(D, self.g))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.blocks = nn.ModuleList(Block(D, heads) for _ in range(depth))
        self.taps, self.scales = [1, 3, depth - 3, depth - 1], [4, 2, 1, 0.5]
        self.norms = nn.ModuleList(nn.LayerNorm(D, eps=1e-6) for _ in self.taps)
        self.decoders = nn.ModuleList(Decoder(D, d, self.g, s, 3 * nbins) for s in self.scales)
        sobel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
        self.register_buffer("sobel", torch.stack([sobel, sobel.t()]).unsqueeze(1))

    @torch.no_grad()
    def hog(self, x):
        """HOG targets of every scale from one histogram: each cell size is average-pooled from the previous one."""
        B, C, H, W = x.shape
        g = F.conv2d(F.pad(x.reshape(B * C, 1, H, W), (1, 1, 1, 1), mode="reflect"), self.sobel)
        mag = g.norm(dim=1)
        b = (torch.floor(torch.atan2(g[:, 0], g[:, 1]) / math.pi * self.nbins).long() % self.nbins)
        hist = torch.zeros(B * C, self.nbins, H, W).scatter_(1, b.unsqueeze(1), mag.unsqueeze(1))
        out, prev = {}, (1, hist)
        for cell in sorted(int(self.p / s) for s in self.scales):
            hist = F.avg_pool2d(prev[1], cell // prev[0], cell // prev[0])
            prev = (cell, hist)
            out[cell] = F.normalize(hist, dim=1).reshape(B, C * self.nbins, -1).transpose(1, 2)
        return out

    def forward(self, imgs, mask_ratio=0.75):
        x = self.patch_embed(imgs).flatten(2).transpose(1, 2) + self.pos[:, 1:]
        B, L, D = x.shape
        keep = int(L * (1 - mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(B, L), 1)
        ids_restore = torch.argsort(ids_shuffle, 1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(B, L)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore).reshape(B, 1, self.g, self.g)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], 1)
        targets = self.hog(imgs)
        loss = 0
        for i, blk in enumerate(self.blocks[: self.taps[-1] + 1]):
            x = blk(x)
            if i in self.taps:
                k = self.taps.index(i)
                s = self.scales[k]
                pred = self.decoders[k](self.norms[k](x), ids_restore)
                target = targets[int(self.p / s)]
                m = (F.interpolate(mask, scale_factor=s, mode="nearest") if s >= 1 else F.avg_pool2d(mask, 2)).flatten(1)
                loss = loss + (((pred - target) ** 2).mean(-1) * m).sum() / m.sum()
        return loss


SIZES = {"vit-tiny": (192, 12, 3), "vit-base": (768, 12, 12)}


def blas_in_use():
    """The library whose sgemm torch calls: on Linux the one libtorch_cpu's lookup finds (its dependency order), else
    torch's build setting; and whether it is the reference BLAS (Debian's /usr/lib/<arch>/blas/), about 20x slower
    than an optimised one and so no fair peer."""
    built = next((x.split("=")[1].strip(", ") for x in torch.__config__.show().split() if x.startswith("BLAS_INFO=")), "unknown")
    libs = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libtorch_cpu" in line}) if os.path.exists("/proc/self/maps") else []
    if not libs:
        return f"{built} (torch's build)", False

    class Info(ctypes.Structure):
        _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]

    try:
        sgemm = ctypes.CDLL(libs[0], mode=os.RTLD_NOLOAD).sgemm_
    except (OSError, AttributeError):
        return f"{built} (torch's build)", False
    info = Info()
    ctypes.CDLL(None).dladdr(ctypes.cast(sgemm, ctypes.c_void_p), ctypes.byref(info))
    path = os.path.realpath(info.fname.decode())
    return path, f"{os.sep}blas{os.sep}" in path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--model", choices=list(SIZES), default="vit-tiny")
    ap.add_argument("--img", type=int, default=64)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: fp32 eager with TF32 off")
    a = ap.parse_args()
    torch.set_num_threads(a.torch_threads)
    blas, reference = blas_in_use()
    if reference and a.device == "cpu":
        raise SystemExit(f"torch runs the reference BLAS ({blas}), about 20x slower than OpenBLAS: no fair peer; "
                         "apt-get install libopenblas0-pthread")
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    D, depth, heads = SIZES[a.model]
    model = LocalMIM(img=a.img, p=a.patch, D=D, depth=depth, heads=heads).to(a.device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith(".bias")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not n.endswith(".bias"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=1e-4, betas=(0.9, 0.95))
    imgs = torch.randn(a.batch, 3, a.img, a.img, device=a.device)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        model(imgs).backward()
        opt.step()
        sync()

    step(), step()
    steps, t0 = 0, time.perf_counter()
    while steps < 3 or (time.perf_counter() - t0 < a.seconds and steps < 100):
        step()
        steps += 1
    s = (time.perf_counter() - t0) / steps
    print(json.dumps({"bench": "pretrain-step-peer", "framework": f"torch {torch.__version__}", "device": a.device, "model": a.model, "img": a.img, "batch": a.batch, "torchThreads": a.torch_threads, "blas": blas, "stepsPerS": round(1 / s, 4), "imagesPerS": round(a.batch / s, 2), "peakRssMB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


if __name__ == "__main__":
    main()
