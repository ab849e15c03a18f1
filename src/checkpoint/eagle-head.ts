/**
 * A random EAGLE draft head for a target checkpoint, in the published MiniCPM4-8B-Eagle-FRSpec layout
 * (csrc/model/eagle.h): fc [H, 2H] with bias, input_norm1/2, one decoder layer `layers.0.*`; the embedding and
 * the LM head are the target's. For tests and benchmarks of speculative decoding (build/make-model eagle writes
 * the same layout natively).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tensorSeed, toBf16Bits, XorShift32 } from './random'
import { writeSafetensors, type TensorSpec } from './safetensors-writer'

export interface EagleHeadOptions {
  seed?: number
  /** Spread of the matrices (uniform); norm gains are 1 +- 0.1. */
  std?: number
}

export function writeEagleHead(targetDir: string, out: string, opts: EagleHeadOptions = {}): string {
  const cfg = JSON.parse(readFileSync(join(targetDir, 'config.json'), 'utf8')) as Record<string, number>
  const H = cfg.hidden_size!
  const nh = cfg.num_attention_heads!
  const nkv = cfg.num_key_value_heads ?? nh
  const hd = cfg.head_dim ?? H / nh
  const F = cfg.intermediate_size!
  mkdirSync(out, { recursive: true })
  const config = {
    architectures: ['MiniCPMEagle'],
    model_type: 'minicpm',
    hidden_size: H,
    intermediate_size: F,
    num_attention_heads: nh,
    num_key_value_heads: nkv,
    head_dim: hd,
    num_hidden_layers: 1,
    rms_norm_eps: cfg.rms_norm_eps ?? 1e-6,
    vocab_size: cfg.vocab_size,
    ...(cfg.scale_depth !== undefined ? { scale_depth: cfg.scale_depth } : {}),
    ...(cfg.dim_model_base !== undefined ? { dim_model_base: cfg.dim_model_base } : {}),
    ...(cfg.scale_emb !== undefined ? { scale_emb: cfg.scale_emb } : {}),
  }
  writeFileSync(join(out, 'config.json'), JSON.stringify(config, null, 2) + '\n')
  const p = 'layers.0.'
  const specs: TensorSpec[] = [
    ['fc.weight', [H, 2 * H]],
    ['fc.bias', [H]],
    ['input_norm1.weight', [H]],
    ['input_norm2.weight', [H]],
    [p + 'input_layernorm.weight', [H]],
    [p + 'self_attn.q_proj.weight', [nh * hd, H]],
    [p + 'self_attn.k_proj.weight', [nkv * hd, H]],
    [p + 'self_attn.v_proj.weight', [nkv * hd, H]],
    [p + 'self_attn.o_proj.weight', [H, nh * hd]],
    [p + 'post_attention_layernorm.weight', [H]],
    [p + 'mlp.gate_proj.weight', [F, H]],
    [p + 'mlp.up_proj.weight', [F, H]],
    [p + 'mlp.down_proj.weight', [H, F]],
  ].map(([name, shape]) => ({ name: name as string, dtype: 'BF16', shape: shape as number[] }))
  const std = opts.std ?? 0.04
  const amp = std * Math.sqrt(3)
  writeSafetensors(join(out, 'model.safetensors'), specs, (spec, write) => {
    const rng = new XorShift32(tensorSeed(opts.seed ?? 7, spec.name))
    const n = spec.shape.reduce((a, b) => a * b, 1)
    const norm = spec.name.includes('norm')
    const bits = new Uint16Array(n)
    for (let i = 0; i < n; i++) {
      const u = rng.uniform() * 2 - 1
      bits[i] = toBf16Bits(norm ? 1 + 0.1 * u : amp * u)
    }
    write(new Uint8Array(bits.buffer))
  })
  return out
}
