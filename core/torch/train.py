#!/usr/bin/env python3
"""LocalMIM pretraining in PyTorch, with DistributedDataParallel: the trainer of LocalMIM Studio, for many GPUs.

The same model and parameter names, targets, masks, losses, AdamW groups, schedule, accumulation and seeded data
order as the app (docs/method.md in its repository); checkpoints in the app's safetensors checkpoint format, so
`localmim scale-in` brings the job back as a run. Needs only torch and pillow; the code is the package beside this
file (localmim_torch/).

    python3 train.py                       # one process (RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT for more)
    torchrun --nproc_per_node 8 train.py   # one node, eight GPUs
    python3 train.py --features IMAGE      # the backbone's feature of an image, from the last checkpoint

The job folder holds spec.json (the model and schedule, resolved by the app), config.json (the run config),
manifest.jsonl (images under the data root), init.safetensors (the starting weights, and the optimizer state when a
run is continued) and job.json (where the data was).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# The package's working parts, by name, for whoever imports this file (the tests, bench/torch-engine.py).
from localmim_torch.checkpoint import read_safetensors, write_safetensors  # noqa: E402,F401
from localmim_torch.cli import main  # noqa: E402
from localmim_torch.data import STREAMS, Masked, MicroBatches, Rng, random_crop, read_rgb, seed_for  # noqa: E402,F401
from localmim_torch.loop import amp_dtype, engine_device, make_optimizer, optimizer_step, pretraining_model, set_lr  # noqa: E402,F401
from localmim_torch.model import LocalMIM  # noqa: E402,F401

if __name__ == '__main__':
    main(HERE)
