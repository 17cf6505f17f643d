"""The torch engine's speed (core/torch/train.py, as the app runs it): its data loader alone, in images/s, and its
pretraining step on synthetic batches already on the device, in fp32 and (CUDA) bf16, and bf16's effect on the loss
(CUDA); with --finetune, its ViT fine-tuning loader (the recipe's augmentation) and step (fp32, bf16), and its
embedding's images/s; with --swin, a Swin's pretraining step (fp32, bf16). One JSON line per result.

    python3 bench/torch-engine.py --spec SPEC.json

SPEC is the engine's job spec of the app's default run at one size, resolved by the app (bench/torch-spec.ts; bench/
gpu-pack.sh writes .gpu/spec-*.json). The loader reads JPEGs it writes first (photo-sized, 500 × 375).
"""
import argparse
import importlib.util
import json
import os
import tempfile
import time

import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location('train', os.path.join(HERE, '..', 'core', 'torch', 'train.py'))
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
from localmim_torch.augment import FinetuneAugment  # noqa: E402
from localmim_torch.data import Labeled  # noqa: E402


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def bench_loader(spec, n_images, workers, batches, device):
    """images/s of the engine's DataLoader for the spec's job (decode, crop, resize, flip, then the mask noise or the
    fine-tuning recipe's RandAugment and random erasing; pinned copy to the device)."""
    c, o = spec['model'], spec['optim' if spec['kind'] == 'pretrain' else 'finetune']
    with tempfile.TemporaryDirectory() as tmp:
        g = torch.Generator().manual_seed(0)
        for i in range(n_images):
            # Smooth colour fields with noise: JPEGs that decode like photos, not like flat colour.
            base = torch.rand(3, 12, 16, generator=g)
            img = torch.nn.functional.interpolate(base[None], size=(375, 500), mode='bilinear', align_corners=False)[0]
            img = (img * 200 + torch.rand(3, 375, 500, generator=g) * 55).clamp(0, 255).byte().permute(1, 2, 0).numpy()
            Image.fromarray(img).save(os.path.join(tmp, f'{i:05d}.jpg'), quality=90)
        items = [{'path': os.path.join(tmp, f'{i:05d}.jpg'), 'label': 0} for i in range(n_images)]
        per_epoch = n_images // o['batch']
        if spec['kind'] == 'pretrain':
            data = train.MicroBatches('', items, c['imgSize'], o['batch'], spec['seed'])
            batched = train.Masked(data, c['L'], 1, per_epoch)
        else:
            data = train.MicroBatches('', items, c['imgSize'], o['batch'], spec['seed'], o['minScale'], o['kernel'], FinetuneAugment(o))
            batched = Labeled(data)
        data.keys = [(e, i) for e in range(batches // per_epoch + 1) for i in range(per_epoch)][:batches]
        loader = torch.utils.data.DataLoader(batched, batch_size=None, num_workers=workers, pin_memory=device.type == 'cuda')
        it = iter(loader)
        for _ in range(min(workers * 2, batches // 4)):  # workers started and their first batches made
            next(it)
        t0, n = time.time(), 0
        for images, _ in it:
            images.to(device, non_blocking=True)
            n += images.shape[0]
        sync(device)
        return n / (time.time() - t0)


def bench_step(spec, device, amp, steps, warmup):
    """Seconds per optimizer step of the engine's own step (train.optimizer_step) on batches on the device; a Swin's
    includes planning its windows from the mask on the host, as every step of a run does."""
    c, o = spec['model'], spec['optim']
    torch.manual_seed(0)
    model = train.pretraining_model(c).to(device)
    opt = train.make_optimizer(model, o)
    for group in opt.param_groups:
        group['lr'] = 1e-4
    scaler = torch.cuda.amp.GradScaler(enabled=amp and train.amp_dtype(device) == torch.float16)
    B, side = o['batch'], c['imgSize']
    images = torch.rand(B, 3, side, side, device=device) * 255
    swin = c['family'] == 'swin'
    noise = torch.rand(1, c['units']) if swin else torch.rand(B, c['L'], device=device)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.time()
        losses = train.optimizer_step(model, opt, scaler, [(images, noise)], 1, amp, device, host_noise=swin)
    float(losses.sum())
    return (time.time() - t0) / steps


def bench_finetune(spec, device, amp, steps, warmup):
    """Seconds per fine-tuning step (finetune.finetune_step: Mixup/CutMix, drop path, layer decay) on a batch on the
    device."""
    from localmim_torch import finetune
    c, f = spec['model'], spec['finetune']
    torch.manual_seed(0)
    model = finetune.classifier(c, spec['classes']).to(device)
    opt = finetune.make_optimizer(model, f, spec['groups'])
    train.set_lr(opt, 1e-4)
    scaler = torch.cuda.amp.GradScaler(enabled=amp and train.amp_dtype(device) == torch.float16)
    B, side = f['batch'], c['imgSize']
    batch = (torch.rand(B, 3, side, side, device=device) * 255, torch.randint(0, spec['classes'], (B,), device=device))
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.time()
        loss = finetune.finetune_step(model, opt, scaler, [batch], f, 0, i, spec['classes'], device, amp)
    float(loss)
    return (time.time() - t0) / steps


@torch.no_grad()
def bench_embed(spec, device, batches, warmup):
    """images/s of the embedding's forward pass (model.Encoder.features) on batches on the device."""
    from localmim_torch.model import Encoder
    c, B = spec['model'], spec['finetune']['batch']
    model = Encoder(c).to(device).eval()
    images = torch.rand(B, 3, c['imgSize'], c['imgSize'], device=device) * 255
    for i in range(warmup + batches):
        if i == warmup:
            sync(device)
            t0 = time.time()
        out = model.features(images)
    float(out.sum())
    return B * batches / (time.time() - t0)


def amp_losses(spec, device, steps):
    """Mixed precision's effect on the loss, measured rather than assumed: the same init and the same batches trained
    `steps` steps in fp32 and under autocast; the relative gap of each step's loss."""
    c, o = spec['model'], spec['optim']
    B, side, L = o['batch'], c['imgSize'], c['L']
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(B, 3, side, side, generator=g) * 255, torch.rand(B, L, generator=g)) for _ in range(steps)]
    runs = []
    for amp in (False, True):
        torch.manual_seed(0)
        model = train.LocalMIM(c).to(device)
        opt = train.make_optimizer(model, o)
        for group in opt.param_groups:
            group['lr'] = 1e-4
        scaler = torch.cuda.amp.GradScaler(enabled=amp and train.amp_dtype(device) == torch.float16)
        runs.append([float(train.optimizer_step(model, opt, scaler, [(x.to(device), m.to(device))], 1, amp, device).sum())
                     for x, m in batches])
    gaps = [abs(a - b) / abs(a) for a, b in zip(*runs)]
    return {'steps': steps, 'fp32': [round(x, 5) for x in runs[0]], 'amp': [round(x, 5) for x in runs[1]],
            'maxRelGap': round(max(gaps), 5), 'lastRelGap': round(gaps[-1], 5)}


def precisions(device):
    return [False, True] if device.type == 'cuda' else [False]


def steps(spec, bench, device, described, args):
    """The pretraining step of `spec` in each precision: one line each."""
    c, batch = spec['model'], spec['optim']['batch']
    what = {'model': c['size'], 'img': c['imgSize'], 'patch': c['patchSize'], 'batch': batch, 'device': described}
    for amp in precisions(device):
        seconds = bench_step(spec, device, amp, args.steps, args.warmup)
        precision = str(train.amp_dtype(device)).replace('torch.', '') if amp else 'fp32'
        print(json.dumps({'bench': bench, 'precision': precision, 'msPerStep': round(seconds * 1000, 2),
                          'stepsPerS': round(1 / seconds, 2), 'imagesPerS': round(batch / seconds, 1), **what}), flush=True)
        if device.type == 'cuda':
            torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--spec', required=True, help='the job spec at the benched size (bench/torch-spec.ts)')
    ap.add_argument('--finetune', help='a fine-tuning job spec (bench/torch-spec.ts ... finetune): its steps and embedding')
    ap.add_argument('--swin', help="a Swin pretraining job spec (bench/torch-spec.ts swin-b ...): its steps")
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument('--images', type=int, default=512, help='JPEGs the loader reads')
    ap.add_argument('--loader-batches', type=int, default=40)
    args = ap.parse_args()
    spec = json.load(open(args.spec))
    c, batch = spec['model'], spec['optim']['batch']
    device, described = train.engine_device(None)
    what = {'model': c['size'], 'img': c['imgSize'], 'patch': c['patchSize'], 'batch': batch, 'device': described}
    print(json.dumps({'bench': 'torch', 'torch': torch.__version__, **what}), flush=True)
    rate = bench_loader(spec, args.images, args.workers, args.loader_batches, device)
    print(json.dumps({'bench': 'torch-loader', 'workers': args.workers, 'imagesPerS': round(rate, 1), **what}), flush=True)
    steps(spec, 'torch-step', device, described, args)
    if args.swin:
        steps(json.load(open(args.swin)), 'torch-swin-step', device, described, args)
    if device.type == 'cuda':
        precision = str(train.amp_dtype(device)).replace('torch.', '')
        print(json.dumps({'bench': 'torch-amp-loss', 'precision': precision, **amp_losses(spec, device, args.steps), **what}), flush=True)
    if args.finetune:
        ft = json.load(open(args.finetune))
        c = ft['model']
        what = {'model': c['size'], 'img': c['imgSize'], 'patch': c['patchSize'], 'batch': ft['finetune']['batch'], 'device': described}
        rate = bench_loader(ft, args.images, args.workers, args.loader_batches, device)
        print(json.dumps({'bench': 'torch-finetune-loader', 'workers': args.workers, 'imagesPerS': round(rate, 1), **what}), flush=True)
        for amp in precisions(device):
            seconds = bench_finetune(ft, device, amp, args.steps, args.warmup)
            precision = str(train.amp_dtype(device)).replace('torch.', '') if amp else 'fp32'
            print(json.dumps({'bench': 'torch-finetune-step', 'precision': precision, 'stepsPerS': round(1 / seconds, 2), **what}), flush=True)
        rate = bench_embed(ft, device, args.steps, args.warmup)
        print(json.dumps({'bench': 'torch-embed', 'precision': 'fp32', 'imagesPerS': round(rate, 1), **what}), flush=True)


if __name__ == '__main__':
    main()
