// Interop test: several y-websocket clients edit Y.Text, Y.Array, Y.Map and nested Y.Maps concurrently through the server and must converge.

import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { serverTest, waitConverged, makeRng, seedFromEnv, truncate } from './harness.mjs'

const CLIENTS = 6
const ROUNDS = 40

// Text is built from whole tokens only: every insert happens at a token boundary, so a token is
// never split by a concurrent insert and can be found again by string search. Markers (<m...>) are
// permanent; junk tokens (<j...>) are inserted and deleted again, exercising concurrent deletes.
// Tokens carry multi-byte and astral characters on purpose (UTF-16 vs UTF-8 offsets).
const marker = (i, k) => `<m${i}.${k}é>`
const junk = (i, k) => `<j${i}.${k}漢😀>`
const TOKEN_RE = /<[mj]\d+\.(?:\d+|end)(?:é|漢😀)>/g

/** Offsets (UTF-16, as Y.Text uses) where a token may be inserted: 0, the end, and after every '>'. */
function boundaries (s) {
  const out = [0]
  for (let i = 0; i < s.length; i++) if (s[i] === '>') out.push(i + 1)
  return out
}

/** Finds a whole token in the text and deletes it; returns false if it is not there. */
function deleteToken (ytext, token) {
  const at = ytext.toString().indexOf(token)
  if (at < 0) return false
  ytext.delete(at, token.length)
  return true
}

function arrayIndexOf (yarray, value) {
  const arr = yarray.toArray()
  return arr.findIndex((v) => v === value)
}

serverTest('six clients converge after concurrent edits to text, array, map and nested maps', async (ctx) => {
  const seed = seedFromEnv()
  const context = `seed=${seed} (rerun with INTEROP_SEED=${seed})`
  const clients = await ctx.clients('convergence', CLIENTS)
  const docs = clients.map((c) => c.doc)
  const insertedMarkers = docs.map(() => [])

  const edit = async (i) => {
    const rng = makeRng(seed + i * 7919)
    const doc = docs[i]
    const text = doc.getText('text')
    const arr = doc.getArray('array')
    const map = doc.getMap('map')
    const myJunkText = []
    const myJunkItems = []
    for (let k = 0; k < ROUNDS; k++) {
      const op = rng.int(9)
      // Some rounds batch several operations into one transaction (one update message).
      const batch = rng.int(4) === 0
      const run = (f) => batch ? doc.transact(f) : f()
      run(() => {
        switch (op) {
          case 0:
          case 1: { // insert a permanent marker at a random token boundary
            text.insert(rng.pick(boundaries(text.toString())), marker(i, k))
            insertedMarkers[i].push(marker(i, k))
            break
          }
          case 2: { // insert a junk token, to be deleted later
            text.insert(rng.pick(boundaries(text.toString())), junk(i, k))
            myJunkText.push(junk(i, k))
            break
          }
          case 3: { // delete a junk token: our own, or any visible one (concurrent double deletes)
            const visible = text.toString().match(TOKEN_RE)?.filter((t) => t.startsWith('<j')) ?? []
            const victim = rng.int(2) === 0 && visible.length ? rng.pick(visible) : myJunkText.shift()
            if (victim) deleteToken(text, victim)
            break
          }
          case 4: { // array: primitives and junk at random positions
            arr.insert(rng.int(arr.length + 1), [`a${i}.${k}`])
            if (rng.int(2) === 0) {
              arr.insert(rng.int(arr.length + 1), [`junk${i}.${k}`])
              myJunkItems.push(`junk${i}.${k}`)
            }
            break
          }
          case 5: { // array: a nested Y.Map
            const m = new Y.Map()
            m.set('owner', i)
            m.set('k', k)
            arr.insert(rng.int(arr.length + 1), [m])
            break
          }
          case 6: { // edit some client's nested map (concurrent edits to the same nested map)
            const nested = arr.toArray().filter((v) => v instanceof Y.Map)
            if (nested.length) rng.pick(nested).set(`edit${i}`, k)
            else map.set(`fallback${i}.${k}`, true)
            break
          }
          case 7: { // map: own key, contended key, key that gets deleted
            map.set(`c${i}`, k)
            map.set('contended', `${i}.${k}`)
            map.set(`tmp${i}`, k)
            break
          }
          case 8: { // deletes in array and map
            const j = myJunkItems.shift()
            if (j) {
              const idx = arrayIndexOf(arr, j)
              if (idx >= 0) arr.delete(idx, 1)
            }
            map.delete(`tmp${i}`)
            break
          }
        }
      })
      // Let other clients' updates arrive in between: real interleaving, not a wait for a result.
      await new Promise((resolve) => setTimeout(resolve, rng.int(4)))
    }
    // Every client ends by guaranteeing its contributions and cleaning up its own leftovers.
    doc.transact(() => {
      map.set(`c${i}`, 'done')
      map.delete(`tmp${i}`)
      text.insert(text.length, marker(i, 'end'))
      insertedMarkers[i].push(marker(i, 'end'))
      for (const t of myJunkText) deleteToken(text, t)
      for (const j of myJunkItems) {
        const idx = arrayIndexOf(arr, j)
        if (idx >= 0) arr.delete(idx, 1)
      }
    })
    const m = new Y.Map()
    m.set('owner', i)
    m.set('k', 'end')
    arr.push([m])
  }

  await Promise.all(docs.map((_, i) => edit(i)))
  await waitConverged(docs, { timeout: 30_000 })

  // Every client's contribution is present, nothing that was deleted is.
  const doc = docs[0]
  const text = doc.getText('text').toString()
  const tokens = text.match(TOKEN_RE) ?? []
  assert.equal(tokens.join(''), text, `text consists of whole tokens only (${context}): ${truncate(text, 500)}`)
  assert.deepEqual(tokens.filter((t) => t.startsWith('<j')), [], `all junk tokens were deleted (${context})`)
  const markers = new Set(tokens)
  assert.equal(markers.size, tokens.length, `no token duplicated (${context})`)
  for (const [i, list] of insertedMarkers.entries()) {
    for (const m of list) assert.ok(markers.has(m), `text has client ${i}'s marker ${m} (${context})`)
  }

  const map = doc.getMap('map').toJSON()
  for (let i = 0; i < CLIENTS; i++) {
    assert.equal(map[`c${i}`], 'done', `map has client ${i}'s key (${context})`)
    assert.ok(!(`tmp${i}` in map), `map key tmp${i} was deleted (${context})`)
  }
  const arr = doc.getArray('array').toArray()
  assert.ok(!arr.some((v) => typeof v === 'string' && v.startsWith('junk')), `array junk was deleted (${context})`)
  const nested = arr.filter((v) => v instanceof Y.Map).map((m) => m.toJSON())
  for (let i = 0; i < CLIENTS; i++) {
    assert.ok(nested.some((m) => m.owner === i && m.k === 'end'), `array has client ${i}'s final nested map (${context})`)
  }
  // The per-doc JSON also matches field by field (waitConverged compared canonical JSON).
  for (const d of docs.slice(1)) assert.deepEqual(d.toJSON(), doc.toJSON())
})
