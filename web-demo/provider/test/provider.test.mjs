// Unit tests of HttpProvider against the in-process fake server (test/fake-server.mjs): requests'
// shape, the send queue (merging, retries, `hasUnsavedChanges`, 'saved'), resuming after a cut, the
// catch-up POST after reconnecting, the SSE-to-polling fallback, awareness, and destroy().

import assert from 'node:assert/strict'
import { afterEach, test } from 'node:test'
import * as Y from 'yjs'
import { Awareness } from 'y-protocols/awareness'
import { HttpProvider, comparePositions } from '../dist/index.js'
import { FakeServer } from './fake-server.mjs'
import { FlakyFetch, defineRoots, docJson, waitConverged, waitFor } from './util.mjs'

const BASE = 'http://concord.test'
const providers = []

afterEach(() => {
  for (const p of providers.splice(0)) {
    p.destroy()
    p.doc.destroy()
  }
  for (const server of FakeServer.all.splice(0)) server.close()
})

/** A provider on a fresh doc, destroyed after the test. Fast backoff so retries do not slow tests. */
function provider (server, name, opts = {}) {
  const doc = defineRoots(opts.doc ?? new Y.Doc())
  const p = new HttpProvider(BASE, name, doc, {
    fetch: server.fetch,
    backoff: { initialDelay: 5, maxDelay: 50 },
    pollTimeout: 1,
    ...opts
  })
  providers.push(p)
  return p
}

test('document names are one percent-encoded path segment; token, params and prefix on every request', async () => {
  const server = new FakeServer({ apiPrefix: '/collab/api', token: 'tok' })
  const name = 'team/notes ü?#'
  const p = provider(server, name, { apiPrefix: 'collab/api/', token: 'tok', tokenInQuery: true, params: { tenant: 'a b' } })
  await waitFor(() => p.synced, { message: 'synced' })
  p.doc.getText('text').insert(0, 'x')
  await waitFor(() => server.requestsTo('/update').length === 1 && !p.hasUnsavedChanges, { message: 'the update to be saved' })
  p.awareness.setLocalStateField('user', 'u')
  await waitFor(() => server.requestsTo('/awareness').length > 0, { message: 'an awareness POST' })
  assert.ok(server.requests.length >= 3)
  for (const r of server.requests) {
    assert.equal(r.url.origin, BASE)
    assert.ok(r.url.pathname.startsWith('/collab/api/docs/team%2Fnotes%20%C3%BC%3F%23/'), r.url.pathname)
    assert.equal(r.headers.get('authorization'), 'Bearer tok')
    assert.equal(r.url.searchParams.get('token'), 'tok')
    assert.equal(r.url.searchParams.get('tenant'), 'a b')
  }
  assert.equal(server.docs.get(name).doc.getText('text').toString(), 'x')
  const events = server.requestsTo('/events')[0]
  assert.equal(events.headers.get('accept'), 'text/event-stream')
  assert.ok(events.url.searchParams.has('sv'))
  assert.equal(events.headers.get('last-event-id'), null, 'the first connection does not resume')
  const post = server.requestsTo('/update')[0]
  assert.equal(post.method, 'POST')
  assert.equal(post.headers.get('content-type'), 'application/octet-stream')
})

test('two SSE providers converge; status, sync and saved events', async () => {
  const server = new FakeServer()
  const a = provider(server, 'doc')
  const seen = []
  a.on('status', ({ status }) => seen.push(status))
  const b = provider(server, 'doc')
  await waitFor(() => a.synced && b.synced, { message: 'both synced' })
  assert.deepEqual(seen, ['connected'], 'connecting was emitted in the constructor, before the listener')
  assert.equal(a.status, 'connected')
  assert.equal(a.transport, 'sse')
  let saved = 0
  a.on('saved', () => saved++)
  a.doc.getText('text').insert(0, 'hello')
  assert.equal(a.hasUnsavedChanges, true)
  b.doc.getMap('map').set('k', 1)
  await waitConverged([a.doc, b.doc, server.room('doc').doc])
  await waitFor(() => saved > 0 && !a.hasUnsavedChanges, { message: 'saved' })
  assert.equal(docJson(a.doc), JSON.stringify({ array: [], map: { k: 1 }, text: 'hello' }))
})

test('updates queued while a POST is in flight go out merged, in one request', async () => {
  const server = new FakeServer()
  let release
  const held = new Promise((resolve) => { release = resolve })
  let first = true
  server.hooks.push(async (r) => {
    if (r.url.pathname.endsWith('/update') && first) {
      first = false
      await held
    }
  })
  const p = provider(server, 'doc')
  await waitFor(() => p.synced)
  const text = p.doc.getText('text')
  text.insert(0, 'a')
  await waitFor(() => server.requestsTo('/update').length === 1, { message: 'the first POST' })
  for (const c of 'bcdef') text.insert(text.length, c)
  assert.equal(p.hasUnsavedChanges, true)
  // Nothing else is sent while the first POST is held.
  assert.equal(server.requestsTo('/update').length, 1)
  let saved = 0
  p.on('saved', () => saved++)
  release()
  await waitFor(() => saved === 1 && !p.hasUnsavedChanges, { message: 'saved' })
  assert.equal(server.requestsTo('/update').length, 2, 'five updates queued behind the first went in one POST')
  assert.equal(server.room('doc').doc.getText('text').toString(), 'abcdef')
})

test('a failing POST is retried with backoff and never dropped; errors are reported', async () => {
  const server = new FakeServer()
  let failures = 4
  server.hooks.push((r) => {
    if (r.url.pathname.endsWith('/update') && failures > 0) {
      failures--
      return new Response(JSON.stringify({ error: 'store unavailable' }), { status: 503 })
    }
  })
  const p = provider(server, 'doc')
  const errors = []
  p.on('connection-error', (err) => errors.push(err))
  await waitFor(() => p.synced)
  p.doc.getText('text').insert(0, 'one')
  p.doc.getText('text').insert(3, ' two')
  await waitFor(() => !p.hasUnsavedChanges, { message: 'the update to be saved in the end' })
  assert.equal(server.room('doc').doc.getText('text').toString(), 'one two')
  const updateErrors = errors.filter((e) => e.operation === 'update')
  assert.equal(updateErrors.length, 4)
  assert.equal(updateErrors[0].status, 503)
  assert.match(updateErrors[0].message, /HTTP 503: store unavailable/)
  assert.equal(server.requestsTo('/update').length, 5)
})

test('after a cut the stream resumes with Last-Event-ID and sv; no update is received twice', async () => {
  const server = new FakeServer()
  const p = provider(server, 'doc')
  const ids = []
  p.on('message', (m) => { if (m.kind === 'update') ids.push(m.id) })
  const other = provider(server, 'doc')
  await waitFor(() => p.synced && other.synced)
  other.doc.getText('text').insert(0, 'ab')
  await waitFor(() => p.doc.getText('text').toString() === 'ab')
  server.cutStreams()
  other.doc.getText('text').insert(2, 'cd')
  other.doc.getArray('array').push([1, 2])
  await waitConverged([p.doc, other.doc, server.room('doc').doc])
  const resumed = server.requestsTo('/events').filter((r) => r.headers.get('last-event-id') !== null)
  assert.ok(resumed.length >= 2, 'both providers resumed')
  for (const r of resumed) assert.ok(r.url.searchParams.get('sv').length > 0)
  for (let i = 1; i < ids.length; i++) assert.ok(comparePositions(ids[i - 1], ids[i]) < 0, `ids strictly increase: ${ids}`)
  assert.equal(p.lastEventId, server.position(server.room('doc')))
})

test('edits made offline reach the server when it is back, even with the queue cleared', async () => {
  const server = new FakeServer()
  const flaky = new FlakyFetch(server.fetch)
  const p = provider(server, 'doc', { fetch: flaky.fetch })
  await waitFor(() => p.synced)
  flaky.offline = true
  await waitFor(() => p.status !== 'connected', { message: 'the provider to notice' })
  p.doc.getText('text').insert(0, 'offline edit')
  p.doc.getMap('map').set('deleted', true)
  p.doc.getMap('map').delete('deleted')
  // What a reload would do to an in-memory queue: the edits are only in the (persisted) document.
  // (Once the failed POST is back in the queue, waiting out its backoff, not in flight.)
  await waitFor(() => p.inFlight === null && p.pending.length > 0, { message: 'the failed POST back in the queue' })
  p.pending.length = 0
  assert.equal(p.hasUnsavedChanges, false)
  flaky.offline = false
  await waitFor(() => server.room('doc').doc.getText('text').toString() === 'offline edit', { message: 'the offline edit on the server' })
  await waitFor(() => !p.hasUnsavedChanges)
  assert.equal(server.room('doc').doc.getMap('map').has('deleted'), false)
  assert.ok(server.requestsTo('/state-vector').length >= 1)
})

test('a document with content before the provider existed is uploaded on connect', async () => {
  const server = new FakeServer()
  const doc = defineRoots(new Y.Doc())
  doc.getText('text').insert(0, 'from IndexedDB')
  const p = provider(server, 'doc', { doc })
  await waitFor(() => server.room('doc').doc.getText('text').toString() === 'from IndexedDB', { message: 'the upload' })
  await waitFor(() => !p.hasUnsavedChanges)
})

test('deletions a document had before the provider are uploaded when the server lacks them, and only then', async () => {
  const server = new FakeServer()
  const writer = provider(server, 'doc')
  writer.doc.getText('text').insert(0, 'abc')
  await waitFor(() => server.room('doc').doc.getText('text').toString() === 'abc' && !writer.hasUnsavedChanges)

  // A copy of the server's document with one deletion only it has: no new struct, so its state
  // vector equals the server's.
  const ahead = defineRoots(new Y.Doc())
  Y.applyUpdate(ahead, Y.encodeStateAsUpdate(server.room('doc').doc))
  ahead.getText('text').delete(1, 1)
  const posts = server.requestsTo('/update').length
  const p = provider(server, 'doc', { doc: ahead })
  await waitFor(() => server.room('doc').doc.getText('text').toString() === 'ac', { message: 'the deletion on the server' })
  await waitFor(() => !p.hasUnsavedChanges)
  assert.equal(server.requestsTo('/update').length, posts + 1)

  // An exact copy (deletions included) uploads nothing.
  const same = defineRoots(new Y.Doc())
  Y.applyUpdate(same, Y.encodeStateAsUpdate(server.room('doc').doc))
  const before = server.requestsTo('/update').length
  const svRequests = server.requestsTo('/state-vector').length
  const q = provider(server, 'doc', { doc: same })
  await waitFor(() => q.synced && server.requestsTo('/state-vector').length > svRequests, { message: 'synced, state vector asked' })
  // The state vector answer is handled in the same task as its arrival; give its handler a turn.
  await waitFor(() => !q.hasUnsavedChanges)
  assert.equal(server.requestsTo('/update').length, before, 'nothing to upload')
  assert.equal(q.doc.getText('text').toString(), 'ac')
})

test('poll transport: first call without since, then continues from the returned since', async () => {
  const server = new FakeServer()
  const p = provider(server, 'doc', { transport: 'poll' })
  const other = provider(server, 'doc', { transport: 'poll' })
  await waitFor(() => p.synced && other.synced)
  assert.equal(p.transport, 'poll')
  other.doc.getText('text').insert(0, 'polled')
  p.doc.getArray('array').push(['x'])
  await waitConverged([p.doc, other.doc, server.room('doc').doc])
  const polls = server.requestsTo('/poll').filter((r) => r.headers.get('authorization') === null)
  const first = polls[0].url.searchParams
  assert.equal(first.has('since'), false)
  assert.equal(first.get('timeout'), '1')
  assert.ok(first.has('sv'))
  assert.ok(polls.slice(2).every((r) => r.url.searchParams.has('since')), 'later polls carry since')
})

test('poll transport: empty answers that come back at once are backed off, not polled in a tight loop', async () => {
  const server = new FakeServer()
  server.hooks.push((r) => {
    // Something in between that answers every long poll at once, empty.
    if (r.url.pathname.endsWith('/poll') && r.url.searchParams.has('since')) {
      return new Response(JSON.stringify({ since: r.url.searchParams.get('since'), sync: null, updates: [], awareness: null }))
    }
  })
  const p = provider(server, 'doc', { transport: 'poll', pollTimeout: 25, backoff: { initialDelay: 40, maxDelay: 40, jitter: 0 } })
  await waitFor(() => p.synced)
  const start = Date.now()
  const count = () => server.requestsTo('/poll').length
  const first = count()
  await waitFor(() => count() >= first + 5, { message: 'five more polls' })
  // At least four 40 ms waits between those five polls (a lower bound: a slow machine only adds).
  assert.ok(Date.now() - start >= 4 * 40, `five polls in ${Date.now() - start} ms`)
  assert.equal(p.status, 'connected')
})

test('fallback: an answer that is not an event stream switches to polling at once', async () => {
  const server = new FakeServer()
  server.hooks.push((r) => {
    if (r.url.pathname.endsWith('/events')) return new Response('<html>proxy says no</html>', { headers: { 'content-type': 'text/html' } })
  })
  const p = provider(server, 'doc', { fallback: true })
  const switched = []
  p.on('transport', (t) => switched.push(t))
  await waitFor(() => p.synced, { message: 'synced by polling' })
  assert.equal(p.transport, 'poll')
  assert.deepEqual(switched, ['poll'])
  assert.equal(server.requestsTo('/events').length, 1)
})

test('fallback: N failed SSE attempts in a row switch to polling; without fallback it keeps retrying SSE', async () => {
  const server = new FakeServer()
  server.hooks.push((r) => {
    if (r.url.pathname.endsWith('/events')) return new Response('bad gateway', { status: 502 })
  })
  const p = provider(server, 'doc', { fallback: 4 })
  await waitFor(() => p.synced && p.transport === 'poll', { message: 'polling' })
  assert.equal(server.requestsTo('/events').length, 4)

  const stubborn = provider(server, 'doc2')
  await waitFor(() => server.requests.filter((r) => r.url.pathname.endsWith('doc2/events')).length >= 6, { message: 'six SSE attempts' })
  assert.equal(stubborn.transport, 'sse')
  assert.equal(stubborn.synced, false)
})

test('awareness both ways; destroy sends the removal and aborts the stream', async () => {
  const server = new FakeServer()
  const awareness = new Awareness(new Y.Doc())
  const doc = awareness.doc
  const calls = []
  const fetch = (url, init) => {
    calls.push({ url: String(url), signal: init.signal })
    return server.fetch(url, init)
  }
  const a = provider(server, 'doc', { doc, awareness, fetch })
  const b = provider(server, 'doc')
  assert.equal(a.awareness, awareness)
  await waitFor(() => a.synced && b.synced)
  a.awareness.setLocalStateField('user', { name: 'ann' })
  b.awareness.setLocalStateField('user', { name: 'bob' })
  await waitFor(() => b.awareness.getStates().get(doc.clientID)?.user?.name === 'ann', { message: 'ann at bob' })
  await waitFor(() => a.awareness.getStates().get(b.doc.clientID)?.user?.name === 'bob', { message: 'bob at ann' })
  const streams = calls.filter((c) => c.url.includes('/events'))
  assert.equal(streams.length, 1)
  assert.equal(streams[0].signal.aborted, false)
  a.destroy()
  assert.equal(a.status, 'disconnected')
  assert.equal(streams[0].signal.aborted, true, 'destroy aborted the stream')
  assert.equal(awareness.getLocalState(), null)
  await waitFor(() => !b.awareness.getStates().has(doc.clientID), { message: 'ann removed at bob' })
  const removal = calls.at(-1)
  assert.match(removal.url, /\/awareness$/)
  awareness.destroy()
})

test('an auth failure is a connection-error with the status, and the provider keeps trying', async () => {
  const server = new FakeServer({ token: 'right' })
  const p = provider(server, 'doc', { token: 'wrong' })
  const errors = []
  p.on('connection-error', (err) => errors.push(err))
  const streamErrors = () => errors.filter((e) => e.operation === 'events')
  await waitFor(() => streamErrors().length >= 2, { message: 'two failed stream attempts' })
  assert.equal(streamErrors()[0].status, 401)
  assert.match(streamErrors()[0].message, /a token is required/)
  assert.equal(p.synced, false)
})

test('a silent stream is reconnected after idleTimeout; a stream the server ends is reconnected too', async () => {
  const server = new FakeServer()
  let silent = true
  server.hooks.push((r) => {
    // An event stream that never sends a byte: what a buffering proxy in between looks like.
    if (silent && r.url.pathname.endsWith('/events')) {
      return new Response(new ReadableStream({ start () {} }), { headers: { 'content-type': 'text/event-stream' } })
    }
  })
  const p = provider(server, 'doc', { idleTimeout: 100 })
  const errors = []
  p.on('connection-error', (err) => errors.push(err))
  await waitFor(() => server.requestsTo('/events').length >= 2, { message: 'a second attempt after the idle timeout' })
  assert.match(errors.find((e) => e.operation === 'events').message, /no event or heartbeat for 100 ms/)
  silent = false
  await waitFor(() => p.synced, { message: 'synced once the stream talks' })
  const attempts = server.requestsTo('/events').length
  server.endStreams()
  await waitFor(() => server.requestsTo('/events').length > attempts && p.synced, { message: 'reconnected after the server ended the stream' })
  assert.ok(errors.some((e) => /the server ended the stream/.test(e.message)))
})

test('disconnect pauses receiving and sending; connect resumes both', async () => {
  const server = new FakeServer()
  const p = provider(server, 'doc')
  await waitFor(() => p.synced)
  p.disconnect()
  assert.equal(p.status, 'disconnected')
  const before = server.requests.length
  p.doc.getText('text').insert(0, 'later')
  assert.equal(p.hasUnsavedChanges, true)
  assert.equal(server.requests.length, before)
  p.connect()
  await waitFor(() => server.room('doc').doc.getText('text').toString() === 'later' && !p.hasUnsavedChanges)
  await waitFor(() => p.synced)
})
