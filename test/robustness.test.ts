import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { importWeights } from '../core/export/import.js';
import { SAMPLE_IMAGES } from '../core/home.js';
import { decodeSafetensors, encodeSafetensors, type NamedTensor } from '../core/safetensors.js';
import { Store } from '../core/store/store.js';

const dir = mkdtempSync(join(tmpdir(), 'localmim-robust-'));
const home = join(dir, 'home');
const image = join(dir, 'probe.png');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A ViT state dict with timm names: D wide, `depth` blocks, patch p, a g×g patch grid. */
function vit(D: number, depth: number, p: number, g: number): Map<string, NamedTensor> {
  const t = (...shape: number[]) => ({ shape, values: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(0.01) });
  const m = new Map<string, NamedTensor>([
    ['cls_token', t(1, 1, D)],
    ['pos_embed', t(1, 1 + g * g, D)],
    ['patch_embed.proj.weight', t(D, 3, p, p)],
    ['patch_embed.proj.bias', t(D)],
  ]);
  for (let i = 0; i < depth; i++) {
    const b = `blocks.${i}`;
    for (const n of ['norm1', 'norm2']) m.set(`${b}.${n}.weight`, t(D)).set(`${b}.${n}.bias`, t(D));
    m.set(`${b}.attn.qkv.weight`, t(3 * D, D)).set(`${b}.attn.qkv.bias`, t(3 * D));
    m.set(`${b}.attn.proj.weight`, t(D, D)).set(`${b}.attn.proj.bias`, t(D));
    m.set(`${b}.mlp.fc1.weight`, t(4 * D, D)).set(`${b}.mlp.fc1.bias`, t(4 * D));
    m.set(`${b}.mlp.fc2.weight`, t(D, 4 * D)).set(`${b}.mlp.fc2.bias`, t(D));
  }
  return m;
}

/** A safetensors file from a raw header string and data bytes; `length` overrides the header length field. */
function raw(name: string, header: string, data = Buffer.alloc(0), length = Buffer.byteLength(header)): string {
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(length));
  const path = join(dir, name);
  writeFileSync(path, Buffer.concat([head, Buffer.from(header), data]));
  return path;
}

const write = (name: string, tensors: Map<string, NamedTensor>) => {
  const path = join(dir, name);
  writeFileSync(path, encodeSafetensors(tensors));
  return path;
};

/** Exactly one line on stderr, `localmim CMD: …`, no stack, and the exit code. */
function expectOneLine(r: { code: number | null; stderr: string }, cmd: string, code: number, message: RegExp) {
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.stderr.trimEnd().split('\n'), r.stderr).toHaveLength(1);
  expect(r.stderr).toMatch(new RegExp(`^localmim ${cmd}: `));
  expect(r.stderr).toMatch(message);
  expect(r.code).toBe(code);
}

const BIN = fileURLToPath(new URL('../bin/localmim.js', import.meta.url));

/** The real CLI in a child process, without blocking this worker (several run at once); `close` ends its stdout early. */
function localmim(args: string[], o: { env?: NodeJS.ProcessEnv; close?: boolean } = {}) {
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  if (o.close) child.stdout.destroy();
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  return new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>((done) =>
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      done({ code, signal, stdout, stderr });
    }),
  );
}

const cli = (args: string[], env: NodeJS.ProcessEnv = {}) => localmim([...args, '--home', home], { env });
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
let imported = 0;

beforeAll(async () => {
  await sharp(join(SAMPLE_IMAGES, 'coffee-07.jpg')).resize(8, 8).png().toFile(image);
  const store = new Store(join(home, 'localmim.db'));
  store.createRun({ name: 'no checkpoints', datasetId: null, config: {}, backend: 'wasm', status: 'failed', pid: null }); // run 1
  store.close();
  const r = await cli(['import', write('tiny.safetensors', vit(8, 2, 4, 2)), '--heads', '2', '--json']);
  expect(r.code, r.stderr).toBe(0);
  imported = (JSON.parse(r.stdout) as { runId: number }).runId;
});

describe('--help', () => {
  const flags: Record<string, string[]> = {
    export: ['--format FORMAT', '--out DIR', '--home DIR', '--json'],
    import: ['--heads H', '--name NAME', '--home DIR', '--json'],
    features: ['--image FILE', '--home DIR', '--backend NAME', '--json'],
    analyze: ['--image FILE', '--query PATCH', '--data DIR', '--images N', '--seed S', '--home DIR', '--backend NAME', '--json'],
    runs: ['--home DIR', '--json'],
    targets: ['--image FILE', '--kind KIND', '--bins N', '--cells LIST', '--bias B0,B1', '--norm-pix', '--json'],
    doctor: ['--backend NAME', '--json'],
    index: ['--home DIR', '--max-pixels N', '--min-side PX', '--json'],
    serve: ['--port PORT', '--host HOST', '--home DIR', '--preview-every STEPS'],
    start: ['--home DIR', '--port PORT'],
    'scale-out': ['--config FILE', '--data DIR', '--out JOBDIR', '--home DIR', '--json'],
    'scale-in': ['--home DIR', '--json'],
  };

  test('every command lists its flags and exits 0', async () => {
    const results = await Promise.all(Object.keys(flags).map((cmd) => localmim([cmd, '--help'])));
    Object.keys(flags).forEach((cmd, i) => {
      const r = results[i]!;
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^usage: localmim ${cmd}\\b`));
      for (const f of [...flags[cmd]!, '-h, --help']) expect(r.stdout).toContain(`  ${f} `);
    });
  });

  test('localmim help CMD says the same; help texts and defaults sit beside the flags', async () => {
    const [r, same] = await Promise.all([localmim(['targets', '-h']), localmim(['help', 'targets'])]);
    expect(r.stdout).toMatch(/--kind KIND +hog or pixel \(default: hog\)/);
    expect(r.stdout).toMatch(/--cells LIST +cell sizes in pixels, one per scale \(default: 4,8,16,32\)/);
    expect(r.stderr).toBe('');
    expect(same).toMatchObject({ code: 0, stdout: r.stdout });
  });

  test('an unknown flag is a one-line usage error pointing at --help', async () => {
    expectOneLine(
      await cli(['export', '1', '--bogus']),
      'export',
      2,
      /Unknown option '--bogus' \(localmim export --help lists the options\)/,
    );
  });
});

describe('user errors are one line and a non-zero exit', () => {
  const withImage = (cmd: string, spec: string) => (cmd === 'export' ? [cmd, spec] : [cmd, spec, '--image', image]);

  test.each(['export', 'features', 'analyze'])('%s on a missing run, and on a run without checkpoints', async (cmd) => {
    const [missing, empty] = await Promise.all([cli(withImage(cmd, '7')), cli(withImage(cmd, '1'))]);
    expectOneLine(missing, cmd, 1, /: no run 7$/m);
    expectOneLine(empty, cmd, 1, /: run 1 has no intact checkpoint/);
  });

  test('the stack is printed only with LOCALMIM_DEBUG=1', async () => {
    const r = await cli(['export', '7'], { LOCALMIM_DEBUG: '1' });
    expect(r.stderr).toMatch(/^localmim export: no run 7\n/);
    expect(r.stderr).toMatch(/^\s+at /m);
  });

  test('analyze --query must be a patch index of the model', async () => {
    const query = (q: string) => cli(['analyze', String(imported), '--image', image, '--query', q, '--json']);
    const [abc, far, ok] = await Promise.all([query('abc'), query('4'), query('3')]);
    expectOneLine(abc, 'analyze', 2, /--query: expected a non-negative integer, got "abc"/);
    expectOneLine(far, 'analyze', 2, /--query: patch 4 is out of range: .*0…3/);
    expect(ok.code, ok.stderr).toBe(0);
    expect((JSON.parse(ok.stdout) as { query: number }).query).toBe(3);
  });

  test('analyze over a set: --images, --data and the flags that go with --image say what is wrong', async () => {
    const folder = join(dir, 'set');
    mkdirSync(folder, { recursive: true });
    const set = (...more: string[]) => cli(['analyze', String(imported), ...more]);
    const [zero, missing, both, query, images, none] = await Promise.all([
      set('--data', folder, '--images', '0'),
      set('--data', join(dir, 'no-such-folder')),
      set('--data', folder, '--image', image),
      set('--data', folder, '--query', '1'),
      set('--image', image, '--images', '4'),
      set(),
    ]);
    expectOneLine(zero, 'analyze', 2, /--images: expected a positive integer, got "0"/);
    expectOneLine(missing, 'analyze', 2, /--data: .*no-such-folder: cannot open the folder \(ENOENT\)/);
    expectOneLine(both, 'analyze', 2, /give --image FILE or --data DIR, not both/);
    expectOneLine(query, 'analyze', 2, /--query goes with --image FILE/);
    expectOneLine(images, 'analyze', 2, /--images goes with --data DIR/);
    expectOneLine(none, 'analyze', 2, /give --image FILE \(one image\) or --data DIR \(a set of images\)/);
    expectOneLine(await set('--data', folder), 'analyze', 2, /--data: .*set has no usable images/);
  });

  const entry = (e: unknown) => JSON.stringify({ x: e });
  const f32 = { dtype: 'F32', shape: [1], data_offsets: [0, 4] };
  test('import names the file and the problem of a bad header', async () => {
    const cases = [
      ['null', 'null', 'header is null, not a JSON object'],
      ['array', '[]', 'header is an array, not a JSON object'],
      ['shape-negative', entry({ ...f32, shape: [-1] }), 'x: shape [-1] is not a list of non-negative integers'],
      ['shape-string', entry({ ...f32, shape: ['a'] }), 'x: shape ["a"] is not a list of non-negative integers'],
      ['offsets-strings', entry({ ...f32, data_offsets: ['0', '4'] }), 'x: data_offsets ["0","4"] are not two non-negative integers'],
      ['offsets-out', entry({ ...f32, data_offsets: [0, 400] }), 'x: data_offsets [0, 400] lie outside the 4 data bytes'],
    ];
    const files = cases.map(([name, header]) => raw(`${name}.safetensors`, header!, Buffer.alloc(4)));
    files.push(raw('long.safetensors', '{}', Buffer.alloc(0), 1000));
    const results = await Promise.all(files.map((f) => cli(['import', f])));
    const messages = [...cases.map(([, , m]) => m!), 'header length 1000 exceeds the file (10 bytes)'];
    results.forEach((r, i) => expectOneLine(r, 'import', 1, new RegExp(`: ${escape(files[i]!)}: ${escape(messages[i]!)}$`, 'm')));
  });

  test('import refuses weights holding NaN or Inf, naming the tensor; a header past the caps says which cap', async () => {
    const withNaN = vit(8, 2, 4, 2);
    withNaN.get('blocks.1.attn.proj.weight')!.values[5] = NaN;
    const withInf = vit(8, 2, 4, 2);
    withInf.get('pos_embed')!.values[0] = -Infinity;
    const runs = async () => (JSON.parse((await cli(['runs', '--json'])).stdout) as unknown[]).length;
    const before = await runs();
    const many = Array.from({ length: 100_001 }, (_, i) => `"t${i}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`).join(',');
    const [nan, inf, huge, count] = await Promise.all([
      cli(['import', write('nan.safetensors', withNaN), '--heads', '2']),
      cli(['import', write('inf.safetensors', withInf), '--heads', '2']),
      cli(['import', raw('huge.safetensors', '{}', Buffer.alloc(0), 101_000_000)]),
      cli(['import', raw('count.safetensors', `{${many}}`)]),
    ]);
    expectOneLine(nan, 'import', 1, /nan\.safetensors: blocks\.1\.attn\.proj\.weight holds a non-finite value \(NaN at index 5\)/);
    expectOneLine(inf, 'import', 1, /inf\.safetensors: pos_embed holds a non-finite value \(-Infinity at index 0\)/);
    expectOneLine(huge, 'import', 1, /huge\.safetensors: header of 101 MB exceeds the 100 MB limit$/m);
    expectOneLine(count, 'import', 1, /count\.safetensors: header lists 100001 tensors, more than the limit of 100000$/m);
    expect(await runs()).toBe(before); // nothing saved
  });

  test('features whose values overflow fail with one line, never print null', async () => {
    const big = vit(8, 2, 4, 2);
    for (const t of big.values()) t.values.fill(1e30);
    const r = await cli(['import', write('big.safetensors', big), '--heads', '2', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const runId = (JSON.parse(r.stdout) as { runId: number }).runId;
    const f = await cli(['features', String(runId), '--image', image, '--json']);
    expectOneLine(f, 'features', 1, new RegExp(`run ${runId}: its features of .* are not finite \\((NaN|-?Infinity) at index \\d+\\)`));
    expect(f.stdout).toBe('');
  });

  test.each([
    ['entry-null', entry(null), 'x: entry is null, not an object'],
    ['dtype', entry({ ...f32, dtype: 7 }), 'x: dtype is number, not a string'],
    ['dtype-f16', entry({ ...f32, dtype: 'F16' }), 'x has dtype F16; only F32 is supported'],
    ['shape-fraction', entry({ ...f32, shape: [0.5] }), 'x: shape [0.5] is not a list of non-negative integers'],
    ['offsets-three', entry({ ...f32, data_offsets: [0, 4, 8] }), 'x: data_offsets [0,4,8] are not two non-negative integers'],
    ['offsets-reversed', entry({ ...f32, data_offsets: [4, 0] }), 'x: data_offsets [4, 0] lie outside the 4 data bytes'],
    ['offsets-size', entry({ ...f32, shape: [2] }), 'x: shape [2] needs 8 bytes, data_offsets [0, 4] hold 4'],
    ['metadata', JSON.stringify({ __metadata__: { a: 1 } }), '__metadata__.a is number, not a string'],
    ['metadata-array', JSON.stringify({ __metadata__: [] }), '__metadata__ is an array, not an object'],
  ])('decodeSafetensors checks the header: %s', (_, header, message) => {
    expect(() => decodeSafetensors(readBack(header, 4), 'f.safetensors')).toThrow(`f.safetensors: ${message}`);
  });

  test('a corrupt database, and a data folder that cannot be created, are named', async () => {
    const bad = join(dir, 'corrupt-home');
    mkdirSync(bad);
    writeFileSync(join(bad, 'localmim.db'), Buffer.from('garbage, not SQLite '.repeat(300)));
    writeFileSync(join(dir, 'a-file'), '');
    const [corrupt, blocked] = await Promise.all([
      localmim(['runs', '--home', bad]),
      localmim(['runs', '--home', join(dir, 'a-file', 'home')]),
    ]);
    expectOneLine(
      corrupt,
      'runs',
      1,
      new RegExp(`: ${escape(join(bad, 'localmim.db'))}: cannot open the database \\(file is not a database\\)`),
    );
    expectOneLine(blocked, 'runs', 1, new RegExp(`: ${escape(join(dir, 'a-file', 'home'))}: cannot create the data folder`));
  });

  test('a closed stdout ends the command quietly and promptly', async () => {
    const results = await Promise.all([
      localmim(['runs', '--json', '--home', join(dir, 'pipe-home')], { close: true }),
      localmim(['targets', '--json', '--image', join(SAMPLE_IMAGES, 'coffee-07.jpg')], { close: true }),
    ]);
    for (const { code, signal, stderr } of results) expect({ code, signal, stderr }).toEqual({ code: 0, signal: null, stderr: '' });
  });
});

describe('import bounds its work by what the header claims', () => {
  /** A valid cls_token and patch embedding, then 5000 blocks of empty tensors: a few KB claiming a 5000-deep model. */
  function thousandsOfEmptyBlocks(D: number, p: number): Map<string, NamedTensor> {
    const m = new Map([...vit(D, 1, p, 14)].filter(([n]) => !n.startsWith('blocks.')));
    for (let i = 0; i < 5000; i++)
      for (const n of ['norm1.weight', 'attn.qkv.weight', 'attn.proj.weight', 'mlp.fc1.weight', 'mlp.fc2.weight'])
        m.set(`blocks.${i}.${n}`, { shape: [0], values: new Float32Array(0) });
    return m;
  }

  test('a file listing 5000 empty blocks fails at once, naming the file and the first block too many', async () => {
    const file = write('deep.safetensors', thousandsOfEmptyBlocks(192, 16));
    expectOneLine(
      await cli(['import', file]),
      'import',
      1,
      new RegExp(`: ${escape(file)}: blocks\\.64\\.norm1\\.weight: more than 64 blocks`),
    );
  });

  test('the check comes before any model is allocated', async () => {
    const file = write('deep-small.safetensors', thousandsOfEmptyBlocks(8, 4));
    const store = new Store(join(dir, 'inproc.db'));
    const rss = process.memoryUsage().rss;
    await expect(importWeights(store, file, { heads: 2, home: dir, checkpointPath: () => join(dir, 'never.safetensors') })).rejects.toThrow(
      `${file}: blocks.64.norm1.weight: more than 64 blocks`,
    );
    expect(process.memoryUsage().rss - rss).toBeLessThan(100e6);
    expect(store.runs()).toEqual([]);
    store.close();
  });

  test('a ViT without qkv biases imports, with them zero', async () => {
    const m = vit(8, 2, 4, 2);
    for (const i of [0, 1]) m.delete(`blocks.${i}.attn.qkv.bias`);
    const r = await cli(['import', write('no-qkv-bias.safetensors', m), '--heads', '2', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const { runId } = JSON.parse(r.stdout) as { runId: number };
    const store = new Store(join(home, 'localmim.db'));
    const { tensors } = decodeSafetensors(readFileSync(store.checkpoints(runId)[0]!.path));
    store.close();
    expect(tensors.get('blocks.1.attn.qkv.bias')!.values.every((v) => v === 0)).toBe(true);
    expect(tensors.get('blocks.1.attn.qkv.weight')!.values.every((v) => v === Math.fround(0.01))).toBe(true);
  });

  test('a tensor missing, or with a shape the inferred width, depth and patch do not give, is named', async () => {
    const missing = vit(8, 2, 4, 2);
    missing.delete('blocks.1.mlp.fc2.bias');
    const cases: [string, Map<string, NamedTensor>, string][] = [
      ['missing', missing, 'no tensor blocks.1.mlp.fc2.bias'],
      [
        'bad-qkv',
        vit(8, 2, 4, 2).set('blocks.1.attn.qkv.weight', { shape: [24, 7], values: new Float32Array(168) }),
        'blocks.1.attn.qkv.weight has shape [24,7], expected [24,8]',
      ],
      [
        'bad-patch',
        vit(8, 2, 4, 2).set('patch_embed.proj.weight', { shape: [8, 3, 4, 5], values: new Float32Array(480) }),
        'patch_embed.proj.weight has shape [8,3,4,5], expected [8, 3, p, p]',
      ],
      ['bad-pos', vit(8, 2, 4, 2).set('pos_embed', { shape: [1, 6, 8], values: new Float32Array(48) }), 'pos_embed has shape [1,6,8]'],
      ['wide', new Map([['cls_token', { shape: [1, 1, 8192], values: new Float32Array(8192) }]]), 'cls_token has shape [1,1,8192]'],
    ];
    const files = cases.map(([name, tensors]) => write(`${name}.safetensors`, tensors));
    const results = await Promise.all(files.map((f) => cli(['import', f, '--heads', '2'])));
    results.forEach((r, i) => expectOneLine(r, 'import', 1, new RegExp(`: ${escape(files[i]!)}: ${escape(cases[i]![2])}`)));
  });
});

describe('decodeSafetensors', () => {
  test('round-trips, and refuses overlapping or uncovered data', () => {
    const bytes = encodeSafetensors(vit(8, 1, 4, 2), { note: 'hi' });
    const { tensors, metadata } = decodeSafetensors(bytes, 'ok');
    expect(metadata).toEqual({ note: 'hi' });
    expect(tensors.get('blocks.0.mlp.fc1.weight')!.shape).toEqual([32, 8]);
    const two = (a: number[], b: number[]) =>
      decodeSafetensors(
        readBack(JSON.stringify({ a: { dtype: 'F32', shape: [1], data_offsets: a }, b: { dtype: 'F32', shape: [1], data_offsets: b } }), 8),
        'f',
      );
    expect(() => two([0, 4], [0, 4])).toThrow('f: b: data_offsets [0, 4] overlap another tensor');
    expect(() => two([0, 4], [4, 8])).not.toThrow();
    expect(() => decodeSafetensors(readBack(JSON.stringify({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }), 8), 'f')).toThrow(
      'f: a: data_offsets [4, 8] leave a gap',
    );
    expect(() => decodeSafetensors(readBack('{}', 8), 'f')).toThrow('f: the tensors cover 0 of the 8 data bytes');
  });
});

function readBack(header: string, dataBytes: number): Buffer {
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(header)));
  return Buffer.concat([head, Buffer.from(header), Buffer.alloc(dataBytes)]);
}
