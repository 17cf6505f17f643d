// The safetensors format: an 8-byte little-endian header length, a JSON header mapping each name to
// {dtype, shape, data_offsets} (plus optional string-valued "__metadata__"), then the raw bytes.

export interface NamedTensor {
  shape: number[];
  values: Float32Array;
}

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

export function decodeSafetensors(
  bytes: Uint8Array,
  source = 'safetensors',
): { tensors: Map<string, NamedTensor>; metadata: Record<string, string> } {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (buf.length < 8) throw new Error(`${source}: file is too short to be safetensors`);
  const n = Number(buf.readBigUInt64LE(0));
  if (n > buf.length - 8) throw new Error(`${source}: header length ${n} exceeds the file`);
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  } catch {
    throw new Error(`${source}: header is not valid JSON`);
  }
  const data = buf.subarray(8 + n);
  const tensors = new Map<string, NamedTensor>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = entry as Record<string, string>;
      continue;
    }
    const {
      dtype,
      shape,
      data_offsets: [start, end],
    } = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    if (dtype !== 'F32') throw new Error(`${source}: ${name} has dtype ${dtype}; only F32 is supported`);
    if (end > data.length || end - start !== 4 * shape.reduce((a, b) => a * b, 1))
      throw new Error(`${source}: ${name} has bad data offsets`);
    // Copy: the slice may not be 4-byte aligned in the file buffer.
    const values = new Float32Array(data.buffer.slice(data.byteOffset + start, data.byteOffset + end));
    tensors.set(name, { shape, values });
  }
  return { tensors, metadata };
}
