/**
 * Logit comparison for the parity tests: max abs error and max rel error, where rel = max|a - b| /
 * max|b| over all rows compared (element-wise relative error is meaningless for logits near zero).
 */
import { expect } from 'bun:test'

export interface Diff {
  maxAbs: number
  maxRel: number
}

export function diff(got: ArrayLike<number>[], want: ArrayLike<number>[]): Diff {
  expect(got.length).toBe(want.length)
  let maxAbs = 0
  let scale = 0
  for (let r = 0; r < want.length; r++) {
    const a = got[r]!
    const b = want[r]!
    expect(a.length).toBe(b.length)
    for (let i = 0; i < b.length; i++) {
      const d = Math.abs(a[i]! - b[i]!)
      // NaN must fail the comparison, not vanish in Math.max.
      maxAbs = Number.isNaN(d) ? Infinity : Math.max(maxAbs, d)
      scale = Math.max(scale, Math.abs(b[i]!))
    }
  }
  return { maxAbs, maxRel: maxAbs / scale }
}

/** Prints the metric against its tolerance, then asserts it. */
export function expectClose(
  label: string,
  got: ArrayLike<number>[],
  want: ArrayLike<number>[],
  relTol: number,
): Diff {
  const d = diff(got, want)
  console.log(
    `${label}: rows=${want.length} max_abs=${d.maxAbs.toExponential(3)} max_rel=${d.maxRel.toExponential(3)} (tol rel ${relTol.toExponential(1)})`,
  )
  expect(d.maxRel).toBeLessThanOrEqual(relTol)
  return d
}
