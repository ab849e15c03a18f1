/**
 * The bun:ffi bindings of libminicpm: one class per native handle plus the library facts.
 */
export { NativeError } from './errors'
export { nativeLibrary, ABI_VERSION } from './library'
export {
  NativeModel,
  QUANTIZE_TYPES,
  SPARSE_MODES,
  type NativeModelInfo,
  type NativeModelOptions,
  type QuantizeType,
  type SparseMode,
} from './model'
export { NativeContext, type NativeContextOptions, type EvalOptions } from './context'
export {
  NativeEngine,
  type NativeEngineOptions,
  type NativeSampling,
  type NativeRequestInfo,
  type NativeEngineStats,
} from './engine'
export { structSizes, type NativeEvent, type NativeFinish, type KvDtype, type Backend } from './structs'
