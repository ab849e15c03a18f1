/**
 * Independent InfLLM v2 block selection in Float64, written from /work/shared/docs/INFLLM_V2.md
 * steps 1-9 only (no engine code): the sparse half of the reference forward pass
 * (minicpm4-ref.ts). Per query slot p and KV head g it returns the token set stage 2 attends,
 * or null when the query is dense.
 *
 * It takes the prefill view of steps 5-7, as one HF call over all N tokens would: every query ranks
 * all ceil(N / B) blocks, kernels it cannot see count 0, and the causal drop removes the future
 * blocks afterwards. The engine computes the decode view (nb = qb + 1); INFLLM_V2.md says both select
 * the same blocks, which this comparison checks.
 */

export type SparseVariant = 'hf' | 'v2'

export interface SparseRefConfig {
  kernelSize: number // ks
  kernelStride: number // st
  initBlocks: number
  blockSize: number // B
  windowBlocks: number // L = window_size / B
  topk: number
  denseLen: number
  variant: SparseVariant
  lse: 'c1' | 'c2' // "hf" defaults to the exact LSE over C1, "v2" to the C2 approximation (D2)
}

/** sparse_config of a config.json with a variant; the LSE follows the variant's default (D2). */
export function sparseRefConfig(sc: Record<string, any>, variant: SparseVariant): SparseRefConfig {
  const B = sc.block_size ?? 64
  return {
    kernelSize: sc.kernel_size ?? 32,
    kernelStride: sc.kernel_stride ?? 16,
    initBlocks: sc.init_blocks ?? 1,
    blockSize: B,
    windowBlocks: Math.floor((sc.window_size ?? 2048) / B),
    topk: sc.topk ?? 64,
    denseLen: sc.dense_len ?? 8192,
    variant,
    lse: variant === 'hf' ? 'c1' : 'c2',
  }
}

/** What the selection did, for the test to print and assert on. */
export interface SparseStats {
  sparseQueries: number // (query, KV head) pairs past the dense switch
  blocksSeen: number // causal blocks 0..qb of those pairs
  blocksDropped: number // of those, not attended
  // Top-k boundary between the last kept and the first rejected scored block: exact ties (adjacent
  // blocks sharing their best kernel, D7; broken by block index) and the smallest relative gap else.
  exactTies: number
  minGap: number
}

export function emptyStats(): SparseStats {
  return { sparseQueries: 0, blocksSeen: 0, blocksDropped: 0, exactTies: 0, minGap: Infinity }
}

/**
 * One layer's selection over post-RoPE keys k [N, nKv, hd]. Step 2: C1[j] = mean(K[st j .. st j + ks))
 * and C2 likewise with 4 st, 4 ks, complete windows only.
 */
export class SparseLayerRef {
  private readonly c1: Float64Array[] // per KV head: [n1, hd]
  private readonly c2: Float64Array[]
  private readonly n1: number
  private readonly n2: number

  constructor(
    private readonly cfg: SparseRefConfig,
    k: Float64Array,
    private readonly N: number,
    private readonly nKv: number,
    private readonly hd: number,
  ) {
    const { kernelSize: ks, kernelStride: st } = cfg
    const compress = (size: number, stride: number) => {
      const n = N >= size ? Math.floor((N - size) / stride) + 1 : 0
      const out: Float64Array[] = []
      for (let g = 0; g < nKv; g++) {
        const c = new Float64Array(n * hd)
        for (let j = 0; j < n; j++)
          for (let i = 0; i < size; i++)
            for (let d = 0; d < hd; d++) c[j * hd + d]! += k[((stride * j + i) * nKv + g) * hd + d]! / size
        out.push(c)
      }
      return { out, n }
    }
    const a = compress(ks, st)
    const b = compress(4 * ks, 4 * st)
    this.c1 = a.out
    this.n1 = a.n
    this.c2 = b.out
    this.n2 = b.n
  }

  /**
   * The slots query p attends through KV head g (ascending), or null if it is dense (step 1, the
   * per-query switch). q holds the row's query heads; heads g*G .. g*G+G-1 form the group.
   */
  select(p: number, q: Float64Array, qOff: number, g: number, group: number, stats: SparseStats): number[] | null {
    const c = this.cfg
    if (p + 1 < c.denseLen) return null
    const B = c.blockSize
    const st = c.kernelStride
    const ks = c.kernelSize
    const L = c.windowBlocks
    const qb = Math.floor(p / B)
    const nb = Math.ceil(this.N / B) // prefill view: every block of the call, future ones too
    const hd = this.hd
    const scale = 1 / Math.sqrt(hd)
    // Step 3: kernel j is visible iff its last token st*j + ks - 1 <= p.
    const vis1 = Math.min(this.n1, p - ks + 1 >= 0 ? Math.floor((p - ks + 1) / st) + 1 : 0)
    const vis2 = Math.min(this.n2, p - 4 * ks + 1 >= 0 ? Math.floor((p - 4 * ks + 1) / (4 * st)) + 1 : 0)

    // Step 4: S_g[j] = sum over the group's heads of exp(s_h[j] - lse_h); 0 for kernels p cannot see.
    const S = new Float64Array(this.n1)
    for (let hh = 0; hh < group; hh++) {
      const qh = qOff + (g * group + hh) * hd
      const dot = (c: Float64Array, j: number) => {
        let s = 0
        for (let d = 0; d < hd; d++) s += q[qh + d]! * c[j * hd + d]!
        return s * scale
      }
      const s1 = Array.from({ length: vis1 }, (_, j) => dot(this.c1[g]!, j))
      const sl = c.lse === 'c1' ? s1 : Array.from({ length: vis2 }, (_, j) => dot(this.c2[g]!, j))
      if (sl.length === 0) continue // no visible kernel: the head adds 0 (D11)
      const m = Math.max(...sl)
      const lse = m + Math.log(sl.reduce((acc, v) => acc + Math.exp(v - m), 0))
      for (let j = 0; j < vis1; j++) S[j]! += Math.exp(s1[j]! - lse)
    }

    // Step 5: max-pool, kernel ps + 1, stride ps, padding 1: block b takes kernels ps*b-1 .. ps*b+ps-1.
    const ps = B / st
    const R = new Float64Array(nb).fill(-Infinity)
    for (let b = 0; b < nb; b++)
      for (let j = Math.max(0, ps * b - 1); j <= ps * b + ps - 1 && j < this.n1; j++) R[b] = Math.max(R[b]!, S[j]!)

    // Step 6: forced blocks.
    for (let b = 0; b < nb; b++) {
      if (c.variant === 'hf') {
        if (b < c.initBlocks) R[b] = Infinity
        else if (b > qb - L && b <= qb) R[b] = -Infinity
      } else if (b < c.initBlocks || (b >= qb - L && b <= qb)) R[b] = Infinity
    }

    // Step 7: top-K by (R descending, index ascending), then the causal drop.
    const K = Math.min(c.variant === 'hf' ? c.topk : c.topk + L, nb)
    const order = Array.from({ length: nb }, (_, b) => b).sort((a, b) => R[b]! - R[a]! || a - b)
    const keep = new Set<number>()
    for (let i = 0; i < K; i++) {
      const b = order[i]!
      if (c.variant === 'hf' ? b < qb : b <= qb) keep.add(b)
    }
    if (K < nb) {
      const last = R[order[K - 1]!]!
      const next = R[order[K]!]!
      if (Number.isFinite(last) && Number.isFinite(next)) {
        if (last === next) stats.exactTies++
        else stats.minGap = Math.min(stats.minGap, (last - next) / last)
      }
    }

    // Step 8: "hf" adds the sliding window of L blocks ending at qb.
    if (c.variant === 'hf') for (let b = Math.max(0, qb - L + 1); b <= qb; b++) keep.add(b)

    stats.sparseQueries++
    stats.blocksSeen += qb + 1
    stats.blocksDropped += qb + 1 - keep.size
    // Step 9: the tokens of the selected blocks up to p.
    const slots: number[] = []
    for (const b of [...keep].sort((x, y) => x - y))
      for (let t = b * B; t < b * B + B && t <= p; t++) slots.push(t)
    return slots
  }
}
