/** Streaming text helpers: incremental detokenization and stop strings. */

export { StreamDecoder } from './stream-decoder'
export { StopMatcher } from './stop-matcher'
