#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, PyTorch with CUDA, no internet and maybe no Node. Prepare
# .gpu/ here first with bench/gpu-pack.sh, then run on the device machine, from the repository root:
#   bash bench/gpu-device.sh            (device tool: carry [".gpu"], timeout_s 600)
# It prints the torch engine's loader images/s, its vit-base/224/p16/b64 pretraining and fine-tuning steps in fp32 and
# bf16, bf16's effect on the loss (the same init and batches, step by step), its embedding images/s and its
# swin-b/224/p4/b64 pretraining steps in fp32 and bf16 (bench/torch-engine.py), the WebGPU adapter, the webgpu
# pretraining step for vit-tiny/64/p8/b32 and vit-base/224/p16/b64, PyTorch's plain fp32 step (bench/peer.py) on the
# same GPU, and the ratio webgpu / torch engine fp32. LOCALMIM_BENCH_TINY=1 runs the torch engine's part only, at a
# tiny size, on any machine with torch.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
if [ ! -f .gpu/spec-swin-tiny.json ]; then  # the engine's job specs, where bench/gpu-pack.sh did not write them
  mkdir -p .gpu && npx tsx bench/torch-spec.ts vit-base 224 16 64 > .gpu/spec-vit-base.json &&
    npx tsx bench/torch-spec.ts vit-tiny 32 8 8 > .gpu/spec-tiny.json &&
    npx tsx bench/torch-spec.ts vit-base 224 16 64 finetune > .gpu/finetune-vit-base.json &&
    npx tsx bench/torch-spec.ts vit-tiny 32 8 8 finetune > .gpu/finetune-tiny.json &&
    npx tsx bench/torch-spec.ts swin-b 224 4 64 > .gpu/spec-swin-b.json &&
    npx tsx bench/torch-spec.ts swin-tiny 112 4 4 > .gpu/spec-swin-tiny.json
fi
python=$(command -v python3)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import torch' 2>/dev/null && python=/usr/bin/python3
python=${LOCALMIM_PYTHON:-$python}
if [ "${LOCALMIM_BENCH_TINY:-0}" = 1 ]; then
  size=(--spec .gpu/spec-tiny.json --finetune .gpu/finetune-tiny.json --swin .gpu/spec-swin-tiny.json --steps 3 --warmup 1
    --images 32 --loader-batches 8 --workers 1)
else
  size=(--spec .gpu/spec-vit-base.json --finetune .gpu/finetune-vit-base.json --swin .gpu/spec-swin-b.json --steps 30 --warmup 5)
fi
timeout 240 "$python" bench/torch-engine.py "${size[@]}" | tee "$out/torch.jsonl"
[ "${LOCALMIM_BENCH_TINY:-0}" = 1 ] && exit 0
[ -f .gpu/node.xz ] || { echo "no .gpu/: run bench/gpu-pack.sh here first, and carry .gpu"; exit 2; }
for f in .gpu/debs/*.deb; do dpkg -x "$f" /; done
ldconfig
xz -dc .gpu/node.xz > /tmp/node && chmod +x /tmp/node
# NVIDIA's Vulkan driver, where the container keeps it outside the loader's usual folders.
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -e "$nvidia_icd" ] && ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1; then
  export VK_DRIVER_FILES=$nvidia_icd VK_ICD_FILENAMES=$nvidia_icd
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' || true
bench() { timeout "$1" /tmp/node .gpu/bench/run.mjs --only step --backends webgpu --peer --peer-device cuda "${@:2}"; }
bench 120 --model vit-tiny --img 64 --patch 8 --batch 32 --seconds 20
bench 330 --model vit-base --img 224 --patch 16 --batch 64 --seconds 60 | tee "$out/webgpu.txt"
"$python" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for f in ('torch.jsonl', 'webgpu.txt') for l in open(f'{sys.argv[1]}/{f}') if l.startswith('{')]
torch = next((r for r in rows if r.get('bench') == 'torch-step' and r['precision'] == 'fp32'), None)
webgpu = next((r for r in rows if r.get('bench') == 'pretrain-step' and r.get('model') == 'vit-base'), None)
if torch and webgpu:
    ratio = webgpu['stepsPerS'] * torch['msPerStep'] / 1000
    print(json.dumps({'bench': 'webgpu-vs-torch-engine', 'model': 'vit-base', 'img': 224, 'batch': 64, 'ratio': round(ratio, 3),
                      'webgpuStepsPerS': webgpu['stepsPerS'], 'torchFp32MsPerStep': torch['msPerStep'], 'goal': 0.5}))
else:
    print('webgpu / torch engine: a step is missing, no ratio')
PY
