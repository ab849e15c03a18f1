/**
 * The one-file executable: `bun build --compile` of the CLI with libminicpm.so embedded, run from another
 * directory with no MINICPM_LIB, must load the embedded library and generate the same tokens as the sources.
 * Set MINICPM_DIST=dist/minicpm-edge to test a prebuilt `make dist` output instead of building one here.
 */
import { afterAll, beforeAll, expect, test } from 'bun:test'
import { existsSync, mkdtempSync, realpathSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { cachedCheckpoint } from './helpers/checkpoints'

const REPO = join(import.meta.dir, '..')
let work: string
let exe: string
let dir: string

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'minicpm-dist-'))
  dir = cachedCheckpoint('tiny', { preset: 'tiny' })
  if (process.env.MINICPM_DIST) {
    exe = resolve(process.env.MINICPM_DIST)
    return
  }
  const lib = realpathSync(process.env.MINICPM_LIB ?? join(REPO, 'build', 'libminicpm.so'))
  exe = join(work, 'minicpm-edge')
  // The same flags as the Makefile's dist target.
  const build = Bun.spawnSync(
    [
      process.execPath,
      'build',
      '--compile',
      '--minify',
      '--no-compile-autoload-dotenv',
      '--no-compile-autoload-bunfig',
      'cli.ts',
      'src/runtime/text-worker-entry.ts',
      lib,
      '--outfile',
      exe,
    ],
    { cwd: REPO },
  )
  console.log(build.stdout.toString().trim(), build.stderr.toString().trim())
  expect(build.exitCode).toBe(0)
}, 120_000)
afterAll(() => rmSync(work, { recursive: true, force: true }))

/** Runs the executable from the temp dir with no hint where a library or model could be. */
function runExe(args: string[], extraEnv: Record<string, string> = {}) {
  const env: Record<string, string> = { ...(process.env as Record<string, string>), ...extraEnv }
  delete env.MINICPM_LIB
  delete env.MINICPM_MODEL
  const p = Bun.spawnSync([exe, ...args], { cwd: work, env })
  return { code: p.exitCode, stdout: p.stdout.toString(), stderr: p.stderr.toString() }
}

test('the executable exists and prints its help from another directory', () => {
  expect(existsSync(exe)).toBe(true)
  const r = runExe(['--help'])
  expect(r.code).toBe(0)
  expect(r.stdout).toContain('Usage: minicpm-edge <command>')
})

test('it loads the embedded library and generates the same tokens as the sources', () => {
  const flags = ['generate', '-m', dir, '-p', 'Hello from the binary', '-n', '5', '--temperature', '0', '--ignore-eos']
  const r = runExe(flags)
  console.log(`exit ${r.code} stdout ${JSON.stringify(r.stdout)} stderr ${r.stderr.trim()}`)
  expect(r.code).toBe(0)
  const src = Bun.spawnSync([process.execPath, 'src/cli/main.ts', ...flags], { cwd: REPO })
  expect(r.stdout).toBe(src.stdout.toString())
  expect(r.stdout.trim().length).toBeGreaterThan(0)
  const info = JSON.parse(runExe(['info', '-m', dir, '--json']).stdout)
  console.log(`library used: ${info.load.library}`)
  expect(info.load.library).toStartWith('/$bunfs/')
}, 60_000)

test('with no model given it generates the default random-weight model and uses it', () => {
  const cache = join(work, 'cache')
  const r = runExe(['generate', '--raw', '-p', 'hi', '-n', '3', '--temperature', '0', '--ignore-eos'], {
    MINICPM_CACHE: cache,
  })
  console.log(`exit ${r.code} stderr ${r.stderr.trim()}`)
  expect(r.code).toBe(0)
  expect(r.stderr).toContain('the default model')
  expect(existsSync(join(cache, 'minicpm4-random-tiny', 'config.json'))).toBe(true)
}, 120_000)
