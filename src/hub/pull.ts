/**
 * pull(): a model from the Hugging Face hub into the standard HF cache, the way `ollama pull`, `vllm serve
 * org/model` and `llama-server -hf` users expect. The repo's files are listed through the hub API
 * (`/api/models/<repo>/revision/<rev>?blobs=true`); only what the engine reads is fetched (config, generation
 * config, tokenizer files, the weights and their index: safetensors, or pytorch_model.bin where a repo has
 * none). Each file goes to `blobs/<sha>.incomplete`, is resumed with a Range request after a dropped
 * connection, checked against the size the hub lists and, for LFS files, the sha256 it reports, and only then
 * renamed into place. The snapshot's links are made after
 * every blob is verified, config.json last, so a half-finished pull never looks like a model.
 */
import { createHash } from 'node:crypto'
import { createReadStream, existsSync, mkdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { formatSize } from '../util/size'
import { cachedSnapshot, hubEndpoint, hubOffline, hubToken, isHubId, repoCacheDir } from './cache'
import { isWeightFile } from './weight-files'

export interface PullOptions {
  revision?: string
  /** Byte progress over all files to fetch: (phase, done, total, 'bytes'). */
  onProgress?: (phase: string, done: number, total: number, unit?: 'bytes') => void
  /** One line per notable step (files to fetch, a resumed connection, a file already present). */
  log?: (line: string) => void
  /** Attempts per file after a dropped connection; default 5. */
  retries?: number
}

interface Sibling {
  rfilename: string
  size?: number
  blobId?: string
  lfs?: { sha256: string; size: number }
}

/** What the engine reads from a repo; everything else (code, docs, images, other formats) is left. */
export function wanted(name: string): boolean {
  if (name.includes('/')) return false
  return (
    /^(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens)\.json$/.test(name) ||
    name === 'tokenizer.model' ||
    name === 'chat_template.jinja' ||
    isWeightFile(name) !== null
  )
}

export class HubError extends Error {}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const token = hubToken()
  return { 'user-agent': 'minicpm-edge', ...(token ? { authorization: `Bearer ${token}` } : {}), ...extra }
}

function refused(repo: string, status: number): HubError {
  const token = hubToken()
  if (status === 403) {
    return new HubError(
      `the hub refused access to ${repo} (403): it is gated; accept its terms on ${hubEndpoint()}/${repo} with the account of HF_TOKEN`,
    )
  }
  return new HubError(
    token
      ? `the hub refused HF_TOKEN for ${repo} (401): the token is invalid or has no access to this repo`
      : `the hub answered 401 for ${repo}: it does not exist, or it is private or gated; check the id, and for a gated or private repo set HF_TOKEN to a token with access`,
  )
}

async function listFiles(repo: string, revision: string): Promise<{ sha: string; siblings: Sibling[] }> {
  const url = `${hubEndpoint()}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`
  let res: Response
  try {
    res = await fetch(url, { headers: headers(), signal: AbortSignal.timeout(30_000) })
  } catch (e) {
    throw new HubError(`cannot reach the hub at ${hubEndpoint()} (${(e as Error).message}); set HF_ENDPOINT for a mirror, or HF_HUB_OFFLINE=1 to use the cache only`)
  }
  if (res.status === 401 || res.status === 403) throw refused(repo, res.status)
  if (res.status === 404) throw new HubError(`${repo} (revision ${revision}) was not found on ${hubEndpoint()}`)
  if (!res.ok) throw new HubError(`the hub answered ${res.status} ${res.statusText} listing ${repo}`)
  const body = (await res.json()) as { sha?: string; siblings?: Sibling[] }
  if (typeof body.sha !== 'string' || !Array.isArray(body.siblings)) {
    throw new HubError(`unexpected answer from ${url}: no sha or siblings`)
  }
  return { sha: body.sha, siblings: body.siblings }
}

/**
 * Downloads `repo` (an `org/name` hub id) unless its snapshot is already complete in the cache; returns the
 * snapshot directory (a model directory for loadModel).
 *
 * @example
 * const dir = await pull('openbmb/MiniCPM4-0.5B', { log: console.error })
 */
export async function pull(repo: string, opts: PullOptions = {}): Promise<string> {
  if (!isHubId(repo)) throw new HubError(`'${repo}' is not a hub id (expected org/name, e.g. openbmb/MiniCPM4-0.5B)`)
  const revision = opts.revision ?? 'main'
  const log = opts.log ?? (() => {})
  if (hubOffline()) {
    const dir = cachedSnapshot(repo, revision)
    if (dir) return dir
    throw new HubError(`${repo} is not in the cache (${repoCacheDir(repo)}) and HF_HUB_OFFLINE is set`)
  }
  let listing: { sha: string; siblings: Sibling[] }
  try {
    listing = await listFiles(repo, revision)
  } catch (e) {
    // The hub is unreachable: a complete cached copy still serves (as huggingface_hub does).
    const cached = (e as Error).message.startsWith('cannot reach') ? cachedSnapshot(repo, revision) : null
    if (cached) {
      log(`${(e as Error).message.split(';')[0]}; using the cached copy ${cached}`)
      return cached
    }
    throw e
  }
  // PyTorch's pytorch_model.bin is fetched only where a repo has no safetensors (as transformers prefers them).
  const hasSafetensors = listing.siblings.some((s) => isWeightFile(s.rfilename) === 'safetensors')
  const files = listing.siblings.filter(
    (s) => wanted(s.rfilename) && !(hasSafetensors && isWeightFile(s.rfilename) === 'bin'),
  )
  const names = files.map((f) => f.rfilename)
  if (!names.includes('config.json')) throw new HubError(`${repo} has no config.json: it is not a transformers model`)
  if (!names.some((n) => isWeightFile(n) !== null && !n.endsWith('.index.json'))) {
    const others = listing.siblings.map((s) => s.rfilename).filter((n) => /\.(bin|pt|pth|gguf)$/.test(n))
    throw new HubError(
      `${repo} has no .safetensors or pytorch_model.bin weights${others.length ? ` (only ${others.slice(0, 3).join(', ')})` : ''}; minicpm-edge reads those two formats`,
    )
  }

  const root = repoCacheDir(repo)
  const snapshot = join(root, 'snapshots', listing.sha)
  mkdirSync(join(root, 'blobs'), { recursive: true })
  const plan = files.map((f) => {
    const blob = f.lfs?.sha256 ?? f.blobId
    if (!blob || !/^[0-9a-f]{40,64}$/.test(blob)) {
      throw new HubError(`the hub listed ${f.rfilename} without a blob id; cannot place it in the cache`)
    }
    return { name: f.rfilename, blob, size: f.lfs?.size ?? f.size, sha256: f.lfs?.sha256 }
  })
  const have = (p: (typeof plan)[number]) => {
    const path = join(root, 'blobs', p.blob)
    return existsSync(path) && (p.size === undefined || statSync(path).size === p.size)
  }
  const todo = plan.filter((p) => !have(p))
  const total = todo.reduce((n, p) => n + (p.size ?? 0), 0)
  if (todo.length > 0) {
    log(`pulling ${repo} (${listing.sha.slice(0, 12)}): ${todo.length} of ${plan.length} files, ${formatSize(total)}, into ${root}`)
  }
  let done = 0
  const phase = `pulling ${repo}`
  for (const p of todo) {
    const base = done
    await fetchBlob(repo, listing.sha, p, join(root, 'blobs', p.blob), opts.retries ?? 5, log, (n) =>
      opts.onProgress?.(phase, base + n, total, 'bytes'),
    )
    done = base + (p.size ?? 0)
  }
  if (todo.length > 0) opts.onProgress?.(phase, total, total, 'bytes')

  // Links last, config.json very last: until then the snapshot does not look like a model.
  mkdirSync(snapshot, { recursive: true })
  for (const p of [...plan.filter((q) => q.name !== 'config.json'), ...plan.filter((q) => q.name === 'config.json')]) {
    const link = join(snapshot, p.name)
    const tmp = `${link}.tmp-${process.pid}`
    rmSync(tmp, { force: true })
    symlinkSync(relative(snapshot, join(root, 'blobs', p.blob)), tmp)
    renameSync(tmp, link)
  }
  mkdirSync(join(root, 'refs'), { recursive: true })
  if (revision !== listing.sha) writeFileSync(join(root, 'refs', revision), listing.sha)
  return snapshot
}

type Planned = { name: string; blob: string; size?: number; sha256?: string }

async function fetchBlob(
  repo: string,
  commit: string,
  p: Planned,
  dest: string,
  retries: number,
  log: (line: string) => void,
  progress: (bytes: number) => void,
): Promise<void> {
  const part = `${dest}.incomplete`
  const url = `${hubEndpoint()}/${repo}/resolve/${commit}/${p.name.split('/').map(encodeURIComponent).join('/')}`
  for (let attempt = 1; ; attempt++) {
    let have = existsSync(part) ? statSync(part).size : 0
    if (p.size !== undefined && have > p.size) {
      rmSync(part)
      have = 0
    }
    try {
      if (p.size === undefined || have < p.size) await download(url, part, have, repo, progress)
      const got = statSync(part).size
      // A body that ended short (a chunked response cut off looks like a clean end): resume it.
      if (p.size !== undefined && got < p.size) throw new Error(`connection closed after ${got} of ${p.size} bytes`)
      break
    } catch (e) {
      if (e instanceof HubError || attempt > retries) {
        throw e instanceof HubError ? e : new HubError(`downloading ${p.name} failed: ${(e as Error).message} (run pull again to resume)`)
      }
      const now = existsSync(part) ? statSync(part).size : 0
      log(`${p.name}: connection lost at ${formatSize(now)} (${(e as Error).message}); resuming (attempt ${attempt + 1} of ${retries + 1})`)
      await Bun.sleep(Math.min(200 * 2 ** attempt, 5000))
    }
  }
  const size = statSync(part).size
  if (p.size !== undefined && size !== p.size) {
    rmSync(part, { force: true })
    throw new HubError(`${p.name}: got ${size} bytes, the hub lists ${p.size}; the partial file was removed, run pull again`)
  }
  if (p.sha256) {
    const got = await sha256File(part)
    if (got !== p.sha256) {
      rmSync(part, { force: true })
      throw new HubError(
        `${p.name}: sha256 mismatch (expected ${p.sha256}, got ${got}); the download was removed, run pull again`,
      )
    }
  }
  renameSync(part, dest)
}

async function download(url: string, part: string, from: number, repo: string, progress: (n: number) => void) {
  // Redirects followed by hand: the token goes to the hub's origin only, never to the CDN it redirects to.
  const origin = new URL(url).origin
  let target = url
  let res!: Response
  for (let hop = 0; hop < 10; hop++) {
    const h = headers(from > 0 ? { range: `bytes=${from}-` } : {})
    if (new URL(target).origin !== origin) delete h.authorization
    res = await fetch(target, { headers: h, redirect: 'manual' })
    const location = res.headers.get('location')
    if (res.status < 300 || res.status >= 400 || !location) break
    target = new URL(location, target).href
  }
  if (res.status === 401 || res.status === 403) throw refused(repo, res.status)
  if (res.status === 416) return // the part is already whole; the size check decides
  if (!res.ok || !res.body) throw new HubError(`the hub answered ${res.status} ${res.statusText} for ${url}`)
  const append = from > 0 && res.status === 206
  const fh = await open(part, append ? 'a' : 'w')
  let n = append ? from : 0
  const length = Number(res.headers.get('content-length') ?? NaN)
  try {
    for await (const chunk of res.body) {
      await fh.write(chunk)
      n += chunk.byteLength
      progress(n)
    }
  } finally {
    await fh.close()
  }
  // A connection closed early without an error from fetch: resumable like any other drop.
  if (Number.isFinite(length) && n < (append ? from : 0) + length) {
    throw new Error(`connection closed after ${n} bytes`)
  }
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256')
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject)
  })
}
