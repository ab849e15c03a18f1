/**
 * NativeError: a failed status code from the library plus the calling thread's minicpm_last_error() text.
 */
import { lib, nativeLibrary } from './library'

export class NativeError extends Error {
  readonly status: number
  readonly statusName: string

  constructor(status: number, statusName: string, message: string) {
    super(message)
    this.name = 'NativeError'
    this.status = status
    this.statusName = statusName
  }
}

/** The error for a failed call; `what` names the operation, the library's last error says why. */
export function nativeError(status: number, what: string): NativeError {
  const detail = nativeLibrary.lastError() // first: another call may clear it
  const name = lib().minicpm_status_name(status) as unknown as string
  if (!detail) return new NativeError(status, name, `${what}: ${name}`)
  // Library messages often name the function already ("eval: token id ..."): do not say it twice.
  return new NativeError(status, name, detail.startsWith(`${what}:`) ? detail : `${what}: ${detail}`)
}

/** Throws unless status is OK (0). */
export function check(status: number, what: string): void {
  if (status !== 0) throw nativeError(status, what)
}

/** Copies ids into an Int32Array; a value that is not a 32-bit integer is an invalid_argument, never silently 0. */
export function int32Array(values: ArrayLike<number>, what: string): Int32Array {
  const out = new Int32Array(values.length)
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) {
      throw new NativeError(-1, 'invalid_argument', `${what}[${i}] = ${v} is not a 32-bit integer`)
    }
    out[i] = v
  }
  return out
}
