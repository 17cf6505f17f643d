"""The app's safetensors checkpoint format: the state dict, the optimizer's state (AdamW's moments, LARS's momentum)
under `optimizer.<slot>.<name>`, the training state as JSON in the metadata."""
import glob
import json
import os
import re
import struct

import torch


def write_safetensors(path, tensors, metadata):
    """F32 tensors, header padded to 8 bytes, written atomically: temp file, fsync, rename, fsync of the folder."""
    header, offset, blobs = {'__metadata__': metadata}, 0, []
    for name, t in tensors.items():
        blob = t.detach().to('cpu', torch.float32).contiguous().numpy().tobytes()
        header[name] = {'dtype': 'F32', 'shape': list(t.shape), 'data_offsets': [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(',', ':')).encode()
    text += b' ' * ((8 - (8 + len(text)) % 8) % 8)
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'wb') as f:
        f.write(struct.pack('<Q', len(text)) + text)
        for blob in blobs:
            f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def read_safetensors(path):
    with open(path, 'rb') as f:
        data = f.read()
    (n,) = struct.unpack('<Q', data[:8])
    header = json.loads(data[8:8 + n])
    metadata = header.pop('__metadata__', {})
    body = bytearray(data[8 + n:])
    tensors = {}
    for name, e in header.items():
        if e['dtype'] != 'F32':
            raise ValueError(f'{path}: {name} has dtype {e["dtype"]}; only F32 is supported')
        start, end = e['data_offsets']
        t = torch.frombuffer(body, dtype=torch.float32, offset=start, count=(end - start) // 4) if end > start else torch.zeros(0)
        tensors[name] = t.reshape(e['shape']).clone()
    return tensors, metadata


def slots(opt):
    """The optimizer's per-parameter state the app checkpoints: AdamW's moments, or LARS's momentum (its `slots`)."""
    return getattr(opt, 'slots', ('exp_avg', 'exp_avg_sq'))


def trained(model, opt):
    """The parameters the optimizer steps, by name (a linear probe steps its head only)."""
    stepped = {id(p) for group in opt.param_groups for p in group['params']}
    return [(name, p) for name, p in model.named_parameters() if id(p) in stepped]


def save_checkpoint(path, model, opt, state):
    tensors = dict(model.state_dict())
    steps = 0
    for slot in slots(opt):
        for name, p in trained(model, opt):
            s = opt.state.get(p, {})
            tensors[f'optimizer.{slot}.{name}'] = s.get(slot, torch.zeros_like(p))
            steps = max(steps, int(s.get('step', 0)))
    meta = {'format': 'localmim-checkpoint', 'version': '1', 'optimizer_step': str(steps), 'state': json.dumps(state)}
    write_safetensors(path, tensors, meta)


def load_checkpoint(path, model, opt):
    """Weights and, when the file has taken steps, the optimizer's moments; returns its training state."""
    tensors, meta = read_safetensors(path)
    if meta.get('format') != 'localmim-checkpoint':
        raise ValueError(f'{path}: not a LocalMIM checkpoint')
    weights = {n: t for n, t in tensors.items() if not n.startswith('optimizer.')}
    missing = set(model.state_dict()) - set(weights)
    unknown = set(weights) - set(model.state_dict())
    if missing or unknown:
        raise ValueError(f'{path}: does not fit the job\'s model (missing {sorted(missing)[:3]}, unknown {sorted(unknown)[:3]})')
    model.load_state_dict(weights)
    steps = int(meta.get('optimizer_step', '0'))
    if opt is not None and steps > 0:
        for name, p in trained(model, opt):
            opt.state[p] = {'step': torch.tensor(float(steps)),
                            **{slot: tensors[f'optimizer.{slot}.{name}'].to(p.device) for slot in slots(opt)}}
    return json.loads(meta['state'])


def checkpoints(out):
    found = [(int(re.search(r'(\d+)\.safetensors$', f).group(1)), f) for f in glob.glob(os.path.join(out, 'ckpt-*.safetensors'))]
    return sorted(found)

