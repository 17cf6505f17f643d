import type { TestProject } from 'vitest/node';
import type { Component } from './requirements.js';

/**
 * vitest globalSetup: after the run, in the main process (so whichever reporters run), each missing component that
 * gated tests, how many it skipped (or failed, under CI=true), and what installs it. Nothing where none is missing.
 */
export default function setup(project: TestProject): () => void {
  return () => {
    const gated = gatedTests(project);
    if (gated.size === 0) return;
    const lines = [...gated.values()].map(({ component: c, skipped, failed }) => {
      const count = failed ? `${tests(failed)} failed` : `${tests(skipped)} skipped`;
      return `  ${c.name} — ${c.missing}: ${count}; apt-get install ${c.install!.join(' ')}`;
    });
    const all = [...new Set([...gated.values()].flatMap((g) => g.component.install!))];
    console.log(`\nSystem components missing here (README.md, "What npm test skips"):\n${lines.join('\n')}`);
    console.log(`  All of them: apt-get install ${all.join(' ')}\n`);
  };
}

const tests = (n: number) => `${n} test${n === 1 ? '' : 's'}`;

interface Gated {
  component: Component;
  skipped: number;
  failed: number;
}

/** The tests of the suites gated on each missing component (by name), by state. */
function gatedTests(project: TestProject): Map<string, Gated> {
  const out = new Map<string, Gated>();
  for (const module of project.vitest.state.getTestModules())
    for (const suite of module.children.allSuites())
      for (const component of suite.meta().missing ?? []) {
        const g = out.get(component.name) ?? { component, skipped: 0, failed: 0 };
        for (const t of suite.children.allTests()) {
          const state = t.result().state;
          if (state === 'skipped') g.skipped++;
          if (state === 'failed') g.failed++;
        }
        out.set(component.name, g);
      }
  return out;
}
