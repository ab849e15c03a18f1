/**
 * Speculative decoding through the library and the server: `draft` (the target itself as the draft model, so
 * every greedy draft is confirmed) gives the plain greedy tokens, fewer engine steps, acceptance statistics in
 * stats(), the native timings and /metrics; `speculative: false` opts one request out. An EAGLE head directory
 * (random weights, published layout) drafts from the target's hidden states: greedy == plain, with FR-Spec too,
 * through the library, the CLI and the server; bad head directories fail with a message.
 */
import { afterAll, beforeAll, expect, test } from 'bun:test'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { loadModel, type Model } from '../src/index.ts'
import { startServer, type RunningServer } from '../routes/server.ts'
import { draftKind } from '../src/runtime/load.ts'
import { writeEagleHead } from '../src/checkpoint/eagle-head.ts'
import { cachedCheckpoint } from './helpers/checkpoints.ts'
import { LOAD_TIMEOUT_MS } from './helpers/server-model.ts'

const REPO = join(import.meta.dir, '..')
const dir = cachedCheckpoint('server-tiny', { preset: 'tiny', seed: 5 })
const eagleDir = writeEagleHead(dir, join(tmpdir(), `eagle-head-${process.pid}`))
let plain: Model
let spec: Model
let srv: RunningServer
beforeAll(async () => {
  plain = await loadModel(dir, { nCtx: 256, nThreads: 2 })
  spec = await loadModel(dir, { nCtx: 256, nThreads: 2, draft: dir, draftNumIter: 3, draftTopK: 4, draftTreeSize: 12 })
  srv = await startServer({ model: spec, port: 0, quiet: true })
}, LOAD_TIMEOUT_MS)
afterAll(async () => {
  rmSync(eagleDir, { recursive: true, force: true })
  rmSync(join(tmpdir(), `eagle-bad-${process.pid}`), { recursive: true, force: true })
  await srv?.stop()
  spec?.dispose()
  plain?.dispose()
})

async function tokens(model: Model, prompt: string, extra: { speculative?: boolean } = {}) {
  const out: number[] = []
  let timings: unknown
  for await (const ev of model.generate({ prompt, maxTokens: 40, temperature: 0, ignoreEos: true, ...extra })) {
    if (ev.type === 'delta') out.push(...ev.tokens)
    if (ev.type === 'finish') timings = ev.timings
  }
  return { out, timings: timings as { meanAcceptLength?: number; specVerifies?: number } }
}

test('greedy with the target as draft == plain greedy, fewer steps, every draft level accepted', async () => {
  const prompts = ['Hello there', 'The quick brown fox', 'One two three four five six']
  const steps0 = spec.stats().steps
  for (const p of prompts) {
    const a = await tokens(plain, p)
    const b = await tokens(spec, p)
    expect(b.out).toEqual(a.out)
    expect(b.out.length).toBe(40)
    // 3 levels + the bonus token per verify, except where max_tokens clips the tree.
    expect(b.timings.meanAcceptLength!).toBeGreaterThan(3)
    console.log(`  ${JSON.stringify(p)}: ${b.out.length} tokens, timings ${JSON.stringify(b.timings)}`)
  }
  const st = spec.stats()
  console.log(
    `  engine: ${st.steps - steps0} steps for ${3 * 40} tokens; mean accept ${st.specMeanAcceptLength.toFixed(2)}, ` +
      `per depth ${st.specDepthAcceptance.slice(0, 3).map((x) => x.toFixed(2))}`,
  )
  expect(st.steps - steps0).toBeLessThan(3 * 40)
  expect(st.specDepthAcceptance[0]).toBe(1)
})

test('speculative: false opts a request out', async () => {
  const before = spec.stats().specVerifies
  const r = await tokens(spec, 'Hello there', { speculative: false })
  expect(r.out).toEqual((await tokens(plain, 'Hello there')).out)
  expect(r.timings.specVerifies).toBeUndefined()
  expect(spec.stats().specVerifies).toBe(before)
})

test('native timings and /metrics carry the acceptance statistics; the body flag opts out', async () => {
  const post = (body: object) =>
    fetch(`${srv.url}/generate`, { method: 'POST', body: JSON.stringify({ ...body, stream: false }) }).then((r) =>
      r.json(),
    ) as Promise<{ timings: Record<string, number> }>
  const on = await post({ prompt: 'Hi', max_tokens: 20, temperature: 0, ignore_eos: true })
  const off = await post({ prompt: 'Hi', max_tokens: 20, temperature: 0, ignore_eos: true, speculative: false })
  console.log(`  /generate timings: ${JSON.stringify(on.timings)}`)
  expect(on.timings.mean_accept_length).toBeGreaterThan(2)
  expect(on.timings.spec_verifies).toBeGreaterThan(0)
  expect(off.timings.spec_verifies).toBeUndefined()
  const metrics = await fetch(`${srv.url}/metrics`).then((r) => r.text())
  const line = metrics.split('\n').find((l) => l.startsWith('minicpm:spec_decode_mean_accept_length'))
  console.log(`  ${line}`)
  expect(Number(line!.split(' ')[1])).toBeGreaterThan(2)
  expect(metrics).toContain('minicpm:spec_decode_depth_acceptance{depth="1"} 1')
})

test('an EAGLE head directory: detected from its config or its tensors; greedy == plain with and without FR-Spec', async () => {
  expect(draftKind({ architectures: ['LlamaForCausalLM'] })).toBe('llm')
  expect(draftKind({ architectures: ['MiniCPMEagle'] })).toBe('eagle')
  expect(draftKind({ architectures: ['MiniCPMForCausalLM'] }, eagleDir)).toBe('eagle') // fc.weight in the file
  expect(draftKind({ architectures: ['MiniCPMForCausalLM'] }, dir)).toBe('llm')
  // pytorch_model.bin: the keys pickled in data.pkl, the archive's first (stored) member
  const binDir = join(tmpdir(), `eagle-bin-${process.pid}`)
  mkdirSync(binDir, { recursive: true })
  try {
    const pkl = Buffer.concat([Buffer.from('\x80\x02ccollections\nOrderedDict\n)R(X', 'latin1'), Buffer.from([9, 0, 0, 0]), Buffer.from('fc.weight')])
    const local = Buffer.alloc(30)
    local.writeUInt32LE(0x04034b50, 0)
    local.writeUInt32LE(pkl.length, 18)
    local.writeUInt32LE(pkl.length, 22)
    local.writeUInt16LE('head/data.pkl'.length, 26)
    writeFileSync(join(binDir, 'pytorch_model.bin'), Buffer.concat([local, Buffer.from('head/data.pkl'), pkl]))
    expect(draftKind({ architectures: ['MiniCPMForCausalLM'] }, binDir)).toBe('eagle')
    writeFileSync(join(binDir, 'pytorch_model.bin'), readFileSync(join(import.meta.dir, '../csrc/tests/data/torch-state.bin')))
    expect(draftKind({ architectures: ['MiniCPMForCausalLM'] }, binDir)).toBe('llm') // a state dict without fc.weight
  } finally {
    rmSync(binDir, { recursive: true, force: true })
  }
  const vocab = join(eagleDir, 'freq.bin')
  writeFileSync(vocab, new Uint8Array(Int32Array.from({ length: 200 }, (_, i) => (i * 7 + 1) % 512).buffer))
  for (const extra of [{}, { draftVocab: vocab, draftVocabSize: 128 }]) {
    const m = await loadModel(dir, { nCtx: 256, nThreads: 2, draft: eagleDir, ...extra })
    try {
      for (const p of ['Hello there', 'One two three four five six']) {
        const a = await tokens(plain, p)
        const b = await tokens(m, p)
        expect(b.out).toEqual(a.out)
        expect(b.timings.specVerifies).toBeGreaterThan(0)
        console.log(`  EAGLE ${JSON.stringify(extra)} ${JSON.stringify(p)}: timings ${JSON.stringify(b.timings)}`)
      }
      expect(m.stats().specVerifies).toBeGreaterThan(0)
    } finally {
      m.dispose()
    }
  }
})

test('EAGLE head: bad directories give clear errors', async () => {
  const bad = join(tmpdir(), `eagle-bad-${process.pid}`)
  mkdirSync(bad, { recursive: true })
  writeFileSync(join(bad, 'config.json'), JSON.stringify({ architectures: ['EagleForCausalLM'], hidden_size: 64 }))
  await expect(loadModel(dir, { draft: bad })).rejects.toThrow(/model\.safetensors/)
  await expect(loadModel(dir, { draftVocab: join(eagleDir, 'freq.bin') })).rejects.toThrow(/--draft-vocab needs --draft/)
})

test('CLI generate --draft EAGLE --draft-vocab FILE:N prints the plain greedy text', () => {
  const run = (extra: string[]) =>
    Bun.spawnSync(
      [process.execPath, join(REPO, 'src', 'cli', 'main.ts'), 'generate', '-m', dir, '-p', 'Hello', '-n', '24',
        '--temperature', '0', '--ignore-eos', ...extra],
      { cwd: REPO, env: { ...process.env, MINICPM_MODEL: '' } },
    )
  const a = run([])
  const b = run(['--draft', eagleDir, '--draft-vocab', `${join(eagleDir, 'freq.bin')}:100`])
  console.log(`  exit ${b.exitCode}: ${b.stderr.toString().trim().split('\n').slice(-1)[0]}`)
  expect(b.exitCode).toBe(0)
  expect(b.stdout.toString()).toBe(a.stdout.toString())
})

test('serve with an EAGLE head: /generate timings and /metrics carry the acceptance statistics', async () => {
  const m = await loadModel(dir, { nCtx: 256, nThreads: 2, draft: eagleDir })
  const s = await startServer({ model: m, port: 0, quiet: true })
  try {
    const r = (await fetch(`${s.url}/generate`, {
      method: 'POST',
      body: JSON.stringify({ prompt: 'Hi', max_tokens: 20, temperature: 0, ignore_eos: true, stream: false }),
    }).then((x) => x.json())) as { timings: Record<string, number> }
    console.log(`  /generate timings: ${JSON.stringify(r.timings)}`)
    expect(r.timings.spec_verifies).toBeGreaterThan(0)
    expect(r.timings.mean_accept_length).toBeGreaterThanOrEqual(1)
    const metrics = await fetch(`${s.url}/metrics`).then((x) => x.text())
    const line = metrics.split('\n').find((l) => l.startsWith('minicpm:spec_decode_num_verifies'))
    console.log(`  ${line}`)
    expect(Number(line!.split(' ')[1])).toBeGreaterThan(0)
  } finally {
    await s.stop()
    m.dispose()
  }
})
