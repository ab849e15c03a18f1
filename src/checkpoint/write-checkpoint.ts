/**
 * writeCheckpoint(): a MiniCPM4 checkpoint with random weights in the exact hub layout
 * (config.json, generation_config.json, tokenizer files, model.safetensors or N shards +
 * model.safetensors.index.json). Values are deterministic per (seed, tensor name). config.json is
 * written last: its presence means the checkpoint is complete.
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { fillFromTable, normalTable, tensorSeed, XorShift32, type StorageDtype } from './random'
import {
  generationConfig,
  headDim,
  presetConfig,
  TOKENIZER_FILES,
  type HubConfig,
  type PresetName,
} from './presets'
import { tensorBytes, writeSafetensors, type TensorSpec } from './safetensors-writer'

export type WeightDtype = 'bf16' | 'f16' | 'f32'

export interface CheckpointOptions {
  preset?: PresetName // default 'tiny'
  overrides?: HubConfig // config.json fields on top of the preset
  dtype?: WeightDtype // default 'bf16'
  f32Norms?: boolean // RMSNorm weights stored as F32 whatever dtype is
  tied?: boolean // default: the preset's tie_word_embeddings (absent = tied)
  shards?: number // default 1 = model.safetensors
  seed?: number // default 0
  /** Test hook: edit the tensor list (drop, rename, change dtype/shape) before writing. */
  editTensors?: (specs: TensorSpec[]) => TensorSpec[]
  onProgress?: (bytesDone: number, bytesTotal: number) => void
}

export interface CheckpointResult {
  dir: string
  config: HubConfig
  files: string[] // safetensors file names
  tensorBytes: number // data bytes of all tensors (the index's metadata.total_size)
  nParams: number
}

const STORAGE: Record<WeightDtype, StorageDtype> = { bf16: 'BF16', f16: 'F16', f32: 'F32' }
const CHUNK = 1 << 22 // elements per write

/** HF names and shapes [out, in] of every tensor, in the order they are written. */
export function tensorSpecs(cfg: HubConfig, dtype: WeightDtype, f32Norms: boolean): TensorSpec[] {
  const h = cfg.hidden_size as number
  const v = cfg.vocab_size as number
  const ff = cfg.intermediate_size as number
  const nh = cfg.num_attention_heads as number
  const nkv = (cfg.num_key_value_heads as number | undefined) ?? nh
  const hd = headDim(cfg)
  const w = STORAGE[dtype]
  const norm = f32Norms ? 'F32' : w
  const specs: TensorSpec[] = [{ name: 'model.embed_tokens.weight', dtype: w, shape: [v, h] }]
  for (let i = 0; i < (cfg.num_hidden_layers as number); i++) {
    const p = `model.layers.${i}.`
    specs.push(
      { name: p + 'input_layernorm.weight', dtype: norm, shape: [h] },
      { name: p + 'self_attn.q_proj.weight', dtype: w, shape: [nh * hd, h] },
      { name: p + 'self_attn.k_proj.weight', dtype: w, shape: [nkv * hd, h] },
      { name: p + 'self_attn.v_proj.weight', dtype: w, shape: [nkv * hd, h] },
      { name: p + 'self_attn.o_proj.weight', dtype: w, shape: [h, nh * hd] },
      { name: p + 'post_attention_layernorm.weight', dtype: norm, shape: [h] },
      { name: p + 'mlp.gate_proj.weight', dtype: w, shape: [ff, h] },
      { name: p + 'mlp.up_proj.weight', dtype: w, shape: [ff, h] },
      { name: p + 'mlp.down_proj.weight', dtype: w, shape: [h, ff] },
    )
  }
  specs.push({ name: 'model.norm.weight', dtype: norm, shape: [h] })
  if (cfg.tie_word_embeddings === false)
    specs.push({ name: 'lm_head.weight', dtype: w, shape: [v, h] })
  return specs
}

// Scales chosen so a 24-layer 0.5B shape stays finite with non-trivial attention: projections ~
// 1/sqrt(fan_in) (unit-variance outputs), embeddings small because they are multiplied by
// scale_emb, norms around 1.
function distribution(spec: TensorSpec): { mean: number; std: number } {
  if (spec.shape.length === 1) return { mean: 1, std: 0.1 }
  if (spec.name === 'model.embed_tokens.weight' || spec.name === 'lm_head.weight')
    return { mean: 0, std: 0.05 }
  return { mean: 0, std: 1 / Math.sqrt(spec.shape[1]!) }
}

function makeFiller(seed: number) {
  const tables = new Map<string, Uint16Array | Float32Array>()
  return (spec: TensorSpec, write: (bytes: Uint8Array) => void) => {
    const n = spec.shape.reduce((a, b) => a * b, 1)
    if (spec.dtype !== 'BF16' && spec.dtype !== 'F16' && spec.dtype !== 'F32') {
      // Only bad-model tests ask for other dtypes; the content does not matter there.
      for (let done = 0; done < tensorBytes(spec); done += CHUNK) {
        write(new Uint8Array(Math.min(CHUNK, tensorBytes(spec) - done)))
      }
      return
    }
    const { mean, std } = distribution(spec)
    const key = `${spec.dtype}/${mean}/${std}`
    let table = tables.get(key)
    if (!table) tables.set(key, (table = normalTable(mean, std, spec.dtype, tensorSeed(seed, key))))
    const rng = new XorShift32(tensorSeed(seed, spec.name))
    const buf =
      spec.dtype === 'F32'
        ? new Float32Array(Math.min(n, CHUNK))
        : new Uint16Array(Math.min(n, CHUNK))
    for (let done = 0; done < n; done += CHUNK) {
      const m = Math.min(CHUNK, n - done)
      fillFromTable(buf, m, table, rng)
      write(new Uint8Array(buf.buffer, 0, m * buf.BYTES_PER_ELEMENT))
    }
  }
}

/** Splits the tensor list into `shards` consecutive groups of about equal bytes, none empty. */
function splitShards(specs: TensorSpec[], shards: number): TensorSpec[][] {
  const total = specs.reduce((a, s) => a + tensorBytes(s), 0)
  const groups: TensorSpec[][] = [[]]
  let acc = 0
  specs.forEach((s, i) => {
    const left = specs.length - i
    const needNew = groups.length < shards && groups.at(-1)!.length > 0
    if (needNew && (acc >= (groups.length * total) / shards || left === shards - groups.length))
      groups.push([])
    groups.at(-1)!.push(s)
    acc += tensorBytes(s)
  })
  return groups
}

/** Small test vocabularies cannot hold the real special ids (eos 73440): keep the ids that fit. */
function fitTokenIds(cfg: HubConfig, vocab: number): HubConfig {
  const out = { ...cfg }
  for (const key of ['bos_token_id', 'eos_token_id', 'pad_token_id']) {
    const v = out[key]
    if (Array.isArray(v)) out[key] = v.filter((id) => id < vocab)
    else if (typeof v === 'number' && v >= vocab) delete out[key]
  }
  return out
}

export function writeCheckpoint(dir: string, opts: CheckpointOptions = {}): CheckpointResult {
  const preset = opts.preset ?? 'tiny'
  const dtype = opts.dtype ?? 'bf16'
  const seed = opts.seed ?? 0
  const shards = opts.shards ?? 1
  const base = presetConfig(preset, opts.overrides)
  const cfg = fitTokenIds(base, base.vocab_size as number)
  if (opts.tied === true) cfg.tie_word_embeddings = true
  if (opts.tied === false) cfg.tie_word_embeddings = false
  cfg.torch_dtype = { bf16: 'bfloat16', f16: 'float16', f32: 'float32' }[dtype]
  cfg.minicpm_edge = {
    random_weights: true,
    generator: 'minicpm-edge src/checkpoint',
    preset,
    seed,
    dtype,
  }

  let specs = tensorSpecs(cfg, dtype, opts.f32Norms ?? false)
  if (opts.editTensors) specs = opts.editTensors(specs)
  if (!Number.isInteger(shards) || shards < 1 || shards > specs.length) {
    throw new Error(
      `writeCheckpoint: shards must be an integer in [1, ${specs.length}], got ${shards}`,
    )
  }

  mkdirSync(dir, { recursive: true })
  // A previous checkpoint here may have had another layout; never leave a mix behind.
  for (const f of readdirSync(dir)) {
    if (f === 'config.json' || /^model.*\.safetensors(\.index\.json)?$/.test(f))
      rmSync(join(dir, f))
  }
  // read + write, not copyFileSync: a compiled executable's embedded files cannot be copied.
  for (const [name, src] of Object.entries(TOKENIZER_FILES)) {
    writeFileSync(join(dir, name), readFileSync(src))
  }
  const generation = fitTokenIds(generationConfig(preset), cfg.vocab_size as number)
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify(generation, null, 2) + '\n')

  const total = specs.reduce((a, s) => a + tensorBytes(s), 0)
  const fill = makeFiller(seed)
  let done = 0
  const progressFill = (spec: TensorSpec, write: (b: Uint8Array) => void) => {
    fill(spec, write)
    done += tensorBytes(spec)
    opts.onProgress?.(done, total)
  }
  const groups = splitShards(specs, shards)
  const files =
    shards === 1
      ? ['model.safetensors']
      : groups.map(
          (_, i) =>
            `model-${String(i + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`,
        )
  const weightMap: Record<string, string> = {}
  groups.forEach((g, i) => {
    writeSafetensors(join(dir, files[i]!), g, progressFill)
    for (const s of g) weightMap[s.name] = files[i]!
  })
  if (shards > 1) {
    const index = { metadata: { total_size: total }, weight_map: weightMap }
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index, null, 2) + '\n')
  }
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n')
  const nParams = specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1), 0)
  return { dir, config: cfg, files, tensorBytes: total, nParams }
}
