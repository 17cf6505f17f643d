"""The kNN monitor's features on the torch engine (loop.py write_features, as the training loop calls it) of the
probe images a run was handed, with a checkpoint's weights: `probe_features.py TRAIN_PY SPEC CKPT OUT` (SPEC: the
run's torch-job.json)."""
import importlib.util
import json
import sys

train_py, spec_file, ckpt, dst = sys.argv[1:5]
spec = importlib.util.spec_from_file_location('train', train_py)
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
import torch  # noqa: E402

from localmim_torch.checkpoint import load_checkpoint  # noqa: E402
from localmim_torch.loop import pretraining_model, write_features  # noqa: E402

spec = json.load(open(spec_file))
model = pretraining_model(spec['model'])
load_checkpoint(ckpt, model, None)
knn = spec['knn']
write_features(model, train.read_safetensors(knn['images'])[0]['images'], knn['batch'], torch.device('cpu'), dst)
