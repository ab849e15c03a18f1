/**
 * Reader for SentencePiece `tokenizer.model` files (a serialized `sentencepiece.ModelProto`).
 * Only the fields the converter needs are decoded; everything else is skipped by wire type.
 * Field numbers follow sentencepiece_model.proto.
 */

export enum PieceType {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
}

export enum SpmModelType {
  Unigram = 1,
  Bpe = 2,
  Word = 3,
  Char = 4,
}

export interface SpmPiece {
  piece: string
  score: number
  type: PieceType
}

export interface SpmModel {
  pieces: SpmPiece[]
  trainer: {
    modelType: SpmModelType
    byteFallback: boolean
    treatWhitespaceAsSuffix: boolean
    unkPiece: string
  }
  normalizer: {
    name: string
    hasCharsMap: boolean
    addDummyPrefix: boolean
    removeExtraWhitespaces: boolean
    escapeWhitespaces: boolean
  }
}

const WIRE_VARINT = 0
const WIRE_I64 = 1
const WIRE_LEN = 2
const WIRE_I32 = 5

class ProtoReader {
  private pos: number
  private readonly view: DataView

  constructor(
    private readonly buf: Uint8Array,
    start = 0,
    private readonly end = buf.length,
  ) {
    this.pos = start
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  }

  done(): boolean {
    return this.pos >= this.end
  }

  // Varints up to 2^53 are exact in a double; larger values never occur in the fields read here.
  varint(): number {
    let result = 0
    let mul = 1
    for (let i = 0; i < 10; i++) {
      const b = this.pos < this.end ? this.buf[this.pos++] : undefined
      if (b === undefined) throw new Error('truncated varint')
      result += (b & 0x7f) * mul
      if ((b & 0x80) === 0) return result
      mul *= 128
    }
    throw new Error('varint longer than 10 bytes')
  }

  tag(): { field: number; wire: number } {
    const t = this.varint()
    return { field: Math.floor(t / 8), wire: t % 8 }
  }

  bytes(): Uint8Array {
    const len = this.varint()
    if (this.pos + len > this.end) throw new Error('length-delimited field runs past its message')
    const out = this.buf.subarray(this.pos, this.pos + len)
    this.pos += len
    return out
  }

  float(): number {
    if (this.pos + 4 > this.end) throw new Error('truncated fixed32')
    const v = this.view.getFloat32(this.pos, true)
    this.pos += 4
    return v
  }

  skip(wire: number): void {
    if (wire === WIRE_VARINT) this.varint()
    else if (wire === WIRE_I64) this.pos += 8
    else if (wire === WIRE_LEN) this.bytes()
    else if (wire === WIRE_I32) this.pos += 4
    else throw new Error(`unsupported protobuf wire type ${wire}`)
    if (this.pos > this.end) throw new Error('field runs past its message')
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

function sub(buf: Uint8Array): ProtoReader {
  return new ProtoReader(buf)
}

function readPiece(buf: Uint8Array): SpmPiece {
  const r = sub(buf)
  const p: SpmPiece = { piece: '', score: 0, type: PieceType.Normal }
  while (!r.done()) {
    const { field, wire } = r.tag()
    if (field === 1 && wire === WIRE_LEN) p.piece = utf8.decode(r.bytes())
    else if (field === 2 && wire === WIRE_I32) p.score = r.float()
    else if (field === 3 && wire === WIRE_VARINT) p.type = r.varint()
    else r.skip(wire)
  }
  return p
}

function readTrainer(buf: Uint8Array): SpmModel['trainer'] {
  const r = sub(buf)
  const t: SpmModel['trainer'] = {
    modelType: SpmModelType.Unigram,
    byteFallback: false,
    treatWhitespaceAsSuffix: false,
    unkPiece: '<unk>',
  }
  while (!r.done()) {
    const { field, wire } = r.tag()
    if (field === 3 && wire === WIRE_VARINT) t.modelType = r.varint()
    else if (field === 24 && wire === WIRE_VARINT) t.treatWhitespaceAsSuffix = r.varint() !== 0
    else if (field === 35 && wire === WIRE_VARINT) t.byteFallback = r.varint() !== 0
    else if (field === 45 && wire === WIRE_LEN) t.unkPiece = utf8.decode(r.bytes())
    else r.skip(wire)
  }
  return t
}

function readNormalizer(buf: Uint8Array): SpmModel['normalizer'] {
  const r = sub(buf)
  // proto2 defaults: add_dummy_prefix, remove_extra_whitespaces and escape_whitespaces are true when absent.
  const n: SpmModel['normalizer'] = {
    name: '',
    hasCharsMap: false,
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
  }
  while (!r.done()) {
    const { field, wire } = r.tag()
    if (field === 1 && wire === WIRE_LEN) n.name = utf8.decode(r.bytes())
    else if (field === 2 && wire === WIRE_LEN) n.hasCharsMap = r.bytes().length > 0
    else if (field === 3 && wire === WIRE_VARINT) n.addDummyPrefix = r.varint() !== 0
    else if (field === 4 && wire === WIRE_VARINT) n.removeExtraWhitespaces = r.varint() !== 0
    else if (field === 5 && wire === WIRE_VARINT) n.escapeWhitespaces = r.varint() !== 0
    else r.skip(wire)
  }
  return n
}

/** Parses a serialized ModelProto; throws a descriptive Error on malformed input. */
export function parseSentencePieceModel(buf: Uint8Array): SpmModel {
  const r = new ProtoReader(buf)
  const pieces: SpmPiece[] = []
  let trainer: SpmModel['trainer'] | null = null
  let normalizer: SpmModel['normalizer'] | null = null
  try {
    while (!r.done()) {
      const { field, wire } = r.tag()
      if (field === 1 && wire === WIRE_LEN) pieces.push(readPiece(r.bytes()))
      else if (field === 2 && wire === WIRE_LEN) trainer = readTrainer(r.bytes())
      else if (field === 3 && wire === WIRE_LEN) normalizer = readNormalizer(r.bytes())
      else r.skip(wire)
    }
  } catch (e) {
    throw new Error(`invalid SentencePiece model: ${(e as Error).message}`)
  }
  if (pieces.length === 0 || trainer === null || normalizer === null) {
    throw new Error('invalid SentencePiece model: missing pieces, trainer_spec or normalizer_spec')
  }
  return { pieces, trainer, normalizer }
}
