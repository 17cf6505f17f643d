// The import graph of core/, main/ and renderer/ (type-only imports included): no circle, and no import from a lower
// layer to a higher one (docs/architecture.md#layers). Run by `npm run lint`; prints each problem and exits 1.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import ts from 'typescript';

const ROOT = join(import.meta.dirname, '..');

/** core/'s folders from the bottom up; a folder imports only from its own layer or those before it. */
const CORE_LAYERS = [
  ['core', 'core/model', 'core/targets', 'core/data', 'core/train', 'core/store', 'core/analysis'],
  ['core/runs', 'core/scale-out'],
  ['core/export'],
  ['core/jobs'],
  ['core/service'],
  ['core/server'],
  ['core/cli'],
];

/** The packages and folders each top-level folder may not import. */
const FORBIDDEN: Record<string, string[]> = {
  core: ['electron', 'svelte', 'main', 'renderer'],
  main: ['renderer'],
  renderer: ['electron', 'main'],
};

/**
 * Circles known when this check was written, each a strongly connected set of files: all type-only, and removed by the
 * branch that moves one type out of each (issue 33, item 8). TO BE EMPTIED when it merges: an entry that no longer
 * matches a circle fails the check too, so the list cannot outlive them.
 */
const KNOWN_CIRCLES: string[][] = [
  ['core/jobs/compute.ts', 'core/jobs/protocol.ts'],
  ['core/runs/baselines.ts', 'core/runs/job.ts', 'core/runs/logistic-probe.ts', 'core/runs/torch.ts'],
  ['core/service/analysis.ts', 'core/service/datasets.ts', 'core/service/embeddings.ts', 'core/service/runs.ts', 'core/service/service.ts'],
  ['core/analysis/knn.ts', 'core/analysis/linear-probe.ts'],
  ['core/train/checkpoint.ts', 'core/train/loop.ts'],
];

type Graph = Map<string, string[]>;

function sourceFiles(dir: string): string[] {
  return readdirSync(join(ROOT, dir), { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return e.name === 'node_modules' || e.name === 'dist' ? [] : sourceFiles(path);
    return /\.(ts|svelte)$/.test(e.name) && !e.name.endsWith('.d.ts') ? [path] : [];
  });
}

/** A file's import specifiers, `import type` and `typeof import()` included; a .svelte file's are those of its scripts. */
function specifiers(file: string): string[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const code = file.endsWith('.svelte') ? [...text.matchAll(/<script[^>]*>([\s\S]*?)<\/script>/g)].map((m) => m[1]).join('\n') : text;
  const found: string[] = [];
  const visit = (node: ts.Node): void => {
    const spec =
      ts.isImportDeclaration(node) || ts.isExportDeclaration(node)
        ? node.moduleSpecifier
        : ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument)
          ? node.argument.literal
          : ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword
            ? node.arguments[0]
            : undefined;
    if (spec && ts.isStringLiteral(spec)) found.push(spec.text);
    ts.forEachChild(node, visit);
  };
  visit(ts.createSourceFile(file, code, ts.ScriptTarget.Latest));
  return found;
}

/** The repository file a relative specifier names (`.js` written for `.ts`, or no extension), else the package name. */
function resolve(from: string, spec: string): string {
  if (!spec.startsWith('.')) return spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
  const base = join(dirname(from), spec);
  const candidates = [base.replace(/\.js$/, '.ts'), base, `${base}.ts`, join(base, 'index.ts')];
  return candidates.find((c) => existsSync(join(ROOT, c))) ?? base;
}

function importGraph(files: string[]): Graph {
  return new Map(files.map((f) => [f, specifiers(f).map((s) => resolve(f, s))]));
}

/** Tarjan's strongly connected components with more than one file (a file importing itself counts too). */
function circles(graph: Graph): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const found: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) visit(w);
      if (stack.includes(w)) low.set(v, Math.min(low.get(v)!, low.get(w)!));
    }
    if (low.get(v) !== index.get(v)) return;
    const scc: string[] = [];
    let w: string;
    do scc.push((w = stack.pop()!));
    while (w !== v);
    if (scc.length > 1 || graph.get(v)!.includes(v)) found.push(scc.sort());
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

/** The layer of a core file: the index in CORE_LAYERS of its folder; undefined outside core/. */
function layerOf(file: string): number | undefined {
  if (!file.startsWith('core/')) return undefined;
  const parts = file.split('/');
  const folder = parts.length > 2 ? parts.slice(0, 2).join('/') : 'core';
  const at = CORE_LAYERS.findIndex((l) => l.includes(folder));
  if (at < 0) throw new Error(`${file}: its folder has no layer in CORE_LAYERS`);
  return at;
}

function layerProblems(graph: Graph): string[] {
  const problems: string[] = [];
  for (const [from, targets] of graph)
    for (const to of targets) {
      const top = to.split('/')[0]!;
      if (FORBIDDEN[from.split('/')[0]!]?.includes(top)) problems.push(`${from} imports ${to}`);
      const [a, b] = [layerOf(from), layerOf(to)];
      if (a !== undefined && b !== undefined && b > a) problems.push(`${from} imports ${to}, a higher layer`);
    }
  return problems;
}

function circleProblems(graph: Graph): string[] {
  const key = (files: string[]) => files.join(' ');
  const known = new Set(KNOWN_CIRCLES.map(key));
  const found = circles(graph);
  const stale = KNOWN_CIRCLES.filter((c) => !found.some((f) => key(f) === key(c)));
  return [
    ...found.filter((c) => !known.has(key(c))).map((c) => `a circle: ${c.join(' → ')}`),
    ...stale.map((c) => `KNOWN_CIRCLES lists a circle there is not (any more): ${c.join(', ')}`),
  ];
}

const graph = importGraph(['core', 'main', 'renderer/src'].flatMap(sourceFiles));
const problems = [...layerProblems(graph), ...circleProblems(graph)];
for (const p of problems) console.error(p);
if (problems.length) process.exit(1);
console.log(`imports: ${graph.size} files, no circle, no upward import`);
