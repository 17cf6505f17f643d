"""The command line of train.py: a scale-out job (the folder it was copied into), one run of the app (`--engine
SPEC`: pretraining or fine-tuning), the app's embeddings (`--embed SPEC`), or a feature (`--features IMAGE`); and the
two ways the one training loop reports."""
import argparse
import hashlib
import json
import os
import signal
import sys
import threading

import torch

from .checkpoint import checkpoints, load_checkpoint, read_safetensors
from .data import eval_image
from .finetune import Finetuning
from .loop import Pretraining, engine_device, pretraining_model, train, write_features
from .model import Encoder
from .swin import SwinEncoder


# The jobs of the one training loop, by the job spec's `kind`.
TASKS = {'pretrain': Pretraining, 'finetune': Finetuning}


def emit(event):
    sys.stdout.write(json.dumps(event) + '\n')
    sys.stdout.flush()


class Events:
    """The app's torch engine: every event a JSON line on stdout (core/runs/torch.ts reads them)."""

    def start(self, step, total, steps_per_epoch, device, **_):
        emit({'type': 'start', 'step': step, 'totalSteps': total, 'stepsPerEpoch': steps_per_epoch, 'device': device})

    def step(self, event, total):
        emit(event)

    def eval(self, event):
        emit(event)

    def checkpoint(self, path, state, top1=None):
        with open(path, 'rb') as f:
            blob = f.read()
        emit({'type': 'checkpoint', 'path': path, 'step': state['step'], 'epoch': state['epoch'], 'loss': state['loss'],
              'size': len(blob), 'hash': hashlib.sha256(blob).hexdigest(), **({} if top1 is None else {'top1': top1})})

    def preview(self, step):
        emit({'type': 'preview', 'step': step})

    def features(self, step, path, seconds):
        emit({'type': 'features', 'step': step, 'path': path, 'seconds': seconds})

    def end(self, status, step):
        emit({'type': 'end', 'status': status, 'step': step})


class JobFolder:
    """A scale-out job: on rank 0, metrics.jsonl (one step event a line), a line every N steps, the last `keep`
    checkpoints."""

    def __init__(self, job, print_every, keep):
        self.job, self.print_every, self.keep, self.rank = job, print_every, keep, 0
        self.metrics = os.path.join(job, 'metrics.jsonl')

    def start(self, step, world, rank, device, start, **_):
        self.rank = rank
        if rank:
            return
        print(f'starting at step {step} from {os.path.relpath(start, self.job)} on {world} process(es), {device}', flush=True)
        if os.path.exists(self.metrics):  # a resumed job recomputes the steps after its checkpoint
            kept = [line for line in open(self.metrics) if json.loads(line)['step'] <= step]
            open(self.metrics, 'w').writelines(kept)

    def step(self, event, total):
        if self.rank:
            return
        with open(self.metrics, 'a') as f:
            f.write(json.dumps(event) + '\n')
        if event['step'] % self.print_every == 0 or event['step'] == total:
            print(f'step {event["step"]}/{total} epoch {event["epoch"]:.2f} loss {event["loss"]:.4f} lr {event["lr"]:.3g} '
                  f'{event["imagesPerS"]:.1f} img/s', flush=True)

    def eval(self, event):
        pass

    def checkpoint(self, path, state, top1=None):
        for _, old in checkpoints(os.path.dirname(path))[: -self.keep]:
            os.remove(old)

    def preview(self, step):
        pass

    def end(self, status, step):
        pass


def stop_signal():
    """Set by SIGTERM or SIGINT (pause), or when the app's end of stdin closes (the job process is gone)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    return stop


def read_json(path):
    with open(path) as f:
        return json.load(f)


def job_spec(args):
    """The job folder's spec (spec.json: the app's resolved model and schedule), its images, where it starts (its
    last checkpoint, else init.safetensors) and the launch's options."""
    out = os.path.join(args.job, 'checkpoints')
    os.makedirs(out, exist_ok=True)
    found = checkpoints(out)
    with open(os.path.join(args.job, 'manifest.jsonl')) as f:
        items = [json.loads(line) for line in f]
    return {**read_json(os.path.join(args.job, 'spec.json')), 'items': items, 'out': out,
            'root': args.data or read_json(os.path.join(args.job, 'job.json'))['dataRoot'],
            'start': found[-1][1] if found else os.path.join(args.job, 'init.safetensors'),
            'cadence': {'everySteps': args.every_steps, 'everyMinutes': args.every_minutes},
            'stopAtStep': args.max_steps, 'workers': args.workers, 'amp': args.amp}


@torch.no_grad()
def features(args):
    """The backbone's feature of one image (the pretraining model's `features`), as `localmim features`."""
    m = read_json(os.path.join(args.job, 'spec.json'))['model']
    model = pretraining_model(m)
    load_checkpoint(args.weights or checkpoints(os.path.join(args.job, 'checkpoints'))[-1][1], model, None)
    f = model.features(eval_image(args.features, m['imgSize']).unsqueeze(0))[0]
    print(json.dumps({'shape': list(f.shape), 'values': f.tolist()}))


@torch.no_grad()
def embed(spec):
    """The backbone's features [N, D] of images the app decoded (its evaluation transform), on the best device here:
    `spec` names the resolved model, the backbone's tensors, the images [N, H, W, 3] (0–255) and the output file."""
    device, _ = engine_device(spec.get('device'))
    swin = spec['model']['family'] == 'swin'
    model = (SwinEncoder if swin else Encoder)(spec['model'])
    tensors = read_safetensors(spec['weights'])[0]
    missing = set(model.state_dict()) - set(tensors)
    if missing:
        family = 'Swin' if swin else 'ViT'
        raise ValueError(f'{spec["weights"]}: not a {family} backbone of this model (missing {sorted(missing)[:3]})')
    model.load_state_dict({n: tensors[n] for n in model.state_dict()})
    model.to(device).eval()
    write_features(model, read_safetensors(spec['images'])[0]['images'], spec['batch'], device, spec['out'])


def main(here):
    ap = argparse.ArgumentParser(description='LocalMIM pretraining with PyTorch DDP (a LocalMIM Studio job)')
    ap.add_argument('--job', default=here, help='the job folder (default: the one holding train.py)')
    ap.add_argument('--data', help="the images' root (default: the folder the job was written from)")
    ap.add_argument('--max-steps', type=int, help='stop after this many optimizer steps in total, with a checkpoint')
    ap.add_argument('--every-steps', type=int, default=1000, help='checkpoint every N steps (and at each epoch end)')
    ap.add_argument('--every-minutes', type=float, default=30, help='… or when this many minutes have passed')
    ap.add_argument('--keep', type=int, default=3, help='checkpoints kept in checkpoints/')
    ap.add_argument('--workers', type=int, default=4, help='data-loading processes per training process')
    ap.add_argument('--amp', action='store_true', help='automatic mixed precision (GPU only; off by default)')
    ap.add_argument('--print-every', type=int, default=20, help='print a line every N steps')
    ap.add_argument('--features', metavar='IMAGE', help="print the backbone's feature of IMAGE as JSON, and exit")
    ap.add_argument('--weights', metavar='CKPT', help='with --features: this checkpoint (default: the last one)')
    ap.add_argument('--engine', metavar='SPEC', help='train one run of the app, described by SPEC (JSON), reporting on stdout')
    ap.add_argument('--embed', metavar='SPEC', help="write the backbone's features of the images SPEC (JSON) names, and exit")
    args = ap.parse_args()
    # The errors as one line: CUDA out of memory, a lost device, a bad checkpoint, too few images.
    try:
        if args.features:
            features(args)
        elif args.embed:
            embed(read_json(args.embed))
        elif args.engine:
            spec = read_json(args.engine)
            train(spec, Events(), stop_signal(), TASKS[spec['kind']])
        else:
            train(job_spec(args), JobFolder(args.job, args.print_every, args.keep), threading.Event())
    except (RuntimeError, OSError, ValueError) as err:
        sys.stderr.write(str(err).strip().split('\n')[0] + '\n')
        sys.exit(1)
