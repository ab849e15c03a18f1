/**
 * MINICPM_TRACE_FFI=1: wraps every symbol so each call logs its name, arguments, result and time to stderr.
 * When the switch is off the raw symbols are used as they are, so tracing costs nothing.
 */

type Fn = (...args: unknown[]) => unknown

export function traceSymbols<T extends Record<string, Fn>>(
  raw: T,
  write: (line: string) => void = (line) => process.stderr.write(line + '\n'),
): T {
  const traced: Record<string, Fn> = {}
  for (const [name, fn] of Object.entries(raw)) {
    traced[name] = (...args: unknown[]) => {
      const t0 = performance.now()
      const result = fn(...args)
      const us = ((performance.now() - t0) * 1000).toFixed(1)
      write(`[ffi] ${name}(${args.map(formatArg).join(', ')}) -> ${formatArg(result)} ${us}us`)
      return result
    }
  }
  return traced as T
}

function formatArg(value: unknown): string {
  if (value === null || value === undefined) return String(value)
  if (ArrayBuffer.isView(value)) {
    return `${value.constructor.name}(${(value as unknown as ArrayLike<number>).length})`
  }
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? value.slice(0, 77) + '...' : value)
  return String(value)
}
