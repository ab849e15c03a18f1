/** Types for parse-prometheus-text-format (the package ships none): families as the text format gives them. */
declare module 'parse-prometheus-text-format' {
  interface PrometheusFamily {
    name: string
    help: string
    type: 'GAUGE' | 'COUNTER' | 'HISTOGRAM' | 'SUMMARY' | 'UNTYPED'
    metrics: Array<{ value?: string; labels?: Record<string, string>; buckets?: Record<string, string> }>
  }
  export default function parsePrometheusTextFormat(text: string): PrometheusFamily[]
}
