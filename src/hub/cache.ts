/**
 * The Hugging Face hub's conventions, as huggingface_hub (Python) implements them, so that a model pulled
 * here and one downloaded by Python tools share one cache: HF_ENDPOINT, HF_TOKEN (or the token file that
 * `huggingface-cli login` writes), HF_HUB_OFFLINE, and the cache layout
 * `$HF_HUB_CACHE/models--<org>--<name>/{blobs/<sha>, snapshots/<commit>/<file> -> ../../blobs/<sha>, refs/<rev>}`
 * (HF_HUB_CACHE defaults to $HF_HOME/hub, HF_HOME to $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface).
 */
import { readFileSync, statSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { weightFiles } from './weight-files'

/** `org/name` (letters, digits, `-`, `_`, `.`), the form the hub, vLLM and `ollama pull`-style tools take. */
export function isHubId(s: string): boolean {
  return /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/.test(s) && !s.includes('..')
}

export function hfHome(): string {
  const xdg = process.env.XDG_CACHE_HOME || join(homedir(), '.cache')
  return process.env.HF_HOME || join(xdg, 'huggingface')
}

export function hubCacheDir(): string {
  return process.env.HF_HUB_CACHE || process.env.HUGGINGFACE_HUB_CACHE || join(hfHome(), 'hub')
}

export function hubEndpoint(): string {
  return (process.env.HF_ENDPOINT || 'https://huggingface.co').replace(/\/+$/, '')
}

export function hubToken(): string | undefined {
  const env = process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN
  if (env) return env.trim()
  const file = process.env.HF_TOKEN_PATH || join(hfHome(), 'token')
  try {
    return readFileSync(file, 'utf8').trim() || undefined
  } catch {
    return undefined
  }
}

export function hubOffline(): boolean {
  return ['1', 'true', 'yes', 'on'].includes((process.env.HF_HUB_OFFLINE ?? '').toLowerCase())
}

/** The repo's folder in the cache. */
export function repoCacheDir(repo: string): string {
  return join(hubCacheDir(), `models--${repo.replace('/', '--')}`)
}

/** `models--org--name/snapshots/<commit>` -> `org/name` (the id a model directory reports), else null. */
export function repoOfSnapshot(dir: string): string | null {
  const m = /(?:^|\/)models--([^/]+?)--([^/]+)\/snapshots\/[^/]+\/?$/.exec(dir)
  return m ? `${m[1]}/${m[2]}` : null
}

/**
 * The cached snapshot of `repo` at `revision` if it is complete: config.json, and every weight file of the
 * format the engine would load (weight-files.ts), all resolving to real blobs. A partial download (by us or
 * by another tool) is never taken for a model.
 */
export function cachedSnapshot(repo: string, revision = 'main'): string | null {
  const root = repoCacheDir(repo)
  let commit = revision
  try {
    commit = readFileSync(join(root, 'refs', revision), 'utf8').trim()
  } catch {
    if (!/^[0-9a-f]{40}$/.test(revision)) return null
  }
  const dir = join(root, 'snapshots', commit)
  return snapshotComplete(dir) ? dir : null
}

export function snapshotComplete(dir: string): boolean {
  const file = (name: string) => {
    try {
      return statSync(join(dir, name)).isFile() // follows the symlink: a dangling link is not a file
    } catch {
      return false
    }
  }
  if (!file('config.json')) return false
  const weights = weightFiles(dir)
  return weights.length > 0 && weights.every(file)
}
