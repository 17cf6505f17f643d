// The protobuf wire format, as much of it as writing an ONNX model needs: varint, fixed32 and length-delimited fields.
// A message keeps its fields as chunks and nested messages are spliced in by reference, so that large tensors are copied
// once, when the whole model is concatenated.

/** Base-128 varint of a (u)int64; a negative number is its 64-bit two's complement, as protobuf's int64. */
function varint(v: number | bigint): Uint8Array {
  let x = BigInt.asUintN(64, BigInt(v));
  const out: number[] = [];
  for (; x >= 0x80n; x >>= 7n) out.push(Number(x & 0x7fn) | 0x80);
  out.push(Number(x));
  return Uint8Array.from(out);
}

/** A message being written, field by field in the order called. */
export class Message {
  private readonly chunks: Uint8Array[] = [];
  length = 0;

  private push(b: Uint8Array): this {
    this.chunks.push(b);
    this.length += b.length;
    return this;
  }

  private key(field: number, wire: 0 | 2 | 5): this {
    return this.push(varint((field << 3) | wire));
  }

  int(field: number, v: number | bigint): this {
    return this.key(field, 0).push(varint(v));
  }

  float(field: number, v: number): this {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    return this.key(field, 5).push(b);
  }

  bytes(field: number, b: Uint8Array): this {
    return this.key(field, 2).push(varint(b.length)).push(b);
  }

  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  message(field: number, m: Message): this {
    this.key(field, 2).push(varint(m.length));
    for (const c of m.chunks) this.push(c);
    return this;
  }

  /** The encoded message, in one buffer. */
  finish(): Uint8Array {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}
