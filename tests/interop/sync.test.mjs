// Interop test: initial sync through the server: late joiners, offline edits merged on reconnect, and a 2 MB update.

import assert from 'node:assert/strict'
import { createHash } from 'node:crypto'
import * as Y from 'yjs'
import { serverTest, waitFor, waitSynced, waitConverged, docJson, externalServerUrl } from './harness.mjs'

/** Fills a doc with some of every shared type, including non-ASCII text. */
function populate (doc, tag) {
  doc.transact(() => {
    doc.getText('text').insert(doc.getText('text').length, `hello from ${tag} — ñandú 漢字 🦀; `)
    doc.getMap('map').set(tag, { n: 1, list: [1, 2, 3], nested: { ok: true } })
    const m = new Y.Map()
    m.set('by', tag)
    doc.getArray('array').push([tag, m])
  })
}

serverTest('a late joiner receives the full document state', async (ctx) => {
  const [a, b] = await ctx.clients('late', 2)
  populate(a.doc, 'a')
  populate(b.doc, 'b')
  // Some history with deletions too, so the delete set has to be transferred.
  a.doc.getText('text').insert(0, 'DELETE-ME ')
  await waitConverged([a.doc, b.doc])
  // Concurrent inserts at the start are ordered by client id: find the text rather than assume.
  const at = b.doc.getText('text').toString().indexOf('DELETE-ME ')
  assert.ok(at >= 0)
  b.doc.getText('text').delete(at, 'DELETE-ME '.length)
  b.doc.getArray('array').delete(b.doc.getArray('array').toArray().indexOf('a'), 1)
  await waitConverged([a.doc, b.doc])
  assert.ok(!a.doc.getArray('array').toArray().includes('a'))

  const c = ctx.client('late')
  await waitSynced(c.provider)
  // The server's SyncStep2 alone must carry everything: compare right after 'synced'.
  assert.equal(docJson(c.doc), docJson(a.doc), 'late joiner content equals the existing clients\' content')
  assert.deepEqual(Y.encodeStateVector(c.doc), Y.encodeStateVector(a.doc), 'late joiner has the same state vector')
  assert.ok(!c.doc.getText('text').toString().includes('DELETE-ME'))
  assert.match(c.doc.getText('text').toString(), /hello from a — ñandú 漢字 🦀; /)
  assert.match(c.doc.getText('text').toString(), /hello from b — ñandú 漢字 🦀; /)

  // ...and it is a full participant afterwards.
  populate(c.doc, 'c')
  await waitConverged([a.doc, b.doc, c.doc])
  assert.equal(a.doc.getMap('map').get('c').nested.ok, true)
})

serverTest('offline edits are merged when the client reconnects', async (ctx) => {
  const [a, b] = await ctx.clients('offline', 2)
  a.doc.getText('text').insert(0, 'base;')
  await waitConverged([a.doc, b.doc])

  a.provider.disconnect()
  await waitFor(() => !a.provider.wsconnected && a.provider.ws === null, { message: 'A to be disconnected' })

  a.doc.getText('text').insert(0, 'offline-a;')
  a.doc.getMap('map').set('a', 'offline')
  b.doc.getText('text').insert(b.doc.getText('text').length, 'online-b;')
  b.doc.getMap('map').set('b', 'online')
  // B's edit has reached the server once a third client sees it; only then reconnect A, so A's
  // reconnection really has to merge in both directions.
  const c = ctx.client('offline')
  await waitFor(() => c.doc.getText('text').toString().includes('online-b;'), {
    message: () => `observer to see B's edit; it has ${JSON.stringify(c.doc.getText('text').toString())}`
  })
  assert.ok(!c.doc.getText('text').toString().includes('offline-a;'), 'A\'s offline edit did not leak while offline')
  assert.ok(!a.doc.getText('text').toString().includes('online-b;'), 'A did not receive B\'s edit while offline')

  a.provider.connect()
  await waitConverged([a.doc, b.doc, c.doc])
  const text = a.doc.getText('text').toString()
  for (const part of ['base;', 'offline-a;', 'online-b;']) assert.ok(text.includes(part), `${JSON.stringify(text)} contains ${part}`)
  assert.deepEqual(a.doc.getMap('map').toJSON(), { a: 'offline', b: 'online' })
})

serverTest('a 2 MB update reaches other clients and late joiners', async (ctx) => {
  const [a, b] = await ctx.clients('large', 2)
  // ~2 MB of text (UTF-8), mostly ASCII with some multi-byte characters mixed in.
  const unit = 'The quick brown fox jumps over the lazy dog 0123456789. Ünïcödé ✓ '
  const big = unit.repeat(Math.ceil(2 * 1024 * 1024 / Buffer.byteLength(unit)))
  assert.ok(Buffer.byteLength(big) >= 2 * 1024 * 1024)
  const digest = (s) => createHash('sha256').update(s).digest('hex')
  const want = digest(big)

  let largest = 0
  a.doc.on('update', (u) => { largest = Math.max(largest, u.length) })
  a.doc.getText('text').insert(0, big)
  assert.ok(largest >= 2 * 1024 * 1024, `the update itself is >= 2 MB (was ${largest} bytes)`)

  await waitFor(() => b.doc.getText('text').length === big.length, {
    timeout: 30_000,
    message: () => `B to receive the 2 MB text; B has ${b.doc.getText('text').length} of ${big.length} chars`
  })
  assert.equal(digest(b.doc.getText('text').toString()), want, 'B\'s copy is identical')

  const c = ctx.client('large')
  await waitSynced(c.provider, { timeout: 30_000 })
  assert.equal(c.doc.getText('text').length, big.length, 'late joiner got the 2 MB text in its SyncStep2')
  assert.equal(digest(c.doc.getText('text').toString()), want, 'late joiner\'s copy is identical')
})

serverTest('--max-message-size: a larger message closes the connection with 1009 and is not relayed', async (ctx) => {
  const [a, b, c] = await ctx.clients('too-big', 3)
  const closeCodes = []
  a.provider.on('connection-close', (event) => { if (event) closeCodes.push(event.code) })
  a.doc.getText('text').insert(0, 'x'.repeat(200_000))
  await waitFor(() => closeCodes.includes(1009), {
    message: () => `A's connection to be closed with 1009 (message too big); close codes so far: ${JSON.stringify(closeCodes)}`
  })
  // A later small edit from C reaches B, so anything the server relayed earlier has arrived too.
  c.doc.getMap('map').set('after', true)
  await waitFor(() => b.doc.getMap('map').get('after') === true, { message: 'B to see C\'s small edit' })
  assert.equal(b.doc.getText('text').length, 0, 'the oversized update was not relayed')
}, { serverArgs: ['--max-message-size', '65536'], skip: externalServerUrl ? 'needs server flags; not available with INTEROP_SERVER_URL' : false })
