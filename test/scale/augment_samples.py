"""The torch engine's fine-tuning augmentation (core/torch/localmim_torch/augment.py) of one image handed over by the
test: `augment_samples.py TRAIN_PY SPEC IN OUT`. SPEC is the job spec (core/engine.ts torchFinetuneSpec); IN holds
`image` [H, W, 3] (0–255) and the seeds of the samples' generators in its metadata (`seeds`); OUT gets each sample's
augmented image `sample.<seed>` [3, H, W] and the generator's next draw after it, `after` [seeds]."""
import importlib.util
import json
import sys

train_py, spec_file, src, dst = sys.argv[1:5]
spec = importlib.util.spec_from_file_location('train', train_py)
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from localmim_torch.augment import FinetuneAugment  # noqa: E402

f = json.load(open(spec_file))['finetune']
tensors, meta = train.read_safetensors(src)
image = Image.fromarray(tensors['image'].byte().numpy())
augment, out, after = FinetuneAugment(f), {}, []
for seed in json.loads(meta['seeds']):
    rng = train.Rng(seed)
    out[f'sample.{seed}'] = augment(image, rng)
    after.append(rng.next())
train.write_safetensors(dst, {**out, 'after': torch.tensor(after)}, {})
