/**
 * A local stand-in for the Hugging Face hub with the real API's shapes: `GET /api/models/<repo>/revision/<rev>
 * ?blobs=true` lists `{sha, siblings: [{rfilename, size, blobId, lfs?: {sha256, size}}]}`, and
 * `GET /<repo>/resolve/<rev>/<file>` serves the bytes (LFS files through a redirect to a CDN path, as the hub
 * does), honouring Range. Faults on demand: a connection dropped halfway through a file, wrong bytes for a
 * file (checksum mismatch), and a token required (401 without it).
 */
import { createHash } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

export interface FakeHubOptions {
  repo: string
  /** Files served: a model directory's files plus extras (e.g. pytorch_model.bin, README.md). */
  files: Record<string, Uint8Array<ArrayBuffer>>
  /** Names stored in LFS (sha256 reported); default: *.safetensors, *.bin, tokenizer.model. */
  lfs?: (name: string) => boolean
  sha?: string
  /** Required `Authorization: Bearer <token>` on every route. */
  token?: string
  /** The first download of this file stops after half its bytes (the socket is closed). */
  dropOnce?: string
  /** This file is served with its bytes altered (same size), so its sha256 does not match. */
  corrupt?: string
}

export interface FakeHub {
  url: string
  requests: { method: string; path: string; range: string | null; auth: string | null }[]
  stop(): void
}

export function filesOf(dir: string, extras: Record<string, string> = {}): Record<string, Uint8Array<ArrayBuffer>> {
  const out: Record<string, Uint8Array<ArrayBuffer>> = {}
  for (const name of readdirSync(dir)) out[name] = new Uint8Array(readFileSync(join(dir, name)))
  for (const [name, text] of Object.entries(extras)) out[name] = new TextEncoder().encode(text)
  return out
}

const gitBlobId = (b: Uint8Array) =>
  createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex')
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex')

export function startFakeHub(opts: FakeHubOptions): FakeHub {
  const sha = opts.sha ?? 'c0ffee'.padEnd(40, '0')
  const isLfs = opts.lfs ?? ((n: string) => /\.(safetensors|bin)$|^tokenizer\.model$/.test(n))
  const requests: FakeHub['requests'] = []
  let dropped = false
  const byHash = new Map<string, string>()
  const siblings = Object.entries(opts.files).map(([name, bytes]) => {
    const entry: Record<string, unknown> = { rfilename: name, size: bytes.length, blobId: gitBlobId(bytes) }
    if (isLfs(name)) {
      entry.lfs = { sha256: sha256(bytes), size: bytes.length, pointerSize: 134 }
      byHash.set(sha256(bytes), name)
    }
    return entry
  })

  const body = (name: string, req: Request): Response => {
    let bytes = opts.files[name]!
    if (name === opts.corrupt) {
      bytes = bytes.slice()
      bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0xff
    }
    let start = 0
    const range = req.headers.get('range')
    const m = range && /^bytes=(\d+)-$/.exec(range)
    if (m) start = Number(m[1])
    if (start >= bytes.length && bytes.length > 0) return new Response(null, { status: 416 })
    const part = bytes.subarray(start)
    const headers = {
      'content-length': String(part.length),
      'content-type': 'application/octet-stream',
      ...(m ? { 'content-range': `bytes ${start}-${bytes.length - 1}/${bytes.length}` } : {}),
    }
    if (name === opts.dropOnce && !dropped) {
      dropped = true
      // Half the bytes, then the connection goes away with the promised length unmet.
      const half = part.subarray(0, part.length >> 1)
      const stream = new ReadableStream<Uint8Array>({
        async start(ctl) {
          ctl.enqueue(half)
          await Bun.sleep(20)
          ctl.close()
        },
      })
      return new Response(stream, { status: m ? 206 : 200, headers })
    }
    return new Response(part, { status: m ? 206 : 200, headers })
  }

  const server = Bun.serve({
    hostname: '127.0.0.1',
    port: 0,
    fetch(req) {
      const url = new URL(req.url)
      const auth = req.headers.get('authorization')
      requests.push({ method: req.method, path: url.pathname + url.search, range: req.headers.get('range'), auth })
      if (url.pathname.startsWith('/cdn/')) {
        const name = byHash.get(url.pathname.slice(5))
        return name ? body(name, req) : new Response('no such blob', { status: 404 })
      }
      if (opts.token && auth !== `Bearer ${opts.token}`) {
        return Response.json({ error: 'Invalid credentials in Authorization header' }, {
          status: 401,
          headers: { 'x-error-code': 'RepoNotFound' },
        })
      }
      const api = `/api/models/${opts.repo}/revision/`
      if (url.pathname.startsWith(api)) {
        return Response.json({ id: opts.repo, modelId: opts.repo, sha, siblings })
      }
      const resolve = `/${opts.repo}/resolve/`
      if (url.pathname.startsWith(resolve)) {
        const name = decodeURIComponent(url.pathname.slice(resolve.length).split('/').slice(1).join('/'))
        if (!(name in opts.files)) return new Response('Entry not found', { status: 404 })
        if (isLfs(name)) {
          return new Response(null, { status: 302, headers: { location: `/cdn/${sha256(opts.files[name]!)}` } })
        }
        return body(name, req)
      }
      return Response.json({ error: 'Repository not found' }, { status: 401 })
    },
  })
  return { url: `http://127.0.0.1:${server.port}`, requests, stop: () => server.stop(true) }
}
