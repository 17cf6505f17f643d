"""One AdamW step of the job's trainer (core/torch/train.py) on weights, images and mask noise handed over by the
test: `one_step.py TRAIN_PY SPEC IN OUT` (SPEC: the job spec, core/engine.ts torchSpec). IN holds the model's state dict, `batch.images` [B, H, W, 3] (0–255)
and `batch.noise` [B, L], with the learning rate in its metadata; OUT gets the per-scale losses (`losses`), the
updated state dict and the moments (`optimizer.<slot>.<name>`)."""
import importlib.util
import json
import sys

train_py, config_file, src, dst = sys.argv[1:5]
spec = importlib.util.spec_from_file_location('train', train_py)
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
import torch  # noqa: E402

spec = json.load(open(config_file))
tensors, meta = train.read_safetensors(src)
model = train.LocalMIM(spec['model'])
model.load_state_dict({n: t for n, t in tensors.items() if not n.startswith('batch.')})
opt = train.make_optimizer(model, spec['optim'])
for group in opt.param_groups:
    group['lr'] = float(meta['lr'])
losses = torch.stack(model(tensors['batch.images'].permute(0, 3, 1, 2), tensors['batch.noise']))
losses.sum().backward()
opt.step()
out = dict(model.state_dict())
out['losses'] = losses.detach()
for name, p in model.named_parameters():
    for slot in ('exp_avg', 'exp_avg_sq'):
        out[f'optimizer.{slot}.{name}'] = opt.state[p][slot]
train.write_safetensors(dst, out, {})
