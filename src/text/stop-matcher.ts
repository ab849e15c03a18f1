/**
 * Stop strings over streamed text. The text is cut exactly before the first stop string to complete, even when it
 * arrives split across pushes; a tail that could still become a stop string is held back until it either
 * completes (stop) or cannot anymore (released).
 */

export class StopMatcher {
  private readonly stops: string[]
  private held = ''
  private stopped = false

  constructor(stops: string[]) {
    if (!Array.isArray(stops) || stops.some((s) => typeof s !== 'string')) {
      throw new TypeError('StopMatcher: stops must be an array of strings')
    }
    // An empty stop string would match everywhere; OpenAI-compatible servers ignore it.
    this.stops = [...new Set(stops.filter((s) => s.length > 0))]
  }

  push(text: string): { emit: string; stopped: boolean } {
    if (this.stopped) return { emit: '', stopped: true }
    const buf = this.held + text
    // Generation stops where a stop string first completes, so the match that ends earliest wins (on a tie the
    // longer one); this makes the cut independent of how the text was split into pushes.
    let cut = -1
    let end = Infinity
    for (const s of this.stops) {
      const i = buf.indexOf(s)
      if (i !== -1 && (i + s.length < end || (i + s.length === end && i < cut))) {
        cut = i
        end = i + s.length
      }
    }
    if (cut !== -1) {
      this.stopped = true
      this.held = ''
      return { emit: buf.slice(0, cut), stopped: true }
    }
    const keep = this.partialTail(buf)
    this.held = buf.slice(buf.length - keep)
    return { emit: buf.slice(0, buf.length - keep), stopped: false }
  }

  /** Releases the held tail at the end of the stream ('' after a stop). */
  flush(): string {
    const out = this.held
    this.held = ''
    return out
  }

  // Length of the longest suffix of buf that is a proper prefix of some stop string.
  private partialTail(buf: string): number {
    let best = 0
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, buf.length); k > best; k--) {
        if (buf.endsWith(s.slice(0, k))) {
          best = k
          break
        }
      }
    }
    return best
  }
}
