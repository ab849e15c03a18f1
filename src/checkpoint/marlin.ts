/**
 * writeMarlinRepack(): CPM.cu's `*-marlin-cpmcu` layout from a symmetric GPTQ int4 checkpoint (AutoGPTQ v1, no
 * desc_act), as ENGINE_REFERENCE §5 describes, doing the permutation forward:
 *   - q/k/v concatenated along N into `self_attn.qkv_proj`, gate/up into `mlp.gate_up_proj`;
 *   - the [K, N] 4-bit values cut into 16x16 tiles, reshaped to [K/16, N*16], each 1024-element chunk permuted by
 *     Marlin's mma-fragment permutation (with the 8-nibble interleave), packed 8 nibbles per int32 -> [K/16, 2N];
 *   - scales [G, N] permuted in chunks of 64 (grouped, group < K) or 32 (per channel, group = K or -1);
 *   - everything in `model_gptq.safetensors`; config.json (with its quantization_config) and tokenizer files
 *     copied. The loader (csrc/model/marlin.cpp) undoes this into the engine's q4 layout.
 */
import { copyFileSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'

import { readSafetensors, type Tensor } from './gptq'
import { writeSafetensors } from './safetensors-writer'

/** Marlin's weight permutation of a 1024-element chunk (4-bit) and its scale permutations (64 and 32 entries). */
export function marlinPerms(): { perm: number[]; scalePerm: number[]; scalePermSingle: number[] } {
  const base: number[] = []
  for (let i = 0; i < 32; i++) {
    const perm1: number[] = []
    const col = Math.floor(i / 4)
    for (const block of [0, 1])
      for (const row of [2 * (i % 4), 2 * (i % 4) + 1, 2 * ((i % 4) + 4), 2 * ((i % 4) + 4) + 1]) perm1.push(16 * row + col + 8 * block)
    for (let j = 0; j < 4; j++) base.push(...perm1.map((p) => p + 256 * j))
  }
  const interleave = [0, 2, 4, 6, 1, 3, 5, 7]
  const perm: number[] = []
  for (let r = 0; r < base.length / 8; r++) for (const i of interleave) perm.push(base[r * 8 + i]!)
  const scalePerm: number[] = []
  for (let i = 0; i < 8; i++) for (let j = 0; j < 8; j++) scalePerm.push(i + 8 * j)
  const scalePermSingle: number[] = []
  for (let i = 0; i < 4; i++) for (const j of [0, 1, 8, 9, 16, 17, 24, 25]) scalePermSingle.push(2 * i + j)
  return { perm, scalePerm, scalePermSingle }
}

/** Repacks 4-bit values q[k * N + n] (0..15) and scales [G, N] (f16 bits) into Marlin's qweight and scales. */
export function marlinRepack(q: Uint8Array, scales: Uint16Array, K: number, N: number, G: number): { qweight: Int32Array; scales: Uint16Array } {
  if (K % 16 !== 0 || N % 64 !== 0) throw new Error(`marlin: [K ${K}, N ${N}] needs K % 16 == 0 and N % 64 == 0`)
  const { perm, scalePerm, scalePermSingle } = marlinPerms()
  const W = N * 16 // row width after tiling
  const tiled = new Uint8Array(K * N)
  for (let k = 0; k < K; k++)
    for (let n = 0; n < N; n++) tiled[(k >> 4) * W + (n >> 4) * 256 + (k & 15) * 16 + (n & 15)] = q[k * N + n]!
  const qweight = new Int32Array((K / 16) * (W / 8))
  for (let r = 0; r < K / 16; r++)
    for (let c = 0; c < W; c += 1024)
      for (let j = 0; j < 1024; j++) {
        const e = r * W + c + j
        qweight[e >> 3]! |= tiled[r * W + c + perm[j]!]! << (4 * (e & 7))
      }
  const sp = G > 1 ? scalePerm : scalePermSingle
  const out = new Uint16Array(G * N)
  for (let b = 0; b < (G * N) / sp.length; b++) for (let j = 0; j < sp.length; j++) out[b * sp.length + j] = scales[b * sp.length + sp[j]!]!
  return { qweight, scales: out }
}

const FUSED: [string, string[]][] = [
  ['self_attn.qkv_proj', ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj']],
  ['mlp.gate_up_proj', ['mlp.gate_proj', 'mlp.up_proj']],
  ['self_attn.o_proj', ['self_attn.o_proj']],
  ['mlp.down_proj', ['mlp.down_proj']],
]

/** Writes the Marlin repack of the GPTQ checkpoint in `gptqDir` into `out` (model_gptq.safetensors). */
export function writeMarlinRepack(gptqDir: string, out: string): string {
  const cfg = JSON.parse(readFileSync(join(gptqDir, 'config.json'), 'utf8')) as {
    num_hidden_layers: number
    quantization_config?: { bits?: number; sym?: boolean; desc_act?: boolean; group_size?: number }
  }
  const qc = cfg.quantization_config
  if (!qc || qc.bits !== 4 || qc.sym !== true || qc.desc_act === true) throw new Error('marlin: needs a symmetric 4-bit GPTQ checkpoint without desc_act')
  const tensors = new Map(readSafetensors(join(gptqDir, 'model.safetensors')).map((t) => [t.spec.name, t]))
  const outT: Tensor[] = []
  const used = new Set<string>()
  for (let l = 0; l < cfg.num_hidden_layers; l++) {
    for (const [fused, parts] of FUSED) {
      const p = `model.layers.${l}.`
      const qs = parts.map((name) => {
        const qw = tensors.get(p + name + '.qweight')!
        const sc = tensors.get(p + name + '.scales')!
        for (const s of ['.qweight', '.scales', '.qzeros', '.g_idx']) used.add(p + name + s)
        return { qw, sc, K: qw.spec.shape[0]! * 8, N: qw.spec.shape[1]!, G: sc.spec.shape[0]! }
      })
      const K = qs[0]!.K
      const G = qs[0]!.G
      const N = qs.reduce((a, x) => a + x.N, 0)
      const q = new Uint8Array(K * N)
      const scales = new Uint16Array(G * N)
      let n0 = 0
      for (const x of qs) {
        const words = new Int32Array(x.qw.data.buffer.slice(x.qw.data.byteOffset, x.qw.data.byteOffset + x.qw.data.byteLength))
        const sc = new Uint16Array(x.sc.data.buffer.slice(x.sc.data.byteOffset, x.sc.data.byteOffset + x.sc.data.byteLength))
        for (let k = 0; k < K; k++) for (let n = 0; n < x.N; n++) q[k * N + n0 + n] = (words[(k >> 3) * x.N + n]! >>> (4 * (k & 7))) & 15
        for (let g = 0; g < G; g++) for (let n = 0; n < x.N; n++) scales[g * N + n0 + n] = sc[g * x.N + n]!
        n0 += x.N
      }
      const r = marlinRepack(q, scales, K, N, G)
      const bytes = (a: Int32Array | Uint16Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
      outT.push(
        { spec: { name: p + fused + '.qweight', dtype: 'I32', shape: [K / 16, 2 * N] }, data: bytes(r.qweight) },
        { spec: { name: p + fused + '.scales', dtype: 'F16', shape: [G, N] }, data: bytes(r.scales) },
      )
    }
  }
  for (const [name, t] of tensors) if (!used.has(name)) outT.push(t)
  mkdirSync(out, { recursive: true })
  const byName = new Map(outT.map((t) => [t.spec.name, t.data]))
  writeSafetensors(join(out, 'model_gptq.safetensors'), outT.map((t) => t.spec), (spec, write) => write(byName.get(spec.name)!))
  for (const name of readdirSync(gptqDir))
    if (!/\.safetensors(\.index\.json)?$/.test(name) && statSync(join(gptqDir, name)).isFile()) copyFileSync(join(gptqDir, name), join(out, name))
  return out
}
