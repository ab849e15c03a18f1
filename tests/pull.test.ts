/**
 * `pull` and hub ids against a local fake hub (tests/helpers/fake-hub.ts) serving a generated checkpoint with
 * the hub API's shapes: only the engine's files are fetched into the standard HF cache layout, a dropped
 * connection is resumed with a Range request, a wrong checksum and a 401 fail with a message that says what
 * to do, nothing half-written looks like a model, and a cached model is found without downloading again.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'bun:test'
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cachedSnapshot, repoCacheDir } from '../src/hub/cache'
import { pull } from '../src/hub/pull'
import { cachedCheckpoint } from './helpers/checkpoints'
import { filesOf, startFakeHub, type FakeHub, type FakeHubOptions } from './helpers/fake-hub'

const REPO = 'openbmb/MiniCPM4-Test'
const MAIN = join(import.meta.dir, '..', 'src', 'cli', 'main.ts')
let files: Record<string, Uint8Array<ArrayBuffer>>
let home: string
let hub: FakeHub | null = null
const saved = { ...process.env }

beforeAll(() => {
  files = filesOf(cachedCheckpoint('tiny', { preset: 'tiny' }), {
    'README.md': '# a model card',
    'modeling_minicpm.py': 'print(1)',
    'pytorch_model.bin': 'x'.repeat(4096),
  })
})

function useHub(opts: Partial<FakeHubOptions> = {}): FakeHub {
  hub?.stop()
  hub = startFakeHub({ repo: REPO, files, ...opts })
  home = mkdtempSync(join(tmpdir(), 'minicpm-hf-'))
  process.env.HF_ENDPOINT = hub.url
  process.env.HF_HOME = home
  delete process.env.HF_HUB_CACHE
  delete process.env.HF_TOKEN
  delete process.env.HF_HUB_OFFLINE
  return hub
}

afterEach(() => {
  hub?.stop()
  hub = null
  for (const k of ['HF_ENDPOINT', 'HF_HOME', 'HF_TOKEN', 'HF_HUB_CACHE', 'HF_HUB_OFFLINE']) {
    if (saved[k] === undefined) delete process.env[k]
    else process.env[k] = saved[k]
  }
  if (home) rmSync(home, { recursive: true, force: true })
})
afterAll(() => hub?.stop())

const downloads = (h: FakeHub) => h.requests.filter((r) => r.path.includes('/resolve/') || r.path.startsWith('/cdn/'))

describe('pull', () => {
  test('fetches only what the engine reads, into the HF cache layout, and reuses it', async () => {
    const h = useHub()
    const lines: string[] = []
    const dir = await pull(REPO, { log: (l) => lines.push(l) })
    console.log(lines.join('\n'))
    const root = join(home, 'hub', 'models--openbmb--MiniCPM4-Test')
    expect(dir).toBe(join(root, 'snapshots', 'c0ffee'.padEnd(40, '0')))
    expect(readdirSync(dir).sort()).toEqual(
      Object.keys(files).filter((n) => !['README.md', 'modeling_minicpm.py', 'pytorch_model.bin'].includes(n)).sort(),
    )
    expect(readFileSync(join(root, 'refs', 'main'), 'utf8')).toBe('c0ffee'.padEnd(40, '0'))
    // Links into blobs/ named by sha256 (LFS) or the git blob id, as huggingface_hub lays them out.
    const link = readlinkSync(join(dir, 'model.safetensors'))
    expect(link).toMatch(/^\.\.\/\.\.\/blobs\/[0-9a-f]{64}$/)
    expect(readlinkSync(join(dir, 'config.json'))).toMatch(/^\.\.\/\.\.\/blobs\/[0-9a-f]{40}$/)
    expect(lstatSync(join(dir, 'config.json')).isSymbolicLink()).toBe(true)
    for (const n of readdirSync(dir)) expect(new Uint8Array(readFileSync(join(dir, n)))).toEqual(files[n]!)
    expect(readdirSync(join(root, 'blobs')).some((n) => n.endsWith('.incomplete'))).toBe(false)
    const first = downloads(h).length
    expect(first).toBeGreaterThan(0)
    expect(h.requests.some((r) => r.path.includes('pytorch_model.bin'))).toBe(false)

    // Second pull: one listing call, no file downloaded again.
    expect(await pull(REPO)).toBe(dir)
    expect(downloads(h).length).toBe(first)
    // Offline, or with the hub gone, the complete cached copy serves.
    process.env.HF_HUB_OFFLINE = '1'
    expect(await pull(REPO)).toBe(dir)
    delete process.env.HF_HUB_OFFLINE
    h.stop()
    const notes: string[] = []
    expect(await pull(REPO, { log: (l) => notes.push(l) })).toBe(dir)
    console.log(notes.join('\n'))
    expect(notes.join('\n')).toContain('using the cached copy')
  })

  test('HF_HUB_CACHE is honoured', async () => {
    useHub()
    process.env.HF_HUB_CACHE = join(home, 'elsewhere')
    const dir = await pull(REPO)
    expect(dir.startsWith(join(home, 'elsewhere', 'models--openbmb--MiniCPM4-Test'))).toBe(true)
    expect(repoCacheDir(REPO)).toBe(join(home, 'elsewhere', 'models--openbmb--MiniCPM4-Test'))
  })

  test('a connection dropped halfway is resumed with a Range request', async () => {
    const h = useHub({ dropOnce: 'model.safetensors' })
    const lines: string[] = []
    const dir = await pull(REPO, { log: (l) => lines.push(l) })
    console.log(lines.join('\n'))
    expect(lines.join('\n')).toMatch(/model\.safetensors: connection lost at .*resuming/)
    // The resume asks the hub again (its redirect carries the Range to the CDN path).
    const ranged = h.requests.filter((r) => r.range !== null && r.path.startsWith('/cdn/'))
    console.log('ranged requests:', JSON.stringify(ranged.map((r) => `${r.path.slice(0, 16)}… range ${r.range}`)))
    expect(ranged.length).toBe(1)
    expect(Number(/bytes=(\d+)-/.exec(ranged[0]!.range!)![1])).toBeGreaterThan(0)
    expect(new Uint8Array(readFileSync(join(dir, 'model.safetensors')))).toEqual(files['model.safetensors']!)
  })

  test('a wrong checksum fails, removes the download and leaves nothing that looks like a model', async () => {
    useHub({ corrupt: 'model.safetensors' })
    const err = await pull(REPO).catch((e: Error) => e)
    console.log(`error: ${(err as Error).message}`)
    expect((err as Error).message).toMatch(/model\.safetensors: sha256 mismatch \(expected [0-9a-f]{64}, got [0-9a-f]{64}\)/)
    const root = repoCacheDir(REPO)
    expect(readdirSync(join(root, 'blobs')).some((n) => n.endsWith('.incomplete'))).toBe(false)
    expect(existsSync(join(root, 'snapshots'))).toBe(false)
    expect(cachedSnapshot(REPO)).toBeNull()
    // The next pull from a good hub completes, fetching only what is not verified yet.
    const kept = readdirSync(join(root, 'blobs')).length
    const good = startFakeHub({ repo: REPO, files })
    process.env.HF_ENDPOINT = good.url
    try {
      const dir = await pull(REPO)
      expect(cachedSnapshot(REPO)).toBe(dir)
      const fetched = good.requests.filter((r) => r.path.includes('/resolve/')).length
      console.log(`kept ${kept} verified files, fetched ${fetched}`)
      expect(fetched).toBe(Object.keys(files).length - 3 - kept)
    } finally {
      good.stop()
    }
  })

  test('401: no token says to set HF_TOKEN; a wrong one says it was refused; the right one works', async () => {
    const h = useHub({ token: 'hf_secret' })
    const none = await pull(REPO).catch((e: Error) => e.message)
    console.log(`no token: ${none}`)
    expect(none).toContain('answered 401')
    expect(none).toContain('set HF_TOKEN')
    process.env.HF_TOKEN = 'hf_wrong'
    const wrong = await pull(REPO).catch((e: Error) => e.message)
    console.log(`wrong token: ${wrong}`)
    expect(wrong).toContain('refused HF_TOKEN')
    process.env.HF_TOKEN = 'hf_secret'
    const dir = await pull(REPO)
    expect(existsSync(join(dir, 'config.json'))).toBe(true)
    expect(h.requests.filter((r) => r.path.startsWith('/api/')).at(-1)!.auth).toBe('Bearer hf_secret')
  })

  test('a repo with only pytorch_model.bin is pulled; one with neither format, and a bad id, are refused', async () => {
    const bin = { 'config.json': new TextEncoder().encode('{}'), 'pytorch_model.bin': new Uint8Array(8).fill(7) }
    useHub({ files: { ...bin, 'modeling_minicpm.py': new TextEncoder().encode('print(1)') } })
    const dir = await pull(REPO)
    expect(readdirSync(dir).sort()).toEqual(['config.json', 'pytorch_model.bin'])
    expect(cachedSnapshot(REPO)).toBe(dir)
    useHub({ files: { 'config.json': bin['config.json'], 'model.gguf': new Uint8Array(8) } })
    const refused = await pull(REPO).catch((e: Error) => e.message)
    console.log(`gguf-only repo: ${refused}`)
    expect(refused).toContain('has no .safetensors or pytorch_model.bin weights (only model.gguf)')
    expect(await pull('not-a-hub-id').catch((e: Error) => e.message)).toContain('is not a hub id')
  })
})

describe('the CLI with a hub id', () => {
  async function run(args: string[]) {
    const p = Bun.spawn([process.execPath, MAIN, ...args], {
      env: { ...process.env, MINICPM_MODEL: '' },
      stdout: 'pipe',
      stderr: 'pipe',
    })
    const [stdout, stderr, code] = await Promise.all([
      new Response(p.stdout).text(),
      new Response(p.stderr).text(),
      p.exited,
    ])
    return { code, stdout, stderr }
  }

  test('pull prints the model directory; generate --model ORG/NAME uses the cache', async () => {
    const h = useHub()
    const r = await run(['pull', REPO])
    console.log(r.stderr.trim())
    expect(r.code).toBe(0)
    expect(r.stdout.trim()).toBe(cachedSnapshot(REPO)!)
    const before = downloads(h).length
    const g = await run(['generate', '--model', REPO, '-n', '3', '--seed', '1', 'Hello'])
    expect(g.code).toBe(0)
    expect(downloads(h).length).toBe(before)
    const u = await run(['pull'])
    expect(u.code).toBe(2)
  }, 60_000)

  test('an unknown hub id is one line that says why', async () => {
    useHub()
    const r = await run(['generate', '--model', 'openbmb/NoSuchModel', 'Hello'])
    console.log(r.stderr.trim())
    expect(r.code).toBe(1)
    expect(r.stderr.trim().split('\n')).toHaveLength(1)
    expect(r.stderr).toContain('minicpm-edge generate: the hub answered 401 for openbmb/NoSuchModel')
  }, 30_000)
})
