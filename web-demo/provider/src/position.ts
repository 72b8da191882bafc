// Positions `SEQ.INDEX` of stored updates (the SSE `id:`, `Last-Event-ID`, the polling `since`):
// the seq of the document's log entry and the update's index in it. They are opaque to the provider,
// which only hands them back, but tests and callers compare them, and "17.10" sorts after "17.9".

/** A parsed position. */
export interface Position {
  seq: bigint
  index: bigint
}

/** Parses `SEQ.INDEX` (two unsigned decimal integers); throws on anything else. */
export function parsePosition (text: string): Position {
  const m = /^([0-9]+)\.([0-9]+)$/.exec(text)
  if (m === null) throw new Error(`not a position (SEQ.INDEX): ${JSON.stringify(text)}`)
  return { seq: BigInt(m[1]!), index: BigInt(m[2]!) }
}

/** Negative when `a` is before `b`, 0 when equal, positive when after. */
export function comparePositions (a: string, b: string): number {
  const pa = parsePosition(a)
  const pb = parsePosition(b)
  if (pa.seq !== pb.seq) return pa.seq < pb.seq ? -1 : 1
  if (pa.index !== pb.index) return pa.index < pb.index ? -1 : 1
  return 0
}
