// Interop test: awareness states are relayed between y-websocket clients, and removed when their connection closes.

import assert from 'node:assert/strict'
import { serverTest, waitFor, waitSynced } from './harness.mjs'

/** Records every awareness 'change' event of a client, for assertions and failure messages. */
function recordChanges (awareness) {
  const events = []
  awareness.on('change', ({ added, updated, removed }, origin) => {
    events.push({ added: [...added], updated: [...updated], removed: [...removed], local: origin === 'local' })
  })
  return events
}

const describe = (awareness) => JSON.stringify([...awareness.getStates().entries()])

serverTest('awareness: state is relayed, updated, and removed when the provider is destroyed', async (ctx) => {
  const a = ctx.client('awareness')
  const b = ctx.client('awareness')
  const bEvents = recordChanges(b.awareness)
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  const aId = a.doc.clientID

  a.awareness.setLocalState({ user: { name: 'a' } })
  await waitFor(() => b.awareness.getStates().get(aId)?.user?.name === 'a', {
    message: () => `B to see A's state; B has ${describe(b.awareness)}`
  })
  assert.ok(bEvents.some((e) => e.added.includes(aId)), `B got an 'added' change for A: ${JSON.stringify(bEvents)}`)

  a.awareness.setLocalStateField('cursor', { anchor: 3, head: 7 })
  await waitFor(() => b.awareness.getStates().get(aId)?.cursor?.head === 7, {
    message: () => `B to see A's cursor; B has ${describe(b.awareness)}`
  })
  assert.deepEqual(b.awareness.getStates().get(aId), { user: { name: 'a' }, cursor: { anchor: 3, head: 7 } })
  assert.ok(bEvents.some((e) => e.updated.includes(aId)), `B got an 'updated' change for A: ${JSON.stringify(bEvents)}`)

  a.provider.destroy()
  await waitFor(() => !b.awareness.getStates().has(aId), {
    message: () => `B to drop A's state after A's provider was destroyed; B has ${describe(b.awareness)}`
  })
  assert.ok(bEvents.some((e) => e.removed.includes(aId)), `B got a 'removed' change for A: ${JSON.stringify(bEvents)}`)
})

serverTest('awareness: the server removes the states of a connection that dropped without saying goodbye', async (ctx) => {
  // provider.destroy() first sends A's state as null, so the previous test passes even if the
  // server never cleans up. Here A's socket is torn down abruptly: only the server can tell B.
  // Note that y-websocket providers re-broadcast every awareness change they *receive*, so B
  // sends A's state (same clock) back to the server: the server must keep A's state tied to A's
  // connection, not to whichever connection last mentioned it.
  const a = ctx.client('awareness-drop')
  const b = ctx.client('awareness-drop')
  const bEvents = recordChanges(b.awareness)
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  const aId = a.doc.clientID

  a.awareness.setLocalState({ user: { name: 'a' } })
  await waitFor(() => b.awareness.getStates().get(aId)?.user?.name === 'a', {
    message: () => `B to see A's state; B has ${describe(b.awareness)}`
  })

  // Stop A from reconnecting, then kill its TCP connection without a close handshake.
  a.provider.shouldConnect = false
  a.provider.ws.terminate()
  await waitFor(() => !b.awareness.getStates().has(aId), {
    message: () => `B to drop A's state after A's connection dropped; B has ${describe(b.awareness)}; ` +
      `B's changes: ${JSON.stringify(bEvents)}`
  })
  assert.ok(bEvents.some((e) => e.removed.includes(aId)), `B got a 'removed' change for A: ${JSON.stringify(bEvents)}`)
})

serverTest('awareness: a client that joins later receives the existing states on connect', async (ctx) => {
  const a = ctx.client('awareness-late')
  const b = ctx.client('awareness-late')
  await Promise.all([waitSynced(a.provider), waitSynced(b.provider)])
  a.awareness.setLocalState({ user: { name: 'a' } })
  b.awareness.setLocalState({ user: { name: 'b' } })
  // Wait until the server has demonstrably relayed both states before C joins.
  await waitFor(() => a.awareness.getStates().has(b.doc.clientID) && b.awareness.getStates().has(a.doc.clientID), {
    message: () => `A and B to see each other; A has ${describe(a.awareness)}, B has ${describe(b.awareness)}`
  })

  const c = ctx.client('awareness-late')
  await waitFor(() => c.awareness.getStates().get(a.doc.clientID)?.user?.name === 'a' &&
    c.awareness.getStates().get(b.doc.clientID)?.user?.name === 'b', {
    message: () => `late joiner C to see A and B; C has ${describe(c.awareness)}`
  })
})
