/**
 * Every CLI command end to end as a subprocess (`bun src/cli/main.ts ...`) on a generated 'tiny' checkpoint:
 * --help, make-checkpoint, info, generate, chat with piped stdin, bench, serve, and one-line errors.
 */
import { afterAll, beforeAll, describe, expect, test } from 'bun:test'
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadModel } from '../src/index'
import { cachedCheckpoint } from './helpers/checkpoints'

const REPO = join(import.meta.dir, '..')
const MAIN = join(REPO, 'src', 'cli', 'main.ts')
const COMMANDS = ['serve', 'generate', 'chat', 'bench', 'info', 'make-checkpoint', 'quantize']

let dir: string
let scratch: string

beforeAll(() => {
  dir = cachedCheckpoint('tiny', { preset: 'tiny' })
  scratch = mkdtempSync(join(tmpdir(), 'minicpm-cli-'))
})
afterAll(() => rmSync(scratch, { recursive: true, force: true }))

function cli(args: string[], opts: { stdin?: string } = {}) {
  const p = Bun.spawnSync([process.execPath, MAIN, ...args], {
    cwd: REPO,
    env: { ...process.env, MINICPM_MODEL: '' },
    stdin: opts.stdin === undefined ? 'ignore' : new TextEncoder().encode(opts.stdin),
  })
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() }
}

/** Asserts the failure shape every command shares: one line on stderr, no stack trace, exit code != 0. */
function expectOneLineError(r: ReturnType<typeof cli>, command: string, text: string) {
  console.log(`exit ${r.code}: ${r.stderr.trim()}`)
  expect(r.code).not.toBe(0)
  const lines = r.stderr
    .trim()
    .split('\n')
    .filter((l) => !l.includes('RANDOM weights'))
  expect(lines.length).toBe(1)
  expect(lines[0]).toStartWith(`minicpm-edge ${command}: `)
  expect(lines[0]).toContain(text)
  expect(r.stderr).not.toMatch(/^\s+at /m)
}

describe('help', () => {
  test('top-level --help lists every command; no command is a usage error', () => {
    const r = cli(['--help'])
    expect(r.code).toBe(0)
    for (const c of COMMANDS) expect(r.stdout).toContain(`  ${c} `)
    expect(cli([]).code).toBe(1)
    const unknown = cli(['frobnicate'])
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toContain("unknown command 'frobnicate'")
  })

  for (const c of COMMANDS) {
    test(`${c} --help`, () => {
      const r = cli([c, '--help'])
      expect(r.code).toBe(0)
      expect(r.stdout).toStartWith(`Usage: minicpm-edge ${c}`)
    })
  }
})

describe('commands', () => {
  test('make-checkpoint writes a loadable checkpoint; --quiet-if-exists leaves it alone', () => {
    const out = join(scratch, 'ckpt')
    const r = cli(['make-checkpoint', '--preset', 'tiny', '--out', out, '--shards', '2', '--seed', '5'])
    console.log(r.stderr.trim())
    expect(r.code).toBe(0)
    expect(readdirSync(out).sort()).toEqual([
      'added_tokens.json',
      'config.json',
      'generation_config.json',
      'model-00001-of-00002.safetensors',
      'model-00002-of-00002.safetensors',
      'model.safetensors.index.json',
      'special_tokens_map.json',
      'tokenizer.model',
      'tokenizer_config.json',
    ])
    const again = cli(['make-checkpoint', '--preset', 'tiny', '--out', out, '--quiet-if-exists'])
    expect(again).toEqual({ code: 0, stdout: '', stderr: '' })
    const info = cli(['info', '--model', out, '--json'])
    expect(info.code).toBe(0)
    const report = JSON.parse(info.stdout)
    expect(report).toMatchObject({ randomWeights: true, tensors: 2 * 9 + 2, dtypes: { BF16: 20 }, load: { ok: true } })
    expect(report.files.length).toBe(2)
    expectOneLineError(
      cli(['make-checkpoint', '--out', out, '--preset', 'huge']),
      'make-checkpoint',
      '--preset must be one of',
    )
  }, 60_000)

  test('info describes the model and says it loads', () => {
    const r = cli(['info', '-m', dir])
    console.log(r.stdout)
    expect(r.code).toBe(0)
    expect(r.stdout).toContain('RANDOM')
    expect(r.stdout).toContain('tokenizer    tokenizer.model')
    expect(r.stdout).toMatch(/loads {8}yes: [\d.]+ M parameters/)
  })

  test('quantize saves a q4 (GPTQ) directory; info reports bits/weight and the decode roofline', () => {
    const out = join(scratch, 'tiny-q4')
    const q = cli(['quantize', '-m', dir, '--quantize', 'q4', '--quant-group', '32', '--out', out])
    console.log(q.stderr.trim())
    expect(q.code).toBe(0)
    expect(q.stderr).toMatch(/wrote .*: q4, [\d.]+ MiB, [\d.]+ bits\/weight/)
    const text = cli(['info', '-m', out, '--bandwidth', '50'])
    console.log(text.stdout)
    expect(text.stdout).toMatch(/weights {6}q4, [\d.]+ bits\/weight; decode roofline [\d.]+ tok\/s at 50 GB\/s/)
    const report = JSON.parse(cli(['info', '-m', out, '--json']).stdout)
    expect(report.load).toMatchObject({ ok: true, weightDtype: 'q4' })
    expect(report.load.bitsPerWeight).toBeLessThan(6)
    expect(report.load.decodeRoofline.tokPerS).toBeCloseTo(100e9 / report.load.weightBytes, 3)
    expectOneLineError(cli(['quantize', '-m', dir, '--out', out]), 'quantize', '--quantize q8|q4 is required')
  }, 60_000)

  test('generate streams the same text as the library, for --prompt and --messages', async () => {
    const messages = [{ role: 'user' as const, content: 'Tell me a story' }]
    const flags = ['-m', dir, '-n', '6', '--temperature', '0', '--ignore-eos']
    let expected = ''
    {
      using model = await loadModel(dir)
      for await (const ev of model.generate({ messages, maxTokens: 6, temperature: 0, ignoreEos: true })) {
        if (ev.type === 'delta') expected += ev.text
      }
    }
    const r = cli(['generate', ...flags, '-p', 'Tell me a story', '-v'])
    console.log(`stdout ${JSON.stringify(r.stdout)}; stderr ${r.stderr.trim()}`)
    expect(r.code).toBe(0)
    expect(r.stdout).toBe(expected + '\n')
    expect(r.stderr).toMatch(/\[length\] \d+ prompt \+ 6 generated tokens/)
    const file = join(scratch, 'messages.json')
    writeFileSync(file, JSON.stringify(messages))
    expect(cli(['generate', ...flags, '--messages', file]).stdout).toBe(expected + '\n')
    expectOneLineError(cli(['generate', ...flags]), 'generate', 'a prompt is required')
    expectOneLineError(
      cli(['generate', ...flags, '-p', 'x', '--temperature', 'hot']),
      'generate',
      "--temperature expects a number, got 'hot'",
    )
  }, 60_000)

  test('--kv-dtype reaches the engine: f32 holds half the tokens of bf16 in the same --kv-bytes', () => {
    const kv = (extra: string[]) => {
      const r = cli(['generate', '-m', dir, '-p', 'hi', '-n', '2', '--kv-bytes', String(1 << 20), '-v', ...extra])
      expect(r.code).toBe(0)
      const m = /KV cache (\w+), (\d+) tokens/.exec(r.stderr)
      expect(m).not.toBeNull()
      return { dtype: m?.[1], tokens: Number(m?.[2]) }
    }
    const f32 = kv(['--kv-dtype', 'f32'])
    const bf16 = kv(['--kv-dtype', 'bf16'])
    const f16 = kv(['--kv-dtype', 'f16'])
    const unset = kv([])
    console.log(JSON.stringify({ f32, bf16, f16, unset }))
    expect([f32.dtype, bf16.dtype, f16.dtype]).toEqual(['f32', 'bf16', 'f16'])
    expect(f32.tokens).toBeGreaterThan(0)
    expect(bf16.tokens).toBe(2 * f32.tokens)
    expect(f16.tokens).toBe(bf16.tokens)
    // The engine's default stays bf16.
    expect(unset).toEqual(bf16)
  }, 60_000)

  test('--backend: cpu and auto run; cuda says why it cannot here; anything else is a usage error', () => {
    for (const b of ['cpu', 'auto']) {
      const r = cli(['generate', '-m', dir, '-p', 'hi', '-n', '2', '--backend', b])
      expect(r.code).toBe(0)
    }
    const cuda = cli(['generate', '-m', dir, '-p', 'hi', '-n', '2', '--backend', 'cuda'])
    console.log(`--backend cuda: exit ${cuda.code}: ${cuda.stderr.trim()}`)
    expect(cuda.code).toBe(1)
    expect(cuda.stderr).toMatch(/backend cuda: (this build has no CUDA backend|no usable CUDA device)/)
    const bad = cli(['generate', '-m', dir, '-p', 'hi', '--backend', 'tpu'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain("--backend must be one of auto, cpu, cuda, got 'tpu'")
  }, 60_000)

  test('--cuda-graphs on|off: accepted (ignored on the CPU); anything else is a usage error', () => {
    for (const v of ['on', 'off']) {
      const r = cli(['generate', '-m', dir, '-p', 'hi', '-n', '2', '--backend', 'cpu', '--cuda-graphs', v])
      console.log(`--cuda-graphs ${v}: exit ${r.code}`)
      expect(r.code).toBe(0)
    }
    const bad = cli(['generate', '-m', dir, '-p', 'hi', '--cuda-graphs', 'maybe'])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain("--cuda-graphs must be on or off, got 'maybe'")
  }, 60_000)

  test('--exact runs the exact f32 kernel family; the default is the best for this CPU', () => {
    const fam = (extra: string[]) => {
      const r = cli(['generate', '-m', dir, '-p', 'hi', '-n', '2', '-v', ...extra])
      expect(r.code).toBe(0)
      return /^kernels (.+)$/m.exec(r.stderr)?.[1]
    }
    const exact = fam(['--exact'])
    const best = fam([])
    console.log(`kernels: default '${best}', --exact '${exact}'`)
    expect(exact).toMatch(/^cpu (avx512|avx2|neon|neon\+dotprod|portable)$/)
    expect(best).toMatch(/^cpu /)
  }, 60_000)

  test('--sparse: on/hf/v2/off load (dense below dense_len, so the text is unchanged here); anything else exits 2', () => {
    const out = (mode: string) => {
      const r = cli(['generate', '-m', dir, '-p', 'hi', '-n', '4', '--temperature', '0', '--sparse', mode])
      expect(r.code).toBe(0)
      return r.stdout
    }
    const dense = out('off')
    for (const m of ['on', 'hf', 'v2']) expect(out(m)).toBe(dense)
    const bad = cli(['generate', '-m', dir, '-p', 'hi', '--sparse', 'sometimes'])
    console.log(`--sparse sometimes: exit ${bad.code}: ${bad.stderr.trim()}`)
    expect(bad.code).toBe(2)
    expect(bad.stderr).toContain("--sparse must be one of on, off, hf, v2, got 'sometimes'")
  }, 60_000)

  test('chat with piped stdin answers each line, keeping the conversation', () => {
    const flags = ['-n', '3', '--temperature', '0', '--ignore-eos', '-v', '--kv-dtype', 'f16']
    const r = cli(['chat', '-m', dir, ...flags], { stdin: 'hello\nand again\n' })
    const turns = r.stderr.split('\n').filter((l) => l.startsWith('[length]'))
    console.log(turns.join('\n'))
    expect(r.code).toBe(0)
    expect(r.stderr).toMatch(/^KV cache f16, \d+ tokens$/m)
    expect(turns.length).toBe(2)
    const promptTokens = turns.map((l) => Number(/\] (\d+) prompt/.exec(l)![1]))
    // The second turn's prompt holds the first exchange.
    expect(promptTokens[1]!).toBeGreaterThan(promptTokens[0]! + 3)
  }, 60_000)

  test('bench prints tokenizer, load and per-token figures', () => {
    const r = cli(['bench', '-m', dir, '-n', '8', '--kv-dtype', 'f32'])
    console.log(r.stdout)
    expect(r.code).toBe(0)
    expect(r.stdout).toMatch(/load +.*, KV f32, /)
    expect(r.stdout).toMatch(/tokenizer +encode [\d.]+ M tokens\/s/)
    expect(r.stdout).toMatch(/load +.*first token \d+ ms/)
    expect(r.stdout).toMatch(
      /decode +8 tokens: engine [\d.]+ ms\/token, JS [\d.]+ us CPU\/token = [\d.]+% of the engine step/,
    )
  }, 60_000)

  test('serve answers /health and /v1/models, and stops on SIGINT', async () => {
    const args = ['serve', '-m', dir, '--port', '0', '-q', '--kv-dtype', 'f32']
    const p = Bun.spawn([process.execPath, MAIN, ...args], {
      cwd: REPO,
      stderr: 'pipe',
      stdout: 'ignore',
    })
    let stderr = ''
    const reader = p.stderr.getReader()
    while (!stderr.includes('ready:')) {
      const { value, done } = await reader.read()
      if (done) break
      stderr += new TextDecoder().decode(value)
    }
    const url = /listening on (http:\/\/\S+)/.exec(stderr)?.[1]
    console.log(stderr.trim())
    expect(url).toBeDefined()
    expect(stderr).toMatch(/ready: .*; KV cache f32, \d+ tokens\)/)
    expect((await fetch(`${url}/health`)).status).toBe(200)
    const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string }> }
    expect(models.data.map((m) => m.id)).toContain(dir.split('/').at(-1)!)
    p.kill('SIGINT')
    expect(await p.exited).toBe(0)
  }, 60_000)
})

describe('errors', () => {
  test('a bad model directory is one clear line and a non-zero exit, for every model command', () => {
    const bad = join(scratch, 'not-a-model')
    for (const c of ['generate', 'info', 'bench', 'chat']) {
      const r = cli([c, '-m', bad, ...(c === 'generate' ? ['-p', 'hi'] : [])])
      expectOneLineError(r, c, `${bad}: no such model directory (a hub id looks like org/name`)
    }
    expect(existsSync(bad)).toBe(false)
    // A directory that is not a model says what one holds and how to get one.
    const r = cli(['generate', '-m', scratch, 'hi'])
    expectOneLineError(r, 'generate', `${scratch} is not a model directory: config.json is missing`)
    expect(r.stderr).toContain('to download one: minicpm-edge pull openbmb/MiniCPM4-0.5B')
  })

  test('a --kv-dtype outside f32, bf16, f16 is a usage error (exit 2), for every command that loads the engine', () => {
    for (const c of ['serve', 'generate', 'chat', 'bench']) {
      const r = cli([c, '-m', dir, ...(c === 'generate' ? ['-p', 'hi'] : []), '--kv-dtype', 'fp8'])
      expectOneLineError(r, c, "--kv-dtype must be one of f32, bf16, f16, got 'fp8'")
      expect(r.code).toBe(2)
    }
  })

  test('unknown flags are usage errors (exit 2) in one short line, with the nearest flag', () => {
    const r = cli(['info', '--bogus'])
    expectOneLineError(r, 'info', 'unknown flag --bogus (--help lists the flags)')
    expect(r.code).toBe(2)
    const typo = cli(['serve', '--prot', '9'])
    expectOneLineError(typo, 'serve', 'unknown flag --prot; did you mean --port?')
    expect(typo.stderr).not.toContain('positional argument')
    const missing = cli(['generate', '--max-tokens'])
    expectOneLineError(missing, 'generate', '--max-tokens needs a value')
  })

  test("serve's -p is explained (the port is --port; -p is generate's prompt)", () => {
    const r = cli(['serve', '-p', '8081'])
    expectOneLineError(r, 'serve', "serve has no -p (in 'generate' it is the prompt); the port is --port N or MINICPM_PORT")
    expect(r.code).toBe(2)
  })

  test('--kv-bytes takes sizes with suffixes; -c/--ctx-size and --max-num-seqs/--parallel are aliases', () => {
    const r = cli(['generate', '-m', dir, '--kv-bytes', '64M', '-c', '256', '--max-num-seqs', '2', '-n', '2', '-v', 'hi'])
    console.log(r.stderr.trim())
    expect(r.code).toBe(0)
    const bad = cli(['generate', '-m', dir, '--kv-bytes', '2X', 'hi'])
    expectOneLineError(bad, 'generate', "--kv-bytes expects a size such as 1073741824, 512M, 2G or 1.5GiB, got '2X'")
    const ctx = cli(['generate', '-m', dir, '--ctx-size=0', 'hi'])
    expectOneLineError(ctx, 'generate', '--ctx must be >= 1, got 0')
  })

  test('--version prints the version (the one in package.json)', async () => {
    const { VERSION } = await import('../src/version')
    expect(VERSION).toBe((await import('../package.json')).version)
    for (const flag of ['--version', '-V']) {
      const r = cli([flag])
      expect(r.code).toBe(0)
      expect(r.stdout.trim()).toMatch(/^minicpm-edge \d+\.\d+\.\d+ \(bun \d+\.\d+\.\d+, linux-\w+\)$/)
    }
  })
})
