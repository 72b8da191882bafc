// Whether one Yjs delete set covers another: how the provider decides, on its first sync, whether a
// document that already had content (loaded from IndexedDB, say) holds deletions the server lacks.
// A state vector cannot tell: deleting creates no structs, so it moves no clock.

import * as Y from 'yjs'

/** Yjs does not export the DeleteSet class itself. */
export type DeleteSet = ReturnType<typeof Y.createDeleteSet>

interface Range {
  clock: number
  len: number
}

/** The ranges of one client, sorted by clock, overlapping and adjacent ones merged. */
function normalized (items: readonly Range[]): Range[] {
  const sorted = [...items].sort((a, b) => a.clock - b.clock)
  const out: Range[] = []
  for (const { clock, len } of sorted) {
    if (len <= 0) continue
    const last = out[out.length - 1]
    if (last !== undefined && clock <= last.clock + last.len) {
      last.len = Math.max(last.len, clock + len - last.clock)
    } else {
      out.push({ clock, len })
    }
  }
  return out
}

/** True when every deleted range of `inner` is deleted in `outer` too. */
export function deleteSetCovers (outer: DeleteSet, inner: DeleteSet): boolean {
  for (const [client, items] of inner.clients) {
    const need = normalized(items)
    if (need.length === 0) continue
    const have = normalized(outer.clients.get(client) ?? [])
    let j = 0
    for (const r of need) {
      while (j < have.length && have[j]!.clock + have[j]!.len <= r.clock) j++
      const h = have[j]
      // Ranges in `have` are merged, so one of them must contain all of `r`.
      if (h === undefined || h.clock > r.clock || h.clock + h.len < r.clock + r.len) return false
    }
  }
  return true
}

/** The delete set of a document, or null when it has none. */
export function deleteSetOf (doc: Y.Doc): DeleteSet | null {
  const ds = Y.createDeleteSetFromStructStore(doc.store)
  for (const items of ds.clients.values()) if (items.length > 0) return ds
  return null
}

/** The delete set an update carries. */
export function deleteSetOfUpdate (update: Uint8Array): DeleteSet {
  return Y.decodeUpdate(update).ds
}

/** True when `local` has structs that the state vector `remote` does not include. */
export function hasStructsBeyond (local: Map<number, number>, remote: Map<number, number>): boolean {
  for (const [client, clock] of local) if (clock > (remote.get(client) ?? 0)) return true
  return false
}
