#!/usr/bin/env bash
# The GPU check, on a machine with an NVIDIA GPU, PyTorch with CUDA, no internet and maybe no Node. Prepare
# .gpu/ here first with bench/gpu-pack.sh, then run on the device machine, from the repository root:
#   bash bench/gpu-device.sh            (device tool: carry [".gpu"], timeout_s 600)
# It prints the WebGPU adapter, the webgpu pretraining step for vit-tiny/64/p8/b32 and vit-base/224/p16/b64,
# and PyTorch's fp32 step (eager, TF32 off) on the same GPU, with the ratios.
set -uo pipefail
cd "$(dirname "$0")/.."
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
bench 200 --model vit-tiny --img 64 --patch 8 --batch 32 --seconds 30
bench 330 --model vit-base --img 224 --patch 16 --batch 64 --seconds 60
