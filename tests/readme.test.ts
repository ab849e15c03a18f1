/**
 * The README as a new user runs it: exactly two commands on a fresh machine; the serve command (`npm run
 * serve`, with no global bun on PATH) comes up with the default model and answers the README's example
 * requests exactly as written (only the port differs, through MINICPM_PORT); SIGTERM to the npm script stops
 * the server itself; the library snippet runs as pasted.
 */
import { afterAll, describe, expect, test } from 'bun:test'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { delimiter, join } from 'node:path'

const REPO = join(import.meta.dir, '..')
const README = readFileSync(join(REPO, 'README.md'), 'utf8')

/** The fenced blocks of one language, in order. */
function blocks(lang: string): string[] {
  return [...README.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1]!)
}

/** PATH without any directory holding a `bun` (npm puts node_modules/.bin first itself). */
const PATH = process.env.PATH!.split(delimiter)
  .filter((d) => !existsSync(join(d, 'bun')))
  .join(delimiter)

function freePort(): number {
  const s = Bun.serve({ port: 0, hostname: '127.0.0.1', fetch: () => new Response() })
  const port = s.port!
  s.stop(true)
  return port
}

const alive = (pid: number) => existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ')
function descendants(pid: number): number[] {
  const out: number[] = []
  for (const task of [pid]) {
    let kids: number[] = []
    try {
      kids = readFileSync(`/proc/${task}/task/${task}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
    } catch {}
    for (const k of kids) out.push(k, ...descendants(k))
  }
  return out
}

describe('README', () => {
  test('a fresh machine needs exactly two commands: one serves, one tests', () => {
    const first = blocks('sh')[0]!
    const commands = first.split('\n').map((l) => l.replace(/\s+#.*$/, '').trim()).filter(Boolean)
    expect(commands).toEqual(['npm install && npm run serve', 'npm install && npm test'])
    expect(first).toContain('random weights')
  })

  let server: ReturnType<typeof Bun.spawn> | null = null
  afterAll(() => {
    if (server && alive(server.pid)) server.kill('SIGKILL')
  })

  test('npm run serve (no global bun) answers the README requests; SIGTERM to npm stops the server', async () => {
    const command = blocks('sh')[0]!.split('\n')[0]!.replace(/\s+#.*$/, '').trim()
    const serveCmd = command.split('&&')[1]!.trim()
    expect(serveCmd).toBe('npm run serve')
    const port = freePort()
    server = Bun.spawn(['bash', '-c', serveCmd], {
      cwd: REPO,
      env: { ...process.env, PATH, MINICPM_PORT: String(port), MINICPM_MODEL: '' },
      stdout: 'pipe',
      stderr: 'pipe',
    })
    let out = ''
    const drain = async (s: ReadableStream<Uint8Array>) => {
      for await (const chunk of s) out += new TextDecoder().decode(chunk)
    }
    const drained = Promise.all([drain(server.stdout as ReadableStream<Uint8Array>), drain(server.stderr as ReadableStream<Uint8Array>)])
    const t0 = performance.now()
    while (!out.includes('ready:')) {
      if (performance.now() - t0 > 180_000 || server.exitCode !== null) throw new Error(`no 'ready:' line:\n${out}`)
      await Bun.sleep(100)
    }
    console.log(out.trim())
    expect(out).not.toContain('Entering directory')
    expect(out).toContain(`listening on http://127.0.0.1:${port}`)

    // The example requests, exactly as written but for the port.
    const examples = blocks('sh').find((b) => b.includes('curl') && b.includes('127.0.0.1:8080'))!
    expect(examples.match(/curl /g)!.length).toBeGreaterThanOrEqual(2)
    for (const req of examples.split(/\n(?=curl )/)) {
      expect(req).toContain('"max_tokens"')
      const r = Bun.spawnSync(['bash', '-c', req.trim().replaceAll('127.0.0.1:8080', `127.0.0.1:${port}`) + ' -sS --max-time 60'])
      const body = r.stdout.toString()
      console.log(`${req.split('\n')[0]} ...\n  -> ${body.slice(0, 160).replace(/\n/g, '\\n')}`)
      expect(r.exitCode).toBe(0)
      if (req.includes('"stream":true')) expect(body).toEndWith('data: [DONE]\n\n')
      else expect(JSON.parse(body).choices[0].finish_reason).toMatch(/^(length|stop)$/)
    }
    const page = await fetch(`http://127.0.0.1:${port}/`)
    expect(page.status).toBe(200)
    expect(await page.text()).toContain('<title>minicpm-edge chat</title>')

    // A process manager stops the npm script: the server must go with it.
    const tree = descendants(server.pid)
    expect(tree.length).toBeGreaterThan(0)
    process.kill(server.pid, 'SIGTERM')
    const code = await Promise.race([server.exited, Bun.sleep(20_000).then(() => 'timeout')])
    await Promise.race([drained, Bun.sleep(2000)])
    console.log(`npm exit: ${code}; after SIGTERM:\n${out.split('\n').slice(-3).join('\n')}`)
    expect(code).not.toBe('timeout')
    await Bun.sleep(200)
    expect(tree.filter(alive)).toEqual([])
    expect(await fetch(`http://127.0.0.1:${port}/health`).then(() => 'up', () => 'down')).toBe('down')
    expect(out).toContain('SIGTERM: shutting down')
  }, 240_000)

  test('the library snippet runs as pasted', () => {
    const snippet = blocks('ts').find((b) => b.includes('loadModel'))!
    const file = join(REPO, `.readme-snippet-${process.pid}.ts`)
    writeFileSync(file, snippet)
    try {
      const r = Bun.spawnSync([process.execPath, file], { cwd: REPO, env: { ...process.env, MINICPM_MODEL: '' } })
      console.log(`exit ${r.exitCode}; stdout: ${JSON.stringify(r.stdout.toString().slice(0, 80))}`)
      if (r.exitCode !== 0) console.log(r.stderr.toString())
      expect(r.exitCode).toBe(0)
      expect(r.stdout.length).toBeGreaterThan(0)
    } finally {
      rmSync(file, { force: true })
    }
  }, 60_000)
})
