/**
 * Timeline: the engine-clock timestamps of one request (from request info and event times) -> Timings.
 */
import type { NativeEvent, NativeRequestInfo } from '../../ffi/index'
import type { Timings } from '../types'

export class Timeline {
  submitUs = 0
  admitUs = 0
  firstTokenUs = 0
  endUs = 0
  specVerifies = 0
  specAccepted = 0

  static empty(): Timings {
    return { queueMs: 0, prefillMs: 0, decodeMs: 0, perTokenMs: 0 }
  }

  fromInfo(info: NativeRequestInfo): void {
    this.submitUs = info.tSubmitUs
    this.admitUs = info.tAdmitUs
  }

  onEvent(ev: NativeEvent): void {
    if (ev.token >= 0 && this.firstTokenUs === 0) this.firstTokenUs = ev.tUs
    if (ev.tUs > this.endUs) this.endUs = ev.tUs
    this.specVerifies = Math.max(this.specVerifies, ev.specVerifies)
    this.specAccepted = Math.max(this.specAccepted, ev.specAccepted)
  }

  timings(nTokens: number): Timings {
    const ms = (a: number, b: number) => (a > 0 && b >= a ? (b - a) / 1000 : 0)
    const admit = this.admitUs || this.submitUs
    const first = this.firstTokenUs || this.endUs
    const decodeMs = ms(this.firstTokenUs, this.endUs)
    return {
      queueMs: ms(this.submitUs, admit),
      prefillMs: ms(admit, first),
      decodeMs,
      perTokenMs: nTokens > 1 ? decodeMs / (nTokens - 1) : 0,
      ...(this.specVerifies > 0
        ? {
            specVerifies: this.specVerifies,
            specAccepted: this.specAccepted,
            meanAcceptLength: 1 + this.specAccepted / this.specVerifies,
          }
        : {}),
    }
  }
}
