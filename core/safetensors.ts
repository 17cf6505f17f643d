// The safetensors format: an 8-byte little-endian header length, a JSON header mapping each name to
// {dtype, shape, data_offsets} (plus optional string-valued "__metadata__"), then the raw bytes.
// Checkpoints and exports share it, so it sits below both train/ and export/.

import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

export interface NamedTensor {
  shape: number[];
  values: Float32Array;
}

interface Entry {
  name: string;
  shape: number[];
  start: number;
  end: number;
}

/** Headers past this are not weights but a way to make the reader parse gigabytes of JSON (the reference reader's limit). */
const MAX_HEADER = 100_000_000;
/** Past this a header is no model (ViT-L with its optimizer state: ~1,000), only millions of tiny allocations. */
const MAX_TENSORS = 100_000;

export function encodeSafetensors(tensors: ReadonlyMap<string, NamedTensor>, metadata: Record<string, string> = {}): Buffer {
  const header: Record<string, unknown> = Object.keys(metadata).length ? { __metadata__: metadata } : {};
  let offset = 0;
  for (const [name, t] of tensors) {
    const size = t.shape.reduce((a, b) => a * b, 1);
    if (size !== t.values.length) throw new Error(`${name}: shape [${t.shape}] holds ${size} values, got ${t.values.length}`);
    header[name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + 4 * size] };
    offset += 4 * size;
  }
  // The header is padded with spaces so that the data starts 8-byte aligned.
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  let at = 8 + headerBytes.length;
  for (const t of tensors.values()) {
    Buffer.from(t.values.buffer, t.values.byteOffset, t.values.byteLength).copy(out, at);
    at += t.values.byteLength;
  }
  return out;
}

/**
 * Reads a safetensors file after checking its whole header against the data it claims, so that a
 * damaged or hostile file fails with `<source>: <what>` before anything is allocated for it; a tensor holding NaN
 * or ±Inf fails naming it.
 */
export function decodeSafetensors(
  bytes: Uint8Array,
  source = 'safetensors',
): { tensors: Map<string, NamedTensor>; metadata: Record<string, string> } {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (what: string): never => {
    throw new Error(`${source}: ${what}`);
  };
  if (buf.length < 8) fail('file is too short to be safetensors');
  const n = buf.readBigUInt64LE(0);
  if (n > BigInt(MAX_HEADER)) fail(`header of ${Math.round(Number(n) / 1e6)} MB exceeds the ${MAX_HEADER / 1e6} MB limit`);
  if (n > BigInt(buf.length - 8)) fail(`header length ${n} exceeds the file (${buf.length} bytes)`);
  const headerBytes = buf.subarray(8, 8 + Number(n));
  const count = countOf(headerBytes, '"data_offsets"');
  if (count > MAX_TENSORS) fail(`header lists ${count} tensors, more than the limit of ${MAX_TENSORS}`);
  const header = parseHeader(headerBytes, fail);
  const data = buf.subarray(8 + Number(n));
  const { entries, metadata } = checkHeader(header, data.length, fail);
  const tensors = new Map<string, NamedTensor>();
  for (const e of entries) {
    // Copy: the slice may not be 4-byte aligned in the file buffer.
    const values = new Float32Array(data.buffer.slice(data.byteOffset + e.start, data.byteOffset + e.end));
    const bad = firstNonFinite(values);
    if (bad >= 0) fail(`${e.name} holds a non-finite value (${values[bad]} at index ${bad}): these weights are damaged or diverged`);
    tensors.set(e.name, { shape: e.shape, values });
  }
  return { tensors, metadata };
}

/** A safetensors file's `__metadata__`, reading its header only: undefined when the file is missing or no safetensors. */
export function readSafetensorsMetadata(path: string): Record<string, string> | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const size = fstatSync(fd).size;
    const head = Buffer.alloc(8);
    if (readSync(fd, head, 0, 8, 0) < 8) return undefined;
    const n = head.readBigUInt64LE(0);
    if (n > BigInt(Math.min(size - 8, MAX_HEADER))) return undefined;
    const bytes = Buffer.alloc(Number(n));
    if (readSync(fd, bytes, 0, bytes.length, 8) < bytes.length) return undefined;
    const meta = (JSON.parse(bytes.toString('utf8')) as { __metadata__?: unknown }).__metadata__;
    return isObject(meta) ? (meta as Record<string, string>) : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Occurrences of `what` in `bytes`, counted before parsing, without allocating. */
function countOf(bytes: Buffer, what: string): number {
  let n = 0;
  for (let at = bytes.indexOf(what); at >= 0; at = bytes.indexOf(what, at + what.length)) n++;
  return n;
}

function firstNonFinite(values: Float32Array): number {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) return i;
  return -1;
}

function parseHeader(bytes: Buffer, fail: (what: string) => never): Record<string, unknown> {
  let header: unknown;
  try {
    header = JSON.parse(bytes.toString('utf8'));
  } catch {
    fail('header is not valid JSON');
  }
  if (!isObject(header)) fail(`header is ${describe(header)}, not a JSON object`);
  return header as Record<string, unknown>;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const describe = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v);
const isIndex = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/** Every entry well-formed, F32, and the entries tiling the data exactly (as the reference reader requires). */
function checkHeader(header: Record<string, unknown>, dataLength: number, fail: (what: string) => never) {
  const entries: Entry[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') metadata = checkMetadata(entry, fail);
    else entries.push(checkEntry(name, entry, dataLength, fail));
  }
  let at = 0;
  for (const e of [...entries].sort((a, b) => a.start - b.start || a.end - b.end)) {
    if (e.start !== at) fail(`${e.name}: data_offsets [${e.start}, ${e.end}] ${e.start < at ? 'overlap another tensor' : 'leave a gap'}`);
    at = e.end;
  }
  if (at !== dataLength) fail(`the tensors cover ${at} of the ${dataLength} data bytes`);
  return { entries, metadata };
}

function checkMetadata(entry: unknown, fail: (what: string) => never): Record<string, string> {
  if (!isObject(entry)) fail(`__metadata__ is ${describe(entry)}, not an object`);
  for (const [k, v] of Object.entries(entry as Record<string, unknown>))
    if (typeof v !== 'string') fail(`__metadata__.${k} is ${describe(v)}, not a string`);
  return entry as Record<string, string>;
}

function checkEntry(name: string, entry: unknown, dataLength: number, fail: (what: string) => never): Entry {
  if (!isObject(entry)) fail(`${name}: entry is ${describe(entry)}, not an object`);
  const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
  if (typeof dtype !== 'string') fail(`${name}: dtype is ${describe(dtype)}, not a string`);
  if (dtype !== 'F32') fail(`${name} has dtype ${String(dtype)}; only F32 is supported`);
  if (!Array.isArray(shape) || !shape.every(isIndex))
    fail(`${name}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex))
    fail(`${name}: data_offsets ${JSON.stringify(offsets)} are not two non-negative integers`);
  const [start, end] = offsets as [number, number];
  if (start > end || end > dataLength) fail(`${name}: data_offsets [${start}, ${end}] lie outside the ${dataLength} data bytes`);
  // Multiplying in floating point cannot overflow to a false match: any product past the data fails.
  const bytes = 4 * (shape as number[]).reduce((a, b) => a * b, 1);
  if (end - start !== bytes)
    fail(`${name}: shape [${String(shape)}] needs ${bytes} bytes, data_offsets [${start}, ${end}] hold ${end - start}`);
  return { name, shape: shape as number[], start, end };
}
