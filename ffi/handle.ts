/**
 * NativeHandle: the base of every class that owns a native object. guard() fails loud after dispose(),
 * dispose() is idempotent, and a FinalizationRegistry frees what a caller forgot to dispose.
 *
 * Children (contexts, engines) must be freed before their model. A parent keeps its live children, so an
 * explicit dispose() of the parent disposes them first; on the GC path the parent's native free waits until
 * the last child's cell is released.
 */

import type { Pointer } from 'bun:ffi'

interface Cell {
  ptr: Pointer | 0
  free: (ptr: Pointer) => void
  parent: Cell | null
  liveChildren: number
  freeWhenChildless: boolean
}

function release(cell: Cell): void {
  if (cell.ptr === 0) return
  if (cell.liveChildren > 0) {
    cell.freeWhenChildless = true
    return
  }
  const ptr = cell.ptr
  cell.ptr = 0
  cell.free(ptr)
  const parent = cell.parent
  if (parent) {
    parent.liveChildren--
    if (parent.freeWhenChildless && parent.liveChildren === 0) release(parent)
  }
}

const registry = new FinalizationRegistry<Cell>(release)

export abstract class NativeHandle implements Disposable {
  readonly #kind: string
  readonly #cell: Cell
  readonly #children = new Set<NativeHandle>()
  readonly #parent: NativeHandle | null

  protected constructor(kind: string, ptr: Pointer, free: (ptr: Pointer) => void, parent: NativeHandle | null = null) {
    this.#kind = kind
    this.#parent = parent
    this.#cell = { ptr, free, parent: parent ? parent.#cell : null, liveChildren: 0, freeWhenChildless: false }
    if (parent) {
      parent.guard()
      parent.#cell.liveChildren++
      parent.#children.add(this)
    }
    registry.register(this, this.#cell, this)
  }

  /** The native pointer; throws once disposed ("fail loud and clear"). */
  protected guard(): Pointer {
    if (this.#cell.ptr === 0) throw new Error(`${this.#kind} is disposed`)
    return this.#cell.ptr
  }

  get disposed(): boolean {
    return this.#cell.ptr === 0
  }

  /** Runs before the native free (e.g. to stop callbacks); the pointer is still valid. */
  protected beforeFree(): void {}

  dispose(): void {
    if (this.#cell.ptr === 0) return
    for (const child of this.#children) child.dispose()
    this.beforeFree()
    registry.unregister(this)
    release(this.#cell)
    if (this.#parent) this.#parent.#children.delete(this)
  }

  [Symbol.dispose](): void {
    this.dispose()
  }
}
