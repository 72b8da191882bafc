// Interop test: documents written by y-websocket clients survive a server restart on the same
// --data-dir, and a client that stays alive across the restart reconnects by itself (to the same
// port), sends what it edited meanwhile and keeps converging with fresh clients.

import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { test } from 'node:test'
import {
  Ctx, TEST_TIMEOUT_MS, docJson, externalServerUrl, startServer, waitConverged, waitFor, waitSynced
} from './harness.mjs'

/**
 * Declares a test with a server on a data directory the test owns, and a `restart(how, whileDown)`
 * that stops the server (`'stop'`: SIGTERM and exit 0; `'kill'`: SIGKILL), runs `whileDown`, then
 * starts a new server on the same directory and port. Every server's stderr is appended to a
 * failure.
 */
function restartTest (name, fn) {
  const skip = externalServerUrl ? 'restarts need a server this suite spawns' : false
  test(name, { timeout: TEST_TIMEOUT_MS, skip }, async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'concord-restart-'))
    const servers = [await startServer(['--data-dir', dataDir])]
    const ctx = new Ctx(servers[0])
    const restart = async (how, whileDown = () => {}) => {
      const port = ctx.server.port
      if (how === 'kill') await ctx.server.kill()
      else await ctx.server.stop()
      await whileDown()
      ctx.server = await startServer(['--data-dir', dataDir, '--port', String(port)])
      servers.push(ctx.server)
    }
    let failure = null
    try {
      await fn(ctx, restart)
    } catch (err) {
      failure = err
    }
    try {
      await ctx.cleanup()
    } catch (err) {
      failure = failure ?? err
    }
    rmSync(dataDir, { recursive: true, force: true })
    if (failure) {
      if (failure instanceof Error) {
        failure.message += servers.map((s, i) => `\n--- stderr of server ${i} (tail) ---\n${s.stderrTail(4000)}`).join('')
      }
      throw failure
    }
  })
}

/** Destroys a client's provider and document (it must not reconnect and resync what it holds). */
function retire (client) {
  client.provider.destroy()
  client.doc.destroy()
}

/** Waits until a provider has noticed that its connection is gone. */
function waitDisconnected (provider) {
  return waitFor(() => !provider.wsconnected && !provider.synced, { message: `provider for ${provider.url} to notice the disconnect` })
}

restartTest('restart: a graceful restart on the same --data-dir keeps every document; a live client reconnects and keeps editing', async (ctx, restart) => {
  const a = ctx.client('restart/doc')
  const other = ctx.client('restart/other')
  await Promise.all([waitSynced(a.provider), waitSynced(other.provider)])
  a.doc.transact(() => {
    a.doc.getText('text').insert(0, 'written before the restart')
    a.doc.getMap('map').set('answer', 42)
    a.doc.getMap('map').set('nested', { list: [1, 2, 3], flag: true })
    a.doc.getArray('array').push(['x', 'y'])
  })
  const body = a.doc.getText('body')
  for (let i = 0; i < 20; i++) body.insert(body.length, `${i} `)
  other.doc.getMap('meta').set('title', 'the other document')

  // The server has applied everything once other clients have it.
  const b = ctx.client('restart/doc')
  const c = ctx.client('restart/other')
  await waitConverged([a.doc, b.doc])
  await waitConverged([other.doc, c.doc])
  const before = {
    text: a.doc.getText('text').toString(),
    body: body.toString(),
    map: a.doc.getMap('map').toJSON(),
    array: a.doc.getArray('array').toJSON()
  }
  const otherBefore = docJson(other.doc)
  for (const client of [b, c, other]) retire(client)

  // A stays alive and edits while the server is down (offline edits, in a root of their own).
  await restart('stop', async () => {
    await waitDisconnected(a.provider)
    a.doc.getMap('meta').set('offline', 'edited while the server was down')
  })

  // A fresh client finds what was written before the restart. (A may already have reconnected
  // and sent its offline edit, which is why `meta` is not compared here.)
  const fresh = ctx.client('restart/doc')
  await waitSynced(fresh.provider)
  assert.equal(fresh.doc.getText('text').toString(), before.text)
  assert.equal(fresh.doc.getText('body').toString(), before.body)
  assert.deepEqual(fresh.doc.getMap('map').toJSON(), before.map)
  assert.deepEqual(fresh.doc.getArray('array').toJSON(), before.array)
  const otherFresh = ctx.client('restart/other')
  await waitSynced(otherFresh.provider)
  assert.equal(docJson(otherFresh.doc), otherBefore)

  // A reconnects by itself, sends its offline edit, keeps editing, and converges with the fresh client.
  await waitSynced(a.provider, { message: 'A to reconnect and resync after the restart' })
  body.insert(body.length, 'after the restart')
  fresh.doc.getArray('array').push(['from the fresh client'])
  await waitConverged([a.doc, fresh.doc])
  assert.equal(fresh.doc.getMap('meta').get('offline'), 'edited while the server was down')
  assert.ok(body.toString().endsWith('19 after the restart'), body.toString())
  assert.deepEqual(fresh.doc.getArray('array').toJSON(), ['x', 'y', 'from the fresh client'])
  const final = docJson(a.doc)

  // What was written after the restart was stored too: a second restart, with nobody left to
  // resync it, still shows it all.
  retire(a)
  retire(fresh)
  await restart('stop')
  const last = ctx.client('restart/doc')
  await waitSynced(last.provider)
  assert.equal(docJson(last.doc), final)
})

restartTest('restart: after SIGKILL the document loads, and the live client restores what the crash lost', async (ctx, restart) => {
  const a = ctx.client('crash/doc')
  await waitSynced(a.provider)
  const array = a.doc.getArray('array')
  const text = a.doc.getText('text')
  // One update per edit; the last ones are still in flight (or unflushed) when the server dies.
  for (let i = 0; i < 60; i++) {
    array.push([i])
    text.insert(text.length, `${i},`)
  }
  const expectedArray = Array.from({ length: 60 }, (_, i) => i)
  const expectedText = expectedArray.map((i) => `${i},`).join('')

  await restart('kill', () => waitDisconnected(a.provider))

  // Without save acknowledgements y-websocket clients have no durability promise, so the store
  // may hold any prefix of A's edits; it must load cleanly, without duplicates.
  const fresh = ctx.client('crash/doc')
  await waitSynced(fresh.provider)
  const recovered = fresh.doc.getArray('array').toJSON()
  assert.deepEqual(recovered, expectedArray.slice(0, recovered.length), 'the stored array is a prefix of what A wrote')
  assert.ok(expectedText.startsWith(fresh.doc.getText('text').toString()), 'the stored text is a prefix of what A wrote')

  // A reconnects and resyncs: everything is back, exactly once, and editing goes on.
  await waitSynced(a.provider, { message: 'A to reconnect after the crash' })
  array.push(['after the crash'])
  await waitConverged([a.doc, fresh.doc])
  assert.deepEqual(fresh.doc.getArray('array').toJSON(), [...expectedArray, 'after the crash'])
  assert.equal(fresh.doc.getText('text').toString(), expectedText)
  const final = docJson(a.doc)

  retire(a)
  retire(fresh)
  await restart('stop')
  const last = ctx.client('crash/doc')
  await waitSynced(last.provider)
  assert.equal(docJson(last.doc), final, 'the resynced edits were stored')
  console.log(`restart after SIGKILL: the store held ${recovered.length} of 60 array items before A resynced`)
})
