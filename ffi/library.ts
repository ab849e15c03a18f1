/**
 * Finds and opens libminicpm.so once, checks its ABI against the layouts in layouts.ts, and hands out the
 * symbol table (traced when MINICPM_TRACE_FFI=1).
 *
 * Location, first hit wins: $MINICPM_LIB, <repo>/build/libminicpm.so, the copy embedded in a compiled
 * executable (`bun build --compile src/cli/main.ts build/libminicpm.so` puts it in Bun.embeddedFiles).
 */
import { dlopen, type ConvertFns } from 'bun:ffi'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { layoutProblems, layouts, structSizes, type Layout, type StructName } from './layouts'
import { symbols, type Symbols } from './symbols'
import { traceSymbols } from './trace'

/** The MINICPM_ABI_VERSION these bindings were written for. */
export const ABI_VERSION = 3

export type Lib = ConvertFns<Symbols>

interface Loaded {
  path: string
  lib: Lib
}

let loaded: Loaded | null = null

export function cString(text: string): Uint8Array {
  return new TextEncoder().encode(text + '\0')
}

/** Candidate paths in order, with where each came from (for the error message). */
function candidates(): Array<[string, string]> {
  const out: Array<[string, string]> = []
  const env = process.env.MINICPM_LIB
  if (env) return [[env, '$MINICPM_LIB']]
  out.push([join(import.meta.dir, '..', 'build', 'libminicpm.so'), 'the repo build dir'])
  // The embedded name comes from the symlink target plus a hash, e.g. libminicpm.so.0.1-4xdk0jaj.0.
  const embedded = Bun.embeddedFiles.find((f) => (f as Blob & { name: string }).name.startsWith('libminicpm'))
  if (embedded) out.push([`/$bunfs/root/${(embedded as Blob & { name: string }).name}`, 'the executable'])
  return out
}

function locate(): string {
  const list = candidates()
  for (const [path, from] of list) {
    // $bunfs paths are virtual: existsSync cannot see them, dlopen can.
    if (from === 'the executable' || existsSync(path)) return path
  }
  const tried = list.map(([p, from]) => `${p} (${from})`).join(', ')
  throw new Error(`libminicpm.so not found (tried ${tried}); build it with \`make\` or set MINICPM_LIB`)
}

/** The part of the library checkAbi reads (tests pass doctored copies). */
export interface AbiFacts {
  minicpm_abi_version(): number
  minicpm_struct_size(name: Uint8Array): number
  minicpm_struct_offset(name: Uint8Array, field: Uint8Array): number
}

/** Throws unless the ABI version, every struct size and every field offset and size match the bindings. */
export function checkAbi(lib: AbiFacts, path: string, bindings: Record<StructName, Layout> = layouts): void {
  const version = lib.minicpm_abi_version()
  if (version !== ABI_VERSION) {
    throw new Error(
      `${path} has ABI version ${version} but these bindings expect ${ABI_VERSION}; rebuild the library (make)`,
    )
  }
  const wrong: string[] = []
  for (const name of Object.keys(structSizes) as StructName[]) {
    const native = lib.minicpm_struct_size(cString(name))
    if (native !== structSizes[name]) wrong.push(`${name}: library ${native} bytes, bindings ${structSizes[name]}`)
    const offsetOf = (field: string) => lib.minicpm_struct_offset(cString(name), cString(field))
    wrong.push(...layoutProblems(name, bindings[name], native, offsetOf))
  }
  if (wrong.length > 0) {
    throw new Error(`${path}: struct layouts differ from ffi/layouts.ts (${wrong.join('; ')}); rebuild the library`)
  }
}

/** The opened library (opened and checked on first use). */
export function library(): Loaded {
  if (loaded) return loaded
  const path = locate()
  let raw: Lib
  try {
    raw = dlopen(path, symbols).symbols as Lib
  } catch (e) {
    throw new Error(`cannot open ${path}: ${(e as Error).message}`)
  }
  checkAbi(raw, path)
  const lib = process.env.MINICPM_TRACE_FFI === '1' ? traceSymbols(raw as never) : raw
  loaded = { path, lib: lib as Lib }
  return loaded
}

export function lib(): Lib {
  return library().lib
}

/** Reads a "copy into caller buffer, return full length" string such as minicpm_system_info. */
export function readCopiedString(fn: (buf: Uint8Array, cap: number) => number): string {
  let buf = new Uint8Array(256)
  let n = fn(buf, buf.length)
  if (n >= buf.length) {
    buf = new Uint8Array(n + 1)
    n = fn(buf, buf.length)
  }
  return new TextDecoder().decode(buf.subarray(0, Math.max(0, Math.min(n, buf.length - 1))))
}

export const nativeLibrary = {
  get path(): string {
    return library().path
  },
  get abiVersion(): number {
    return lib().minicpm_abi_version()
  },
  systemInfo(): string {
    return readCopiedString((buf, cap) => lib().minicpm_system_info(buf, cap))
  },
  timeUs(): number {
    return Number(lib().minicpm_time_us())
  },
  /** The calling thread's last error message ('' when none). */
  lastError(): string {
    return readCopiedString((buf, cap) => lib().minicpm_last_error(buf, cap))
  },
}
