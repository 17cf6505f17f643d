import { spawnSync } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { modelDims, modelFamily, peakLr, swinDims, type ModelConfig, type RunConfig } from './config.js';
import { parseRandAugment } from './data/randaugment.js';
import { PROBE_LARS, type FinetuneRun } from './finetune-config.js';
import { cropKernel } from './recipe.js';

/** What trains a run: tfjs in the job process (built in), or core/torch/train.py on a Python with torch. */
export const ENGINES = ['tfjs', 'torch'] as const;
export type Engine = (typeof ENGINES)[number];
export type EngineChoice = Engine | 'auto';

/** The torch engine's Python package and its entry point, train.py: what a scale-out job folder copies whole. */
export const TORCH_ENGINE = fileURLToPath(new URL('./torch/', import.meta.url));

/** The oldest torch train.py runs on (stable argsort, AdamW's tensor step). */
const MIN_TORCH: [number, number] = [1, 13];

export interface TorchDevice {
  /** torch's name for it: cuda:0, mps. */
  id: string;
  name: string;
  memoryMB?: number;
}

/** The torch engine on this machine: the interpreter it runs on and its devices, or why there is none. */
export interface TorchReport {
  ok: boolean;
  python?: string;
  version?: string;
  /** CUDA or MPS devices; none means the engine runs on the CPU. */
  devices: TorchDevice[];
  /** Interpreters tried and rejected, each with why. */
  rejected: { python: string; reason: string }[];
  /** When not ok: one line saying why and what to do. */
  reason?: string;
}

const PROBE = `
import json, torch
d = [{'id': f'cuda:{i}', 'name': torch.cuda.get_device_name(i), 'memoryMB': torch.cuda.get_device_properties(i).total_memory // 2**20}
     for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
mps = getattr(torch.backends, 'mps', None)
if not d and mps is not None and mps.is_available(): d = [{'id': 'mps', 'name': 'Apple GPU (MPS)'}]
print(json.dumps({'version': torch.__version__, 'devices': d}))`;

/** Whether `file` is a file this process may run. */
export function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/** Where to look, in order: LOCALMIM_PYTHON, every python3 and python on PATH, /usr/bin/python3. */
export function pythonCandidates(): string[] {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter(Boolean);
  const exe = process.platform === 'win32' ? ['python.exe', 'python3.exe'] : ['python3', 'python'];
  const onPath = dirs.flatMap((d) => exe.map((e) => join(d, e))).filter(isExecutable);
  const all = [process.env.LOCALMIM_PYTHON, ...onPath, '/usr/bin/python3'].filter((p): p is string => !!p);
  return [...new Set(all)];
}

const atLeast = (version: string) => {
  const [major = 0, minor = 0] = version.split('.').map((x) => parseInt(x, 10));
  return major > MIN_TORCH[0] || (major === MIN_TORCH[0] && minor >= MIN_TORCH[1]);
};

let cached: TorchReport | undefined;

/** Finds the first interpreter whose torch imports and is new enough (once per process; each try imports torch). */
export function detectTorch(): TorchReport {
  if (cached) return cached;
  const rejected: TorchReport['rejected'] = [];
  for (const python of pythonCandidates()) {
    if (!isExecutable(python)) {
      rejected.push({ python, reason: 'not an executable file' });
      continue;
    }
    const r = spawnSync(python, ['-c', PROBE], { encoding: 'utf8', timeout: 60_000 });
    if (r.status !== 0) {
      const last = (r.stderr || r.error?.message || `exit code ${r.status}`).trim().split('\n').at(-1)!;
      rejected.push({ python, reason: /No module named .?torch/.test(last) ? 'no torch' : last });
      continue;
    }
    const found = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { version: string; devices: TorchDevice[] };
    if (!atLeast(found.version)) {
      rejected.push({ python, reason: `torch ${found.version} is older than ${MIN_TORCH.join('.')}` });
      continue;
    }
    cached = { ok: true, python, version: found.version, devices: found.devices, rejected };
    return cached;
  }
  const reason = rejected.length
    ? `no Python with torch ≥ ${MIN_TORCH.join('.')} (${rejected.map((x) => `${x.python}: ${x.reason}`).join('; ')}); install PyTorch (pytorch.org) or set LOCALMIM_PYTHON`
    : 'no Python found: install Python 3 with PyTorch, or set LOCALMIM_PYTHON';
  cached = { ok: false, devices: [], rejected, reason };
  return cached;
}

/**
 * `auto`: torch where it has a CUDA or MPS device, else tfjs (and its fastest backend). None given: a resumed run
 * stays on the engine that trained it (its recorded backend), a new one gets tfjs.
 */
export function resolveEngine(choice: EngineChoice | undefined, torch: () => TorchReport, previous?: string | null): Engine {
  if (choice === undefined) return previous?.startsWith('torch') ? 'torch' : 'tfjs';
  if (choice === 'auto') return torch().devices.length ? 'torch' : 'tfjs';
  return choice;
}

/** How the torch engine reads in a report: interpreter, version, device. */
export function describeTorch(r: TorchReport): string {
  if (!r.ok) return `unavailable: ${r.reason}`;
  const devices = r.devices.length
    ? r.devices.map((d) => `${d.id} ${d.name}${d.memoryMB ? ` (${(d.memoryMB / 1024).toFixed(0)} GiB)` : ''}`).join(', ')
    : 'cpu (no CUDA or MPS device)';
  return `torch ${r.version} on ${r.python}: ${devices}`;
}

/** A job as far as the engines differ on it: its kind, its model, its linear probe. */
export interface EngineJob {
  kind: 'pretrain' | 'finetune' | 'import' | 'embed';
  model: ModelConfig;
  /** A fine-tune that is a linear probe: its recipe. */
  linearProbe?: 'logistic' | 'lars';
}

/**
 * What the torch engine cannot train (`who`: the torch engine, or scale-out, which runs it), as the field that asks
 * for it and why; undefined where it can. The CLI, the service, scale-out and the new-run form all ask this.
 */
export function torchCannot(job: EngineJob, who = 'the torch engine'): { path: string; message: string } | undefined {
  if (job.kind === 'import') return { path: 'kind', message: `import: ${who} pretrains, fine-tunes and embeds only` };
  if (job.kind === 'finetune' && modelFamily(job.model) !== 'vit')
    return { path: 'model.size', message: `${job.model.size}: ${who} fine-tunes ViT models only` };
  // The logistic probe of the last block reaches the engine as an embedding (core/runs/torch.ts embedsOnly).
  if (job.linearProbe === 'logistic')
    return { path: 'finetune.probeFeatures', message: `last4: ${who} embeds the last block only for the logistic probe` };
  return undefined;
}

/** The same, as one line for a user: the field, why, and the engine that can. */
export function torchProblem(job: EngineJob): string | undefined {
  const cannot = torchCannot(job);
  return cannot && `${cannot.path}: ${cannot.message}; train it with --engine tfjs`;
}

/** A model as the torch engine takes it: the config with its family and every size resolved (modelDims or swinDims). */
export function torchModel(model: ModelConfig) {
  return modelFamily(model) === 'swin'
    ? { ...model, family: 'swin' as const, ...swinDims(model) }
    : { ...model, family: 'vit' as const, ...modelDims(model) };
}

/**
 * A pretraining run as train.py takes it: the model with every size resolved here (dims, taps, scales, targets'
 * features), the schedule's peak for one process, and the run config itself (written back into checkpoints), so that
 * the Python side has no size table or default of its own.
 */
export function torchSpec(config: RunConfig) {
  const o = config.optim;
  return {
    kind: 'pretrain' as const,
    config,
    model: torchModel(config.model),
    optim: { ...o, peakLr: peakLr(o), lrScalesWithWorld: o.lr === undefined },
    seed: config.seed,
  };
}

/** Per parameter of a classifier: its learning-rate scale (layer decay) and whether AdamW decays it. */
export type ParamGroups = Record<string, [lrScale: number, decays: boolean]>;

/**
 * A ViT fine-tuning run (or MAE's LARS probe) as the torch engine takes it: the model resolved as {@link torchSpec}'s,
 * the recipe (its crop kernel and RandAugment resolved), the classes, the classifier's parameter groups as the app's
 * model declares them (`groups`), and the probe's LARS settings.
 */
export function torchFinetuneSpec(run: FinetuneRun, groups: ParamGroups) {
  const f = run.finetune;
  return {
    kind: 'finetune' as const,
    config: run,
    model: torchModel(run.model),
    finetune: {
      ...f,
      peakLr: peakLr(f),
      lrScalesWithWorld: f.lr === undefined,
      kernel: cropKernel(f, run.model),
      randAugment: f.randAugment ? parseRandAugment(f.randAugment) : null,
    },
    classes: run.classes.length,
    groups,
    lars: PROBE_LARS,
    seed: run.seed,
  };
}
