"""The one training loop, for a run of the app (one process, JSON-line events) and for a scale-out job (DDP, any
number of processes): the same steps, schedule, accumulation, seeded data, checkpoints and cadence either way; only
what reports them differs (cli.py). What it trains is its job: Pretraining (here) or finetune.Finetuning."""
import contextlib
import math
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn

from .checkpoint import load_checkpoint, read_safetensors, save_checkpoint, write_safetensors
from .data import HandedOver, Masked, MicroBatches
from .model import LocalMIM
from .swin import SwinLocalMIM


def pretraining_model(m):
    """The pretraining model of the resolved model's family."""
    return (SwinLocalMIM if m['family'] == 'swin' else LocalMIM)(m)


def lr_at(e, o, world):
    """Linear warmup from 0, then half-cosine down to minLr, at fractional epoch e (every iteration). The peak is the
    app's for one process; blr's scales with the processes' images (`lrScalesWithWorld`), an absolute lr does not."""
    peak = o['peakLr'] * (world if o['lrScalesWithWorld'] else 1)
    if e < o['warmupEpochs']:
        return peak * e / o['warmupEpochs']
    progress = min(1.0, (e - o['warmupEpochs']) / max(o['epochs'] - o['warmupEpochs'], 1e-12))
    return o['minLr'] + (peak - o['minLr']) * 0.5 * (1 + math.cos(math.pi * progress))


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


def amp_dtype(device):
    """bfloat16 where the device has it (no loss scaling needed), else float16."""
    return torch.bfloat16 if device.type == 'cuda' and torch.cuda.is_bf16_supported() else torch.float16


def optimizer_step(net, opt, scaler, micro, accum, amp, device, no_sync=None, host_noise=False):
    """One AdamW step over `accum` micro-batches (images, noise), the loss divided by `accum` as the official loop;
    `no_sync` (DDP) skips the gradient all-reduce of all but the last; `host_noise`: the noise stays on the host (Swin
    plans its windows there). Returns the per-scale losses [S], unread."""
    total = 0
    for a, (images, noise) in enumerate(micro):
        with contextlib.nullcontext() if no_sync is None or a == accum - 1 else no_sync():
            with torch.autocast(device.type, dtype=amp_dtype(device)) if amp else contextlib.nullcontext():
                noise = noise if host_noise else noise.to(device, non_blocking=True)
                losses = torch.stack(net(images.to(device, non_blocking=True), noise)).float()
            scaler.scale(losses.sum() / accum).backward()
        total = total + losses.detach() / accum
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return total


def set_lr(opt, lr):
    """The step's learning rate on every group, times the group's `lr_scale` (fine-tuning's layer decay)."""
    for group in opt.param_groups:
        group['lr'] = lr * group.get('lr_scale', 1.0)


class Pretraining:
    """Pretraining as a job of the loop: the LocalMIM model of either family, AdamW with timm's two groups, masked
    micro-batches of crops (a Swin's batch shares one mask, its windows planned on the host); its step's losses are per
    scale."""
    per_scale = True

    def __init__(self, spec, device):
        self.m, self.schedule = spec['model'], spec['optim']
        self.swin = self.m['family'] == 'swin'
        self.model = pretraining_model(self.m).to(device)
        self.opt = make_optimizer(self.model, self.schedule)
        self.unused = self.model.unused  # parameters no loss reaches (DDP must know)
        self.crops = {}
        self.evaluate = None

    def batches(self, data, micro, steps_per_epoch):
        return Masked(data, self.m['units'] if self.swin else self.m['L'], micro, steps_per_epoch, shared=self.swin)

    def step(self, net, scaler, micro, step, amp, device, no_sync):
        return optimizer_step(net, self.opt, scaler, micro, self.schedule['accumIter'], amp, device, no_sync, self.swin)


def engine_device(name=None):
    """(device, its description): the one asked for, else the first CUDA device, else MPS, else the CPU."""
    mps = getattr(torch.backends, 'mps', None)
    name = name or ('cuda:0' if torch.cuda.is_available() else 'mps' if mps is not None and mps.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        return device, f'{name} {torch.cuda.get_device_name(device)}'
    return device, name


def setup(name=None):
    """(rank, world, device, its description): torch.distributed from env:// when WORLD_SIZE is set (torchrun sets it
    too), each process on its LOCAL_RANK's GPU; else one process on `name` or the best device here."""
    if 'WORLD_SIZE' not in os.environ:
        return (0, 1, *engine_device(name))
    world, rank = int(os.environ['WORLD_SIZE']), int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', rank % max(torch.cuda.device_count(), 1)))
    device, described = engine_device(f'cuda:{local}' if torch.cuda.is_available() else 'cpu')
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', init_method='env://', rank=rank, world_size=world)
    return rank, world, device, described


@torch.no_grad()
def write_preview(model, probes, path):
    """The predictions and targets of the fixed probe images under their fixed mask, for the app to draw."""
    images, noise = probes
    preds, targets, mask = model.reconstruct(images, noise)
    tensors = {'mask': mask, **{f'pred.{k}': p for k, p in enumerate(preds)}, **{f'target.{k}': t for k, t in enumerate(targets)}}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_safetensors(path, tensors, {})


@torch.no_grad()
def write_features(model, images, batch, device, path):
    """The backbone's features [N, D] of images [N, H, W, 3] the app decoded (its evaluation transform), `batch` at a
    time on `device`, in float32: what the app embeds, scores the kNN monitor on and probes with."""
    parts = [model.features(images[i:i + batch].permute(0, 3, 1, 2).to(device, non_blocking=True)).float().cpu()
             for i in range(0, images.shape[0], batch)]
    write_safetensors(path, {'features': torch.cat(parts)}, {})


def train(spec, report, stop, Task=Pretraining):
    """Trains the job `spec` describes (core/runs/torch.ts torchSpec or torchFinetuneSpec, and where its images, its
    start and its checkpoints are) as a `Task` (Pretraining, finetune.Finetuning) from its start checkpoint to the end
    of its schedule, or to `stopAtStep`, or until `stop` is set (pause): a checkpoint at the end, on the cadence and at
    each epoch end, where a task that evaluates is scored first (and at step 0 with `evaluateFirst`). `report` hears
    every event."""
    m, seed = spec['model'], spec['seed']
    rank, world, device, described = setup(spec.get('device'))
    if spec.get('amp') and device.type != 'cuda':
        raise ValueError('--amp needs a CUDA GPU')
    task = Task(spec, device)
    model, opt, o = task.model, task.opt, task.schedule
    step = load_checkpoint(spec['start'], model, opt)['step']
    ddp = world > 1
    net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=task.unused) if ddp else model
    no_sync = net.no_sync if ddp else None
    if spec.get('compile') and hasattr(torch, 'compile'):
        net = torch.compile(net)
    amp = bool(spec.get('amp'))
    scaler = torch.cuda.amp.GradScaler(enabled=amp and amp_dtype(device) == torch.float16)

    handed = os.environ.get('LOCALMIM_TORCH_BATCHES')
    items = spec['items']
    data = (HandedOver(handed, seed) if handed else
            MicroBatches(spec.get('root', ''), items, m['imgSize'], o['batch'], seed, **task.crops))
    accum = o['accumIter']
    micro = accum * world  # micro-batches per optimizer step, over all processes
    steps_per_epoch = len(items) // o['batch'] // micro
    if steps_per_epoch < 1:
        raise ValueError(f'{len(items)} images: fewer than one step of {o["batch"] * micro} ({world} processes)')
    total = o['epochs'] * steps_per_epoch
    stop_at = min(total, spec.get('stopAtStep') or total)
    images = o['batch'] * micro
    probes = None
    if spec.get('previewEvery'):
        t = read_safetensors(spec['probes'])[0]
        probes = (t['images'].permute(0, 3, 1, 2).to(device), t['noise'].to(device))
    report.start(step=step, total=total, steps_per_epoch=steps_per_epoch, device=described, world=world, rank=rank,
                 start=spec['start'])

    cadence = spec.get('cadence', {})
    pending, losses_since, last_save, since = [], [], time.time(), time.time()
    evaluated = None  # (step, top1) of the last evaluation
    # The kNN monitor (`knn`: the probe set's images, and `every` N steps or within `budget` of the time): the app
    # scores the features it is handed, while training goes on.
    knn = spec.get('knn') if rank == 0 else None
    knn_images = read_safetensors(knn['images'])[0]['images'] if knn else None
    knn_seconds, last_knn, knn_step, started = 0.0, 0.0, -1, time.time()

    def knn_due():
        if not knn:
            return False
        if knn['every'] is not None:
            return step % knn['every'] == 0
        # Within budget once the next extraction, costing as much as the last, is done.
        return knn_seconds + last_knn <= knn['budget'] * (time.time() - started - knn_seconds)

    def monitor():
        nonlocal knn_seconds, last_knn, knn_step
        if not knn or knn_step == step:
            return
        flush()
        t0 = time.time()
        path = os.path.join(spec['out'], f'knn-{step}.safetensors')
        write_features(model, knn_images, knn['batch'], device, path)
        last_knn, knn_step = time.time() - t0, step
        knn_seconds += last_knn
        report.features(step, path, last_knn)

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
            report.step({'type': 'step', 'step': at, 'epoch': at / steps_per_epoch, 'samples': at * images,
                         'loss': sum(losses), 'losses': losses if task.per_scale else [], 'lr': lr,
                         'imagesPerS': images / seconds}, total)
        pending = []

    def evaluate():
        nonlocal evaluated
        flush()
        top1, loss = task.evaluate()
        evaluated = (step, top1)
        if rank == 0:
            report.eval({'type': 'eval', 'step': step, 'epoch': step / steps_per_epoch, 'top1': top1, 'loss': loss})

    def checkpoint(last=False):
        nonlocal losses_since, last_save
        flush()
        if rank == 0:
            loss = sum(losses_since) / len(losses_since) if losses_since else None
            state = {'step': step, 'epoch': step / steps_per_epoch, 'loss': loss, 'config': spec['config']}
            path = os.path.join(spec['out'], f'ckpt-{step:07d}.safetensors')
            save_checkpoint(path, model, opt, state)
            report.checkpoint(path, state, evaluated[1] if evaluated and evaluated[0] == step else None)
        if knn and (last or knn['every'] is not None or knn_due()):
            monitor()
        losses_since, last_save = [], time.time()

    if step == 0:
        monitor()
        if spec.get('evaluateFirst') and task.evaluate:
            evaluate()
            checkpoint()

    while step < stop_at:
        epoch, j0 = divmod(step, steps_per_epoch)
        # This process's micro-batches of the epoch's remaining steps: u = j·micro + a·world + rank within a step.
        data.keys = [(epoch, j * micro + a * world + rank) for j in range(j0, min(steps_per_epoch, j0 + stop_at - step))
                     for a in range(accum)]
        loader = torch.utils.data.DataLoader(task.batches(data, micro, steps_per_epoch), batch_size=None,
                                             num_workers=spec.get('workers', 0), pin_memory=device.type == 'cuda')
        batches = iter(loader)
        for j in range(j0, j0 + len(data.keys) // accum):
            lr = lr_at(epoch + j / steps_per_epoch, o, world)
            set_lr(opt, lr)
            if not pending:
                since = time.time()
            losses = task.step(net, scaler, (next(batches) for _ in range(accum)), step, amp, device, no_sync)
            if ddp:
                dist.all_reduce(losses)
                losses /= world
            step += 1
            pending.append((step, lr, losses))
            if len(pending) >= spec.get('readEvery', 1):
                flush()
            if probes is not None and (step == 1 or step % spec['previewEvery'] == 0):
                write_preview(model, probes, os.path.join(spec['out'], 'previews', str(step), 'arrays.safetensors'))
                flush()
                report.preview(step)
            if knn_due():
                monitor()
            if step % steps_per_epoch == 0 and task.evaluate:
                evaluate()
            stopping = stop.is_set() or step == stop_at
            due = (step % steps_per_epoch == 0 or (cadence.get('everySteps') and step % cadence['everySteps'] == 0)
                   or (cadence.get('everyMinutes') and time.time() - last_save > cadence['everyMinutes'] * 60))
            if stopping or due:
                checkpoint(stopping)
            if stopping:
                break
        if stop.is_set():
            break
    flush()
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    report.end('finished' if step == total else 'paused', step)
