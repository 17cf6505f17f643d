import { Rng, seedFor, STREAMS } from '../random.js';
import type { ImageRow } from '../store/store.js';

export interface LabeledSplit {
  classes: string[];
  train: { path: string; hash: string; label: number }[];
  val: { path: string; hash: string; label: number }[];
}

/**
 * Labels from the first sub-folder; `train/` and `val/` sub-folders, when they are the only two, give the
 * split and the class is the next folder down. Otherwise a stratified split, seeded: `valFraction` of
 * each class (at least one image of every class with two or more) goes to validation.
 */
export function labeledSplit(rows: ImageRow[], valFraction: number, seed: number, where = 'the dataset'): LabeledSplit {
  const ok = rows.filter((r) => r.status === 'ok');
  const tops = new Set(ok.map((r) => r.path.split('/')[0]));
  const presplit = tops.size === 2 && tops.has('train') && tops.has('val');
  const classOf = (r: ImageRow) => (presplit ? r.path.split('/')[1] : r.label);
  const labeled = ok.filter((r) => classOf(r) && r.path.split('/').length > (presplit ? 2 : 1));
  const classes = [...new Set(labeled.map((r) => classOf(r)!))].sort();
  if (classes.length < 2) throw new Error(`data: ${where} needs images in at least two class sub-folders (found ${classes.length})`);
  const item = (r: ImageRow) => ({ path: r.path, hash: r.hash!, label: classes.indexOf(classOf(r)!) });
  if (presplit)
    return {
      classes,
      train: labeled.filter((r) => r.path.startsWith('train/')).map(item),
      val: labeled.filter((r) => r.path.startsWith('val/')).map(item),
    };
  const rng = new Rng(seedFor(seed, STREAMS.split));
  const train: LabeledSplit['train'] = [];
  const val: LabeledSplit['val'] = [];
  for (const c of classes) {
    const members = labeled.filter((r) => classOf(r) === c).map(item);
    for (let i = members.length - 1; i > 0; i--) {
      const j = Math.floor(rng.next() * (i + 1));
      [members[i], members[j]] = [members[j]!, members[i]!];
    }
    const nVal = members.length < 2 ? 0 : Math.max(1, Math.round(members.length * valFraction));
    val.push(...members.slice(0, nVal));
    train.push(...members.slice(nVal));
  }
  return { classes, train, val };
}
