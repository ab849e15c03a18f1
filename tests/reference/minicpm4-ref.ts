/**
 * Independent MiniCPM4 forward pass, the oracle of the parity tests. Written from MINICPM4.md
 * sections 3-4 only: plain loops in Float64, full causal softmax attention recomputed from
 * position 0, no KV cache, no engine code. Deliberately slow; meant for tiny shapes. With a
 * sparse config each query attends only the slots InfLLM v2 selects (infllm-v2-ref.ts).
 *
 *   x = E[ids] * scale_emb
 *   per layer: x += r * Wo(attn(rope(Wq a), rope(Wk a), Wv a)),  a = rmsnorm(x)
 *              x += r * Wdown(silu(Wgate b) * Wup b),           b = rmsnorm(x)
 *   logits = (rmsnorm(x) / w) . Whead^T
 *   r = scale_depth / sqrt(L), w = hidden / dim_model_base
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

import { type SparseRefConfig, type SparseStats, emptyStats, SparseLayerRef } from './infllm-v2-ref'
import { readCheckpointTensors, type StoredTensor } from './safetensors-reader'

const f32 = Math.fround

export interface RefConfig {
  nVocab: number
  nEmbd: number
  nLayer: number
  nHead: number
  nHeadKv: number
  headDim: number
  nFf: number
  eps: number
  ropeTheta: number
  scaleEmb: number
  residualScale: number
  logitDivisor: number
  tied: boolean
  maxPos: number
  // LongRoPE; both empty = plain RoPE (factor 1).
  longFactor: number[]
  shortFactor: number[]
  origMaxPos: number
}

export function refConfig(cfg: Record<string, any>): RefConfig {
  const nHead = cfg.num_attention_heads
  const rope = cfg.rope_scaling
  const nLayer = cfg.num_hidden_layers
  return {
    nVocab: cfg.vocab_size,
    nEmbd: cfg.hidden_size,
    nLayer,
    nHead,
    nHeadKv: cfg.num_key_value_heads ?? nHead,
    headDim: cfg.head_dim ?? cfg.hidden_size / nHead,
    nFf: cfg.intermediate_size,
    eps: cfg.rms_norm_eps ?? 1e-6,
    ropeTheta: cfg.rope_theta ?? 10000,
    scaleEmb: cfg.scale_emb ?? 1,
    residualScale: (cfg.scale_depth ?? 1) / Math.sqrt(nLayer),
    logitDivisor: cfg.dim_model_base ? cfg.hidden_size / cfg.dim_model_base : 1,
    tied: cfg.tie_word_embeddings ?? true,
    maxPos: cfg.max_position_embeddings,
    longFactor: rope?.long_factor ?? [],
    shortFactor: rope?.short_factor ?? [],
    origMaxPos: rope?.original_max_position_embeddings ?? cfg.max_position_embeddings,
  }
}

/**
 * HF MiniCPMLongRoPE: the cos/sin cache is built for S = max(max_position_embeddings, sequence
 * length) and uses long_factor when S > original_max_position_embeddings. Amplitude: mscale =
 * sqrt(1 + ln s / ln orig), s = max / orig (HF has no s <= 1 guard; s = 1 gives exactly 1).
 */
export class RefRope {
  readonly mscale: number
  private readonly perPos: Float64Array // f32(1 / f_i)
  private readonly inv: Float64Array // f32 base inverse frequency

  constructor(
    private readonly c: RefConfig,
    seqLen: number,
  ) {
    const half = c.headDim / 2
    const scaled = c.longFactor.length > 0
    const useLong = Math.max(c.maxPos, seqLen) > c.origMaxPos
    const factors = scaled ? (useLong ? c.longFactor : c.shortFactor) : []
    if (scaled && factors.length !== half)
      throw new Error(`reference: ${factors.length} rope factors, need ${half}`)
    this.mscale = scaled
      ? Math.sqrt(1 + Math.log(c.maxPos / c.origMaxPos) / Math.log(c.origMaxPos))
      : 1
    this.perPos = new Float64Array(half)
    this.inv = new Float64Array(half)
    for (let i = 0; i < half; i++) {
      // Same fp32 order as HF: inv = 1 / base^(2i/d); theta = (p * (1/f)) * inv.
      this.inv[i] = f32(1 / f32(Math.pow(c.ropeTheta, f32(f32(2 * i) / c.headDim))))
      this.perPos[i] = scaled ? f32(1 / f32(factors[i]!)) : 1
    }
  }

  /** theta_i(p) exactly as the fp32 HF tables hold it. */
  angle(p: number, i: number): number {
    return f32(f32(p * this.perPos[i]!) * this.inv[i]!)
  }

  /** Split-half rotation of head vector u[off .. off + hd) at position p; cos/sin carry mscale. */
  apply(u: Float64Array, off: number, p: number): void {
    const half = this.c.headDim / 2
    for (let i = 0; i < half; i++) {
      const th = this.angle(p, i)
      const cs = Math.cos(th) * this.mscale
      const sn = Math.sin(th) * this.mscale
      const a = u[off + i]!
      const b = u[off + i + half]!
      u[off + i] = a * cs - b * sn
      u[off + i + half] = b * cs + a * sn
    }
  }
}

/** y[T, O] = x[T, I] . W^T with W stored [O, I]. */
function matmul(x: Float64Array, T: number, w: StoredTensor): Float64Array {
  const [O, I] = w.shape as [number, number]
  const y = new Float64Array(T * O)
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < O; o++) {
      let s = 0
      for (let i = 0; i < I; i++) s += x[t * I + i]! * w.data[o * I + i]!
      y[t * O + o] = s
    }
  }
  return y
}

function rmsnorm(
  x: Float64Array,
  T: number,
  H: number,
  g: StoredTensor,
  eps: number,
): Float64Array {
  const y = new Float64Array(T * H)
  for (let t = 0; t < T; t++) {
    let ss = 0
    for (let i = 0; i < H; i++) ss += x[t * H + i]! ** 2
    const scale = 1 / Math.sqrt(ss / H + eps)
    for (let i = 0; i < H; i++) y[t * H + i] = x[t * H + i]! * scale * g.data[i]!
  }
  return y
}

export class ReferenceModel {
  private constructor(
    readonly config: RefConfig,
    private readonly w: Map<string, StoredTensor>,
  ) {}

  static load(dir: string): ReferenceModel {
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'))
    return new ReferenceModel(refConfig(cfg), readCheckpointTensors(dir))
  }

  private t(name: string): StoredTensor {
    const v = this.w.get(name)
    if (!v) throw new Error(`reference: missing tensor ${name}`)
    return v
  }

  /**
   * Logits (divided by the logit divisor) after each token index in `rows` (default: the last).
   * sparse: run InfLLM v2 attention (token index = slot = position); stats collects its selections.
   */
  forward(
    tokens: ArrayLike<number>,
    rows: number[] = [tokens.length - 1],
    sparse: SparseRefConfig | null = null,
    stats: SparseStats = emptyStats(),
  ): Float64Array[] {
    const c = this.config
    const T = tokens.length
    const H = c.nEmbd
    const hd = c.headDim
    const group = c.nHead / c.nHeadKv
    const rope = new RefRope(c, T)
    const emb = this.t('model.embed_tokens.weight')

    const x = new Float64Array(T * H)
    for (let t = 0; t < T; t++) {
      const id = tokens[t]!
      if (!(id >= 0 && id < c.nVocab)) throw new Error(`reference: token ${id} out of range`)
      for (let i = 0; i < H; i++) x[t * H + i] = emb.data[id * H + i]! * c.scaleEmb
    }

    for (let l = 0; l < c.nLayer; l++) {
      const p = `model.layers.${l}.`
      const a = rmsnorm(x, T, H, this.t(p + 'input_layernorm.weight'), c.eps)
      const q = matmul(a, T, this.t(p + 'self_attn.q_proj.weight'))
      const k = matmul(a, T, this.t(p + 'self_attn.k_proj.weight'))
      const v = matmul(a, T, this.t(p + 'self_attn.v_proj.weight'))
      for (let t = 0; t < T; t++) {
        for (let h = 0; h < c.nHead; h++) rope.apply(q, (t * c.nHead + h) * hd, t)
        for (let h = 0; h < c.nHeadKv; h++) rope.apply(k, (t * c.nHeadKv + h) * hd, t)
      }

      // Causal GQA attention: query head h reads KV head floor(h / group) (repeat_interleave).
      // Sparse: each (query, KV head) attends its selected slots instead of 0..t.
      const o = new Float64Array(T * c.nHead * hd)
      const scores = new Float64Array(T)
      const scale = 1 / Math.sqrt(hd)
      const sel = sparse ? new SparseLayerRef(sparse, k, T, c.nHeadKv, hd) : null
      const causal = Array.from({ length: T }, (_, s) => s)
      for (let t = 0; t < T; t++) {
        for (let kvh = 0; kvh < c.nHeadKv; kvh++) {
          const slots = sel?.select(t, q, t * c.nHead * hd, kvh, group, stats) ?? causal.slice(0, t + 1)
          for (let h = kvh * group; h < (kvh + 1) * group; h++) {
            const qo = (t * c.nHead + h) * hd
            let mx = -Infinity
            for (const s of slots) {
              const ko = (s * c.nHeadKv + kvh) * hd
              let d = 0
              for (let i = 0; i < hd; i++) d += q[qo + i]! * k[ko + i]!
              scores[s] = d * scale
              if (scores[s]! > mx) mx = scores[s]!
            }
            let sum = 0
            for (const s of slots) sum += scores[s] = Math.exp(scores[s]! - mx)
            for (const s of slots) {
              const pr = scores[s]! / sum
              const vo = (s * c.nHeadKv + kvh) * hd
              for (let i = 0; i < hd; i++) o[qo + i]! += pr * v[vo + i]!
            }
          }
        }
      }
      const attn = matmul(o, T, this.t(p + 'self_attn.o_proj.weight'))
      for (let i = 0; i < x.length; i++) x[i]! += c.residualScale * attn[i]!

      const b = rmsnorm(x, T, H, this.t(p + 'post_attention_layernorm.weight'), c.eps)
      const gate = matmul(b, T, this.t(p + 'mlp.gate_proj.weight'))
      const up = matmul(b, T, this.t(p + 'mlp.up_proj.weight'))
      for (let i = 0; i < gate.length; i++)
        gate[i] = (gate[i]! / (1 + Math.exp(-gate[i]!))) * up[i]!
      const m = matmul(gate, T, this.t(p + 'mlp.down_proj.weight'))
      for (let i = 0; i < x.length; i++) x[i]! += c.residualScale * m[i]!
    }

    const head = c.tied ? emb : this.t('lm_head.weight')
    const norm = this.t('model.norm.weight')
    return rows.map((r) => {
      if (!(r >= 0 && r < T)) throw new Error(`reference: row ${r} out of range`)
      const xr = rmsnorm(x.subarray(r * H, (r + 1) * H), 1, H, norm, c.eps)
      for (let i = 0; i < H; i++) xr[i] = xr[i]! / c.logitDivisor
      return matmul(xr, 1, head)
    })
  }
}
