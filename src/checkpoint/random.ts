/**
 * Deterministic random weights: a xorshift32 stream per tensor, turned into ~normal values through
 * a 65536-entry table so that filling hundreds of millions of elements costs one shift and one load
 * each.
 */

export type StorageDtype = 'BF16' | 'F16' | 'F32'

/**
 * FNV-1a over the tensor name mixed with the seed: every tensor gets its own stream, so sharding or
 * tensor order never changes the values.
 */
export function tensorSeed(seed: number, name: string): number {
  let h = (0x811c9dc5 ^ Math.imul(seed | 0, 0x9e3779b1)) >>> 0
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i)
    h = Math.imul(h, 0x01000193) >>> 0
  }
  // xorshift32 must not start at 0.
  return h === 0 ? 0x6d2b79f5 : h
}

/** The per-tensor stream; `next()` returns a non-zero uint32. */
export class XorShift32 {
  private s: number
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x6d2b79f5
  }
  next(): number {
    let x = this.s
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    this.s = x >>> 0
    return this.s
  }
  /** Uniform in (0, 1). */
  uniform(): number {
    return (this.next() + 0.5) / 4294967296
  }
}

const bf16Scratch = new Float32Array(1)
const bf16Bits = new Uint32Array(bf16Scratch.buffer)

/** f32 -> bf16 bits, round to nearest even (the values here are finite). */
export function toBf16Bits(v: number): number {
  bf16Scratch[0] = v
  const u = bf16Bits[0]!
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff
}

const f16Scratch = new Float16Array(1)
const f16Bits = new Uint16Array(f16Scratch.buffer)

export function toF16Bits(v: number): number {
  f16Scratch[0] = v
  return f16Bits[0]!
}

/**
 * 65536 samples of mean + std * N(0, 1) (Box-Muller from their own stream), already in the storage
 * dtype: Uint16Array of bf16/f16 bits, or Float32Array.
 */
export function normalTable(
  mean: number,
  std: number,
  dtype: StorageDtype,
  seed: number,
): Uint16Array | Float32Array {
  const rng = new XorShift32(seed ^ 0x5bd1e995)
  const out = dtype === 'F32' ? new Float32Array(65536) : new Uint16Array(65536)
  for (let i = 0; i < 65536; i += 2) {
    const r = Math.sqrt(-2 * Math.log(rng.uniform()))
    const a = 2 * Math.PI * rng.uniform()
    const z0 = mean + std * r * Math.cos(a)
    const z1 = mean + std * r * Math.sin(a)
    if (dtype === 'F32') {
      out[i] = z0
      out[i + 1] = z1
    } else {
      const conv = dtype === 'BF16' ? toBf16Bits : toF16Bits
      out[i] = conv(z0)
      out[i + 1] = conv(z1)
    }
  }
  return out
}

/** Fills out[0..n) from the table; each xorshift step yields two 16-bit indices. */
export function fillFromTable(
  out: Uint16Array | Float32Array,
  n: number,
  table: Uint16Array | Float32Array,
  rng: XorShift32,
): void {
  let i = 0
  for (; i + 1 < n; i += 2) {
    const r = rng.next()
    out[i] = table[r & 0xffff]!
    out[i + 1] = table[r >>> 16]!
  }
  if (i < n) out[i] = table[rng.next() & 0xffff]!
}
