#!/usr/bin/env bash
# Packs what bench/gpu-device.sh needs on a GPU machine without internet, npm or (probably) Node into .gpu/
# (git-ignored; name it in the device tool's `carry`): this Node binary, the benchmark bundled with tfjs, Dawn's
# Node binding for linux-x64, and the Vulkan loader's Debian packages. Run here, from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/node_modules/webgpu/dist .gpu/debs
xz -T0 -6 -c "$(command -v node)" > .gpu/node.xz
# --splitting keeps the data bench (and the sharp it imports) in a chunk loaded only by `--only data`.
npx esbuild bench/run.ts --bundle --splitting --platform=node --format=esm --target=node20 --minify --log-level=warning \
  --external:webgpu --external:sharp --external:@tensorflow/tfjs-node --external:@tensorflow/tfjs-node-gpu \
  --external:@tensorflow/tfjs-backend-wasm --external:better-sqlite3 \
  --banner:js="import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);" \
  --out-extension:.js=.mjs --outdir=.gpu/bench
cp -r node_modules/webgpu/index.js node_modules/webgpu/package.json .gpu/node_modules/webgpu/
cp -r node_modules/webgpu/dist/linux-x64 .gpu/node_modules/webgpu/dist/
cp bench/peer.py .gpu/
# The torch engine's job specs at the benched sizes (bench/torch-engine.py has no sizes of its own).
npx tsx bench/torch-spec.ts vit-base 224 16 64 > .gpu/spec-vit-base.json
npx tsx bench/torch-spec.ts vit-tiny 32 8 8 > .gpu/spec-tiny.json
npx tsx bench/torch-spec.ts vit-base 224 16 64 finetune > .gpu/finetune-vit-base.json
npx tsx bench/torch-spec.ts vit-tiny 32 8 8 finetune > .gpu/finetune-tiny.json
npx tsx bench/torch-spec.ts swin-b 224 4 64 > .gpu/spec-swin-b.json
npx tsx bench/torch-spec.ts swin-tiny 112 4 4 > .gpu/spec-swin-tiny.json
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64-lists'
mkdir -p /tmp/amd64-lists/partial
apt-get $o update -qq
(cd .gpu/debs && apt-get $o download -qq libvulkan1)
du -sh .gpu
