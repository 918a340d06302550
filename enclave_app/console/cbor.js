// Minimal CBOR (RFC 8949) for COSE: definite lengths only, bounded depth and size.
// decode() refuses indefinite lengths, floats, and tags other than the ones asked for.

export const MAX_DEPTH = 16;
export const MAX_ITEMS = 10000;

export class CborError extends Error {}

export class Tagged {
  constructor(tag, value) {
    this.tag = tag;
    this.value = value;
  }
}

export function decode(bytes, { allowedTags = [18] } = {}) {
  let pos = 0;
  let items = 0;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  function need(n) {
    if (pos + n > bytes.length) throw new CborError("CBOR ends early");
  }
  function argument(info) {
    if (info < 24) return info;
    if (info === 24) { need(1); return bytes[pos++]; }
    if (info === 25) { need(2); const v = view.getUint16(pos); pos += 2; return v; }
    if (info === 26) { need(4); const v = view.getUint32(pos); pos += 4; return v; }
    if (info === 27) {
      need(8);
      const v = view.getBigUint64(pos);
      pos += 8;
      if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new CborError("CBOR integer too large");
      return Number(v);
    }
    throw new CborError("indefinite or reserved CBOR length");
  }
  function item(depth) {
    if (depth > MAX_DEPTH) throw new CborError("CBOR nested too deep");
    if (++items > MAX_ITEMS) throw new CborError("CBOR has too many items");
    need(1);
    const head = bytes[pos++];
    const major = head >> 5;
    const info = head & 31;
    if (major === 7) {
      if (info === 20) return false;
      if (info === 21) return true;
      if (info === 22) return null;
      throw new CborError("unsupported CBOR simple value");
    }
    const arg = argument(info);
    switch (major) {
      case 0: return arg;
      case 1: return -1 - arg;
      case 2: { need(arg); const v = bytes.slice(pos, pos + arg); pos += arg; return v; }
      case 3: {
        need(arg);
        const v = new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(pos, pos + arg));
        pos += arg;
        return v;
      }
      case 4: {
        if (arg > bytes.length - pos) throw new CborError("CBOR array longer than its bytes");
        const out = [];
        for (let i = 0; i < arg; i++) out.push(item(depth + 1));
        return out;
      }
      case 5: {
        if (arg > bytes.length - pos) throw new CborError("CBOR map longer than its bytes");
        const out = new Map();
        for (let i = 0; i < arg; i++) {
          const key = item(depth + 1);
          if (typeof key !== "number" && typeof key !== "string") {
            throw new CborError("CBOR map keys must be integers or text");
          }
          out.set(key, item(depth + 1));
        }
        return out;
      }
      case 6: {
        if (!allowedTags.includes(arg) || depth > 0) throw new CborError(`unexpected CBOR tag ${arg}`);
        return new Tagged(arg, item(depth + 1));
      }
      default: throw new CborError("bad CBOR");
    }
  }
  const value = item(0);
  if (pos !== bytes.length) throw new CborError("trailing bytes after the CBOR item");
  return value;
}

function head(major, n, out) {
  if (n < 24) out.push((major << 5) | n);
  else if (n < 0x100) out.push((major << 5) | 24, n);
  else if (n < 0x10000) out.push((major << 5) | 25, n >> 8, n & 0xff);
  else if (n < 0x100000000) out.push((major << 5) | 26, (n >>> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
  else {
    const big = BigInt(n);
    out.push((major << 5) | 27);
    for (let shift = 56n; shift >= 0n; shift -= 8n) out.push(Number((big >> shift) & 0xffn));
  }
}

// Encodes numbers (integers), strings, Uint8Array, arrays, Maps (in insertion order, as
// cbor2 and CCF's tools write them), booleans, null and Tagged values.
export function encode(value) {
  const out = [];
  function put(v) {
    if (v === null) out.push(0xf6);
    else if (v === true) out.push(0xf5);
    else if (v === false) out.push(0xf4);
    else if (typeof v === "number") {
      if (!Number.isSafeInteger(v)) throw new CborError("only integers are encoded");
      if (v >= 0) head(0, v, out);
      else head(1, -1 - v, out);
    } else if (typeof v === "string") {
      const b = new TextEncoder().encode(v);
      head(3, b.length, out);
      for (const x of b) out.push(x);
    } else if (v instanceof Uint8Array) {
      head(2, v.length, out);
      for (const x of v) out.push(x);
    } else if (Array.isArray(v)) {
      head(4, v.length, out);
      v.forEach(put);
    } else if (v instanceof Map) {
      head(5, v.size, out);
      for (const [k, x] of v) { put(k); put(x); }
    } else if (v instanceof Tagged) {
      head(6, v.tag, out);
      put(v.value);
    } else throw new CborError("cannot encode this value");
  }
  put(value);
  return new Uint8Array(out);
}
