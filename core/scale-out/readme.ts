import { peakLr, type RunConfig } from '../config.js';

/** The effective batch and peak learning rate of a job on `world` processes (blr · effective batch / 256). */
export function scaling(config: RunConfig, world: number): { batch: number; lr: number } {
  const o = config.optim;
  return { batch: o.batch * o.accumIter * world, lr: peakLr({ ...o, batch: o.batch * world }) };
}

/** Versions train.py was tested with (Debian's packages). */
export const TESTED = { python: '3.11', torch: '1.13', torchvision: '0.14', pillow: '9.4' };

/** The job folder's README: what is in it, the launch commands, and the batch and learning rate each launch implies. */
export function jobReadme(o: {
  config: RunConfig;
  images: number;
  dataRoot: string;
  source: { runId: number; step: number } | null;
}): string {
  const { optim } = o.config;
  const row = (world: number, where: string) => {
    const s = scaling(o.config, world);
    return `| ${where} | ${world} | ${s.batch} | ${s.lr.toExponential(3)} |`;
  };
  return `# LocalMIM pretraining job

Written by LocalMIM Studio (\`localmim scale-out\`) for ${o.images} images under \`${o.dataRoot}\`${
    o.source ? `, continuing run ${o.source.runId} from step ${o.source.step}` : ''
  }. \`train.py\` (with its package, \`localmim_torch/\`) is the app's trainer in PyTorch: the same model and
parameter names, targets, masks, losses, AdamW groups, schedule, accumulation, seeded data order and crops. Bring the
result back with \`localmim scale-in ${'<this folder>'}\`.

- \`spec.json\`: the model and schedule, every size resolved by the app; \`config.json\`: the run config;
  \`manifest.jsonl\`: the images (path under the data root, sha256, label).
- \`init.safetensors\`: the starting weights${o.source ? ' and optimizer state' : ' (the seeded initialisation the app would use)'}.
- \`checkpoints/\`: written by rank 0, atomically, every \`--every-steps\` (default 1000) steps, every
  \`--every-minutes\` (30), at each epoch end and at the end; the last three are kept. A relaunch resumes from the last.
- \`metrics.jsonl\`: one line per optimizer step, the fields of the app's \`step\` events.

Needs Python 3 with \`torch\` and \`pillow\` (tested with Python ${TESTED.python}, torch ${TESTED.torch}, torchvision
${TESTED.torchvision}, Pillow ${TESTED.pillow}). If the images live elsewhere on the cluster, add \`--data DIR\`.

## Launch

One GPU (or a CPU):

    python3 train.py

Eight GPUs on one node:

    torchrun --standalone --nproc_per_node 8 train.py

Several nodes (run on each; NODE_RANK 0 … N−1, MASTER_ADDR the first node):

    torchrun --nnodes 4 --node_rank $NODE_RANK --nproc_per_node 8 \\
      --master_addr $MASTER_ADDR --master_port 29500 train.py

Without torchrun (Debian's is broken for Python 3.11), one process per rank:

    RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 python3 train.py &
    RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 python3 train.py

SLURM (4 nodes × 8 GPUs, one task per GPU):

    #!/bin/bash
    #SBATCH --nodes 4 --ntasks-per-node 8 --gpus-per-node 8 --cpus-per-task 8
    export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) MASTER_PORT=29500
    srun bash -c 'RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID python3 train.py'

Options: \`--max-steps N\` (stop after N optimizer steps in total, with a checkpoint), \`--amp\` (mixed precision on
GPUs, off by default), \`--workers N\` (data-loading processes per GPU), \`python3 train.py --help\` for the rest.

## Batch and learning rate

\`optim.batch\` (${optim.batch}) is per process and \`optim.accumIter\` (${optim.accumIter}) micro-batches make a
step, so the effective batch is batch · accumIter · processes, and ${
    optim.lr === undefined
      ? `the peak learning rate blr · effective batch / 256 (blr ${optim.blr}), as the official code`
      : `the peak learning rate is the config's absolute lr (${optim.lr}) whatever the batch`
  }. Data order, crops and masks depend on the number of processes only through which process takes which
micro-batch; with one process the job sees exactly the batches the app would.

| launch | processes | effective batch | peak lr |
| --- | --- | --- | --- |
${row(1, '1 GPU')}
${row(8, '1 node × 8 GPUs')}
${row(32, '4 nodes × 8 GPUs')}
`;
}
