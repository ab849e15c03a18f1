/**
 * writeGptqTwins(): a GPTQ int4 checkpoint (AutoGPTQ v1 layout: qweight / qzeros / scales / g_idx, with
 * quantization_config) and its dequantized F32 twin, from one random checkpoint. The projections are quantized
 * round-to-nearest per group (symmetric or asymmetric zero points, optional desc_act g_idx permutation); the twin
 * holds exactly (q - zero) * scale, so both must give the same logits up to summation order.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { toF16Bits } from './random'
import { writeSafetensors, type TensorSpec } from './safetensors-writer'
import { writeCheckpoint, type CheckpointOptions } from './write-checkpoint'

export interface GptqOptions extends Omit<CheckpointOptions, 'dtype' | 'editTensors' | 'shards'> {
  group?: number // input features per group; -1 = per channel (default 64)
  sym?: boolean // default true (zero point 8)
  descAct?: boolean // g_idx: a random permutation of the group assignment (default false)
}

export interface Tensor {
  spec: TensorSpec
  data: Uint8Array
}

export function readSafetensors(path: string): Tensor[] {
  const buf = readFileSync(path)
  const n = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<
    string,
    { dtype: TensorSpec['dtype']; shape: number[]; data_offsets: [number, number] }
  >
  return Object.entries(header)
    .filter(([k]) => k !== '__metadata__')
    .map(([name, e]) => ({
      spec: { name, dtype: e.dtype, shape: e.shape },
      data: new Uint8Array(buf.subarray(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1])),
    }))
}

function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1
  const e = (h >> 10) & 0x1f
  const m = h & 0x3ff
  if (e === 0) return s * m * 2 ** -24
  if (e === 31) return m ? NaN : s * Infinity
  return s * (1 + m / 1024) * 2 ** (e - 15)
}

const PROJ = /\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$/

/** Writes `${dir}/gptq` and `${dir}/twin`; returns both paths. */
export function writeGptqTwins(dir: string, opts: GptqOptions = {}): { gptq: string; twin: string } {
  const sym = opts.sym ?? true
  const twin = join(dir, 'twin')
  const gptq = join(dir, 'gptq')
  const base = writeCheckpoint(twin, { ...opts, dtype: 'f32' })
  writeCheckpoint(gptq, { ...opts, dtype: 'f32' }) // tokenizer, generation config; tensors replaced below
  const tensors = readSafetensors(join(twin, 'model.safetensors'))
  const outGptq: Tensor[] = []
  const outTwin: Tensor[] = []
  let seed = 12345
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32)
  for (const t of tensors) {
    if (!PROJ.test(t.spec.name)) {
      outGptq.push(t)
      outTwin.push(t)
      continue
    }
    const [N, K] = t.spec.shape as [number, number]
    const group = opts.group === undefined ? 64 : opts.group === -1 ? K : opts.group
    const G = K / group
    if (!Number.isInteger(G) || K % 8 !== 0 || N % 8 !== 0) throw new Error(`gptq: ${t.spec.name} [${N}, ${K}] vs group ${group}`)
    const w = new Float32Array(t.data.buffer, t.data.byteOffset, N * K)
    const gIdx = new Int32Array(K)
    for (let k = 0; k < K; k++) gIdx[k] = Math.floor(k / group)
    if (opts.descAct) {
      for (let k = K - 1; k > 0; k--) {
        const j = Math.floor(rand() * (k + 1))
        ;[gIdx[k], gIdx[j]] = [gIdx[j]!, gIdx[k]!]
      }
    }
    const scales = new Uint16Array(G * N) // [G][N]
    const zeros = new Uint8Array(G * N) // [G][N]
    const q = new Uint8Array(N * K)
    const deq = new Float32Array(N * K)
    for (let n = 0; n < N; n++) {
      for (let g = 0; g < G; g++) {
        let mn = 0
        let mx = 0
        for (let k = 0; k < K; k++) {
          if (gIdx[k] !== g) continue
          mn = Math.min(mn, w[n * K + k]!)
          mx = Math.max(mx, w[n * K + k]!)
        }
        let s: number
        let z: number
        if (sym) {
          s = f16ToF32(toF16Bits(Math.max(Math.abs(mn), Math.abs(mx)) / 7.5))
          z = 8
        } else {
          s = f16ToF32(toF16Bits((mx - mn) / 15))
          z = s > 0 ? Math.min(15, Math.max(1, Math.round(-mn / s))) : 1
        }
        scales[g * N + n] = toF16Bits(s)
        zeros[g * N + n] = z
        for (let k = 0; k < K; k++) {
          if (gIdx[k] !== g) continue
          const v = s > 0 ? Math.min(15, Math.max(0, Math.round(w[n * K + k]! / s) + z)) : z
          q[n * K + k] = v
          deq[n * K + k] = Math.fround((v - z) * s)
        }
      }
    }
    const prefix = t.spec.name.slice(0, -'.weight'.length)
    const qweight = new Int32Array((K / 8) * N)
    for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) qweight[(k >> 3) * N + n]! |= q[n * K + k]! << (4 * (k & 7))
    const qzeros = new Int32Array(G * (N / 8))
    for (let g = 0; g < G; g++) for (let n = 0; n < N; n++) qzeros[g * (N / 8) + (n >> 3)]! |= (zeros[g * N + n]! - 1) << (4 * (n & 7))
    const bytes = (a: Int32Array | Uint16Array | Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
    outGptq.push(
      { spec: { name: prefix + '.qweight', dtype: 'I32', shape: [K / 8, N] }, data: bytes(qweight) },
      { spec: { name: prefix + '.qzeros', dtype: 'I32', shape: [G, N / 8] }, data: bytes(qzeros) },
      { spec: { name: prefix + '.scales', dtype: 'F16', shape: [G, N] }, data: bytes(scales) },
      { spec: { name: prefix + '.g_idx', dtype: 'I32', shape: [K] }, data: bytes(gIdx) },
    )
    outTwin.push({ spec: t.spec, data: bytes(deq) })
  }
  const write = (path: string, ts: Tensor[]) => {
    const byName = new Map(ts.map((t) => [t.spec.name, t.data]))
    writeSafetensors(path, ts.map((t) => t.spec), (spec, out) => out(byName.get(spec.name)!))
  }
  write(join(twin, 'model.safetensors'), outTwin)
  write(join(gptq, 'model.safetensors'), outGptq)
  const cfg = {
    ...base.config,
    quantization_config: {
      quant_method: 'gptq',
      bits: 4,
      group_size: opts.group ?? 64,
      sym,
      desc_act: opts.descAct ?? false,
      checkpoint_format: 'gptq',
    },
  }
  writeFileSync(join(gptq, 'config.json'), JSON.stringify(cfg, null, 2) + '\n')
  return { gptq, twin }
}
