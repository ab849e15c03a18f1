/**
 * @module
 * A small Prometheus registry (text exposition format 0.0.4): counters, gauges and histograms with
 * labels. Written by hand because the server needs a dozen series and no push, pull or default
 * process metrics; a dependency would be larger than this file.
 */

type Labels = Record<string, string>

const escapeLabel = (v: string) =>
  v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')

function labelText(labels: Labels, extra?: [string, string]): string {
  const pairs = Object.entries(labels)
  if (extra) pairs.push(extra)
  if (pairs.length === 0) return ''
  return `{${pairs.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(',')}}`
}

const keyOf = (labels: Labels) => JSON.stringify(Object.entries(labels).sort())

const num = (v: number) =>
  Number.isFinite(v) ? String(v) : v > 0 ? '+Inf' : v < 0 ? '-Inf' : 'NaN'

interface Metric {
  name: string
  help: string
  type: 'counter' | 'gauge' | 'histogram'
  render(): string[]
}

/** A monotonically increasing value per label set. */
export class Counter implements Metric {
  readonly type = 'counter'
  private values = new Map<string, { labels: Labels; value: number }>()
  constructor(
    readonly name: string,
    readonly help: string,
  ) {}

  inc(by = 1, labels: Labels = {}): void {
    if (by < 0) throw new Error(`counter ${this.name} cannot decrease`)
    const key = keyOf(labels)
    const cur = this.values.get(key)
    if (cur) cur.value += by
    else this.values.set(key, { labels, value: by })
  }

  get(labels: Labels = {}): number {
    return this.values.get(keyOf(labels))?.value ?? 0
  }

  render(): string[] {
    if (this.values.size === 0) return [`${this.name} 0`]
    return [...this.values.values()].map(
      (v) => `${this.name}${labelText(v.labels)} ${num(v.value)}`,
    )
  }
}

/** A value read at scrape time from a callback (engine state is owned elsewhere). */
export class Gauge implements Metric {
  readonly type = 'gauge'
  constructor(
    readonly name: string,
    readonly help: string,
    private collect: () => number,
  ) {}

  render(): string[] {
    return [`${this.name} ${num(this.collect())}`]
  }
}

/** A counter or gauge whose series (label sets and values) are read at scrape time from a callback. */
export class Collected implements Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge',
    private collect: () => Array<{ labels?: Labels; value: number }>,
  ) {}

  render(): string[] {
    return this.collect().map((s) => `${this.name}${labelText(s.labels ?? {})} ${num(s.value)}`)
  }
}

/** A constant 1 whose labels describe the running configuration, read at scrape time (`*_info`). */
export class InfoGauge implements Metric {
  readonly type = 'gauge'
  constructor(
    readonly name: string,
    readonly help: string,
    private collect: () => Labels | null,
  ) {}

  render(): string[] {
    const labels = this.collect()
    return labels ? [`${this.name}${labelText(labels)} 1`] : [`${this.name} 0`]
  }
}

/** A gauge with one series per label set, all read at scrape time. */
export class GaugeSeries implements Metric {
  readonly type = 'gauge'
  constructor(
    readonly name: string,
    readonly help: string,
    private collect: () => Array<[Labels, number]>,
  ) {}

  render(): string[] {
    return this.collect().map(([labels, v]) => `${this.name}${labelText(labels)} ${num(v)}`)
  }
}

/** Cumulative buckets plus sum and count, one series per label set. */
export class Histogram implements Metric {
  readonly type = 'histogram'
  private series = new Map<
    string,
    { labels: Labels; counts: number[]; sum: number; count: number }
  >()
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: number[],
  ) {}

  observe(value: number, labels: Labels = {}): void {
    const key = keyOf(labels)
    let s = this.series.get(key)
    if (!s) {
      s = { labels, counts: new Array(this.buckets.length).fill(0), sum: 0, count: 0 }
      this.series.set(key, s)
    }
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++
    s.sum += value
    s.count++
  }

  count(labels: Labels = {}): number {
    return this.series.get(keyOf(labels))?.count ?? 0
  }

  render(): string[] {
    const lines: string[] = []
    for (const s of this.series.values()) {
      this.buckets.forEach((le, i) =>
        lines.push(`${this.name}_bucket${labelText(s.labels, ['le', num(le)])} ${s.counts[i]}`),
      )
      lines.push(`${this.name}_bucket${labelText(s.labels, ['le', '+Inf'])} ${s.count}`)
      lines.push(`${this.name}_sum${labelText(s.labels)} ${num(s.sum)}`)
      lines.push(`${this.name}_count${labelText(s.labels)} ${s.count}`)
    }
    return lines
  }
}

/** Holds metrics in registration order and renders them all. */
export class Registry {
  private metrics: Metric[] = []
  /** Called once at the start of every render (e.g. to take one snapshot that all series of a scrape read). */
  onScrape: (() => void) | null = null

  counter(name: string, help: string): Counter {
    return this.add(new Counter(name, help))
  }

  gauge(name: string, help: string, collect: () => number): Gauge {
    return this.add(new Gauge(name, help, collect))
  }

  /** Series read from engine state at scrape time (a counter must only ever grow there). */
  collected(
    name: string,
    help: string,
    type: 'counter' | 'gauge',
    collect: () => Array<{ labels?: Labels; value: number }>,
  ): Collected {
    return this.add(new Collected(name, help, type, collect))
  }

  /** A `*_info` series: value 1 with the labels `collect` returns, or 0 without labels while it returns null. */
  info(name: string, help: string, collect: () => Labels | null): InfoGauge {
    return this.add(new InfoGauge(name, help, collect))
  }

  gaugeSeries(name: string, help: string, collect: () => Array<[Labels, number]>): GaugeSeries {
    return this.add(new GaugeSeries(name, help, collect))
  }

  histogram(name: string, help: string, buckets: number[]): Histogram {
    return this.add(
      new Histogram(
        name,
        help,
        [...buckets].sort((a, b) => a - b),
      ),
    )
  }

  /** The text exposition format, ending in a newline. */
  render(): string {
    this.onScrape?.()
    const out: string[] = []
    for (const m of this.metrics) {
      out.push(`# HELP ${m.name} ${m.help}`, `# TYPE ${m.name} ${m.type}`, ...m.render())
    }
    return out.join('\n') + '\n'
  }

  private add<T extends Metric>(m: T): T {
    if (this.metrics.some((x) => x.name === m.name))
      throw new Error(`metric ${m.name} registered twice`)
    this.metrics.push(m)
    return m
  }
}
