"""Fine-tuning steps of the torch engine (core/torch/localmim_torch/finetune.py) on weights and batches handed over by
the test: `finetune_steps.py TRAIN_PY SPEC IN OUT`. SPEC is the job spec (core/engine.ts torchFinetuneSpec); IN holds
the classifier's state dict and per step `batch.<s>.images` [B, H, W, 3] (0–255, already augmented by the app) and
`batch.<s>.labels` [B], with each step's learning rate in its metadata (`lrs`); OUT gets the steps' losses and the
state dict after them (`final.<name>`)."""
import importlib.util
import json
import sys

train_py, spec_file, src, dst = sys.argv[1:5]
spec = importlib.util.spec_from_file_location('train', train_py)
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
import torch  # noqa: E402
from localmim_torch import finetune  # noqa: E402
from localmim_torch.loop import set_lr  # noqa: E402

job = json.load(open(spec_file))
tensors, meta = train.read_safetensors(src)
model = finetune.classifier(job['model'], job['classes'], job['finetune']['linearProbe'])
model.load_state_dict({n: t for n, t in tensors.items() if not n.startswith('batch.')})
opt = finetune.make_optimizer(model, job['finetune'], job['groups'], job['lars'])
scaler = torch.cuda.amp.GradScaler(enabled=False)
losses = []
for s, lr in enumerate(json.loads(meta['lrs'])):
    batch = (tensors[f'batch.{s}.images'].permute(0, 3, 1, 2), tensors[f'batch.{s}.labels'].long())
    set_lr(opt, lr)
    loss = finetune.finetune_step(model, opt, scaler, [batch], job['finetune'], job['seed'], s, job['classes'], torch.device('cpu'))
    losses.append(loss[0])
final = {f'final.{n}': t for n, t in model.state_dict().items()}
train.write_safetensors(dst, {'losses': torch.stack(losses), **final}, {})
