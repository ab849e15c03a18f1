/**
 * Broken checkpoints and bad requests: each must throw NativeError with the right status name and a
 * message naming the file, tensor or field, and leave the library usable (a good model still loads
 * and evaluates).
 */
import { afterAll, describe, expect, setDefaultTimeout, test } from 'bun:test'
import { readFileSync, rmSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

import { NativeContext, NativeEngine, NativeError, NativeModel } from '../ffi'
import type { CheckpointOptions } from '../src/checkpoint/write-checkpoint'
import { cachedCheckpoint, freshCheckpoint, SMALL } from './helpers/checkpoints'

setDefaultTimeout(60_000) // real loads on 2 shared cores

const written: string[] = []
afterAll(() => {
  for (const d of written) rmSync(d, { recursive: true, force: true })
})

function fresh(opts: CheckpointOptions = {}): string {
  const dir = freshCheckpoint({
    ...SMALL,
    ...opts,
    overrides: { ...SMALL.overrides, ...opts.overrides },
  })
  written.push(dir)
  return dir
}

/** Expects fn to throw NativeError `status` whose message (printed) names each of `names`. */
function expectNativeError(
  label: string,
  fn: () => unknown,
  status: string,
  names: string[],
): void {
  let caught: unknown
  try {
    fn()
  } catch (e) {
    caught = e
  }
  expect(caught).toBeInstanceOf(NativeError)
  const err = caught as NativeError
  console.log(`${label}: ${err.statusName}: ${err.message}`)
  expect(err.statusName).toBe(status)
  for (const n of names) expect(err.message).toContain(n)
}

/** A good model loads and evaluates to finite logits after every failure. */
function expectLibraryHealthy(): void {
  using model = NativeModel.load(cachedCheckpoint('small', SMALL))
  using ctx = new NativeContext(model, { nThreads: 2, nCtx: 64 })
  const [row] = ctx.eval([1, 2, 3])
  expect(row!.length).toBe(256)
  expect(row!.every(Number.isFinite)).toBe(true)
}

/** Rewrites a safetensors header in place (the data section is kept byte for byte). */
function editHeader(path: string, edit: (h: Record<string, any>) => void): void {
  const buf = readFileSync(path)
  const n = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'))
  edit(header)
  let json = JSON.stringify(header)
  json += ' '.repeat((8 - (json.length % 8)) % 8)
  const head = Buffer.alloc(8)
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)))
  writeFileSync(path, Buffer.concat([head, Buffer.from(json), buf.subarray(8 + n)]))
}

function editConfig(dir: string, edit: (c: Record<string, any>) => void): void {
  const path = join(dir, 'config.json')
  const cfg = JSON.parse(readFileSync(path, 'utf8'))
  edit(cfg)
  writeFileSync(path, JSON.stringify(cfg))
}

const load = (dir: string) => () => NativeModel.load(dir).dispose()

describe('bad safetensors', () => {
  test('truncated file', () => {
    const dir = fresh()
    const path = join(dir, 'model.safetensors')
    truncateSync(path, readFileSync(path).length - 100)
    // The last tensor written is model.norm.weight (tied head): its bytes now run past the end.
    expectNativeError('truncated', load(dir), 'bad_model', [
      'model.safetensors',
      'model.norm.weight',
    ])
    expectLibraryHealthy()
  })

  test('file shorter than the 8-byte header length', () => {
    const dir = fresh()
    writeFileSync(join(dir, 'model.safetensors'), Buffer.from([1, 2, 3]))
    expectNativeError('3-byte file', load(dir), 'bad_model', ['model.safetensors'])
    expectLibraryHealthy()
  })

  test('header that is not JSON', () => {
    const dir = fresh()
    const path = join(dir, 'model.safetensors')
    const buf = readFileSync(path)
    buf.write('#', 8) // the header's opening brace
    writeFileSync(path, buf)
    expectNativeError('garbled header', load(dir), 'bad_model', ['model.safetensors'])
    expectLibraryHealthy()
  })

  for (const dtype of ['I64', 'F64'] as const) {
    test(`${dtype} projection`, () => {
      const name = 'model.layers.0.self_attn.q_proj.weight'
      const dir = fresh({
        editTensors: (s) => s.map((t) => (t.name === name ? { ...t, dtype } : t)),
      })
      expectNativeError(`${dtype} tensor`, load(dir), 'unsupported', [name, dtype])
      expectLibraryHealthy()
    })
  }

  test('wrong shape', () => {
    const name = 'model.layers.0.self_attn.k_proj.weight'
    const dir = fresh({
      editTensors: (s) =>
        s.map((t) => (t.name === name ? { ...t, shape: [t.shape[0]! + 1, t.shape[1]!] } : t)),
    })
    expectNativeError('wrong shape', load(dir), 'bad_model', [name, '[17, 64]', '[16, 64]'])
    expectLibraryHealthy()
  })

  test('missing tensor', () => {
    const name = 'model.layers.0.mlp.down_proj.weight'
    const dir = fresh({ editTensors: (s) => s.filter((t) => t.name !== name) })
    expectNativeError('missing tensor', load(dir), 'bad_model', [name])
    expectLibraryHealthy()
  })

  test('untied config without lm_head.weight', () => {
    const dir = fresh({
      tied: false,
      editTensors: (s) => s.filter((t) => t.name !== 'lm_head.weight'),
    })
    expectNativeError('missing lm_head', load(dir), 'bad_model', [
      'lm_head.weight',
      'tie_word_embeddings',
    ])
    expectLibraryHealthy()
  })

  test('data offsets past the end of the file', () => {
    const dir = fresh()
    const name = 'model.embed_tokens.weight'
    editHeader(join(dir, 'model.safetensors'), (h) => {
      h[name].data_offsets[1] += 1 << 20
    })
    expectNativeError('offsets past end', load(dir), 'bad_model', [name, 'data_offsets'])
    expectLibraryHealthy()
  })

  test('missing shard', () => {
    const dir = fresh({ shards: 2 })
    unlinkSync(join(dir, 'model-00002-of-00002.safetensors'))
    expectNativeError('missing shard', load(dir), 'io', ['model-00002-of-00002.safetensors'])
    expectLibraryHealthy()
  })

  test('no weights at all', () => {
    const dir = fresh()
    unlinkSync(join(dir, 'model.safetensors'))
    expectNativeError('no weights', load(dir), 'io', ['model.safetensors'])
    expectLibraryHealthy()
  })
})

describe('bad config.json', () => {
  test('missing config.json', () => {
    const dir = fresh()
    unlinkSync(join(dir, 'config.json'))
    expectNativeError('missing config', load(dir), 'io', ['config.json'])
    expectLibraryHealthy()
  })

  test('config.json that is not JSON', () => {
    const dir = fresh()
    writeFileSync(join(dir, 'config.json'), '{"hidden_size": 64,')
    expectNativeError('truncated JSON', load(dir), 'bad_model', ['config.json'])
    expectLibraryHealthy()
  })

  test('hidden_size of the wrong type', () => {
    const dir = fresh()
    editConfig(dir, (c) => (c.hidden_size = '64'))
    expectNativeError('string hidden_size', load(dir), 'bad_model', ['hidden_size'])
    expectLibraryHealthy()
  })

  test('num_key_value_heads that does not divide num_attention_heads', () => {
    const dir = fresh()
    editConfig(dir, (c) => (c.num_key_value_heads = 3))
    expectNativeError('kv heads 3 of 8', load(dir), 'bad_model', ['num_key_value_heads'])
    expectLibraryHealthy()
  })

  test('rope_scaling with the wrong number of factors', () => {
    const dir = fresh()
    editConfig(dir, (c) => (c.rope_scaling.long_factor = c.rope_scaling.short_factor = [1, 2, 3]))
    expectNativeError('3 rope factors', load(dir), 'bad_model', ['rope_scaling'])
    expectLibraryHealthy()
  })

  test('more eos ids than MINICPM_MAX_EOS_IDS: refused, not truncated; exactly 8 all reported', () => {
    const dir = fresh()
    const ids = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    editConfig(dir, (c) => (c.eos_token_id = ids))
    expectNativeError('9 eos ids', load(dir), 'unsupported', ['config.json', "'eos_token_id'", '9 ids', 'at most 8'])
    editConfig(dir, (c) => (c.eos_token_id = ids.slice(0, 8)))
    using model = NativeModel.load(dir)
    expect(model.info().eosTokenIds).toEqual(ids.slice(0, 8))
  })
})

describe('bad requests', () => {
  const dir = () => cachedCheckpoint('small', SMALL)

  test('token id out of range in eval', () => {
    using model = NativeModel.load(dir())
    using ctx = new NativeContext(model, { nThreads: 2, nCtx: 64 })
    expectNativeError('eval token 256', () => ctx.eval([1, 256, 2]), 'invalid_argument', ['256'])
    expectNativeError('eval token -1', () => ctx.eval([-1]), 'invalid_argument', ['-1'])
    // Nothing was appended by the failed calls.
    expect(ctx.seqLen(0)).toBe(0)
    expect(ctx.eval([1, 2, 3])[0]!.every(Number.isFinite)).toBe(true)
  })

  test('token id out of range in submit', () => {
    using model = NativeModel.load(dir())
    using engine = new NativeEngine(model, { nThreads: 2, nCtx: 128 })
    expectNativeError('submit token 256', () => engine.submit([1, 256]), 'invalid_argument', [
      '256',
    ])
    expectNativeError('empty prompt', () => engine.submit([]), 'invalid_argument', [])
    expect(engine.stats().waiting + engine.stats().running).toBe(0)
  })

  test('request larger than the KV budget', () => {
    using model = NativeModel.load(dir())
    const perToken = model.info().kvBytesPerToken
    // Room for two 64-token blocks; a 200-token prompt can never fit.
    using engine = new NativeEngine(model, {
      nThreads: 2,
      nCtx: 512,
      kvDtype: 'bf16',
      kvBytes: perToken * 128,
    })
    expect(engine.stats().kvTokensTotal).toBe(128)
    expectNativeError(
      '200 tokens in a 128-token pool',
      () => engine.submit(new Array(200).fill(5)),
      'too_large',
      ['200'],
    )
    expectNativeError(
      'prompt over n_ctx',
      () => engine.submit(new Array(600).fill(5)),
      'too_large',
      ['600'],
    )
  })
})
