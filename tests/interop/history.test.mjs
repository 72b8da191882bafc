// Interop test: the version history HTTP API (/api/docs/{name}/versions...) with real clients.
// A named version is kept, connected clients edit every kind of root, the version is restored,
// and the clients -- still on the same sockets, never reconnected or reloaded -- converge to
// exactly the version's content; restoring the "before restoring" version brings the edits back.
// Once with y-websocket clients (text with formatting, maps, nested maps and arrays, arrays),
// once with @hocuspocus/provider clients holding a ProseMirror document the way Tiptap's
// Collaboration extension keeps it, and once with a read-only token (refused with 403).
//
// Tiptap itself is not among this suite's packages (it needs a DOM), so the Hocuspocus test
// writes the XmlFragment 'default' exactly as y-prosemirror writes a Tiptap document (one
// Y.XmlElement per node named after its type, node attributes as they are -- a heading's level is
// the number 1 -- and marks as text formatting `{ bold: {} }`) and reads it back into ProseMirror
// JSON the way y-prosemirror's yXmlFragmentToProsemirrorJSON does (see pmJson below).

import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { after } from 'node:test'
import * as Y from 'yjs'
import WebSocket from 'ws'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import {
  canonical, defineRoots, externalServerUrl, mintWith, serverTest, stateVectorHex, waitConverged,
  waitFor, waitSynced
} from './harness.mjs'

const SKIP_EXTERNAL = externalServerUrl ? 'starts a server with its own flags' : false
const httpBase = (ctx) => ctx.server.url.replace(/^ws:/, 'http:')
const docUrl = (ctx, name) => `${httpBase(ctx)}/api/docs/${encodeURIComponent(ctx.docName(name))}`

// ---------------------------------------------------------------------------------------------
// HTTP helpers

async function api (ctx, method, url, { body = undefined, headers = {} } = {}) {
  const init = { method, headers: { ...headers } }
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json'
    init.body = JSON.stringify(body)
  }
  const res = await fetch(url, init)
  const type = res.headers.get('content-type') || ''
  const data = type.includes('json') ? await res.json() : type.includes('octet-stream') ? new Uint8Array(await res.arrayBuffer()) : await res.text()
  return { status: res.status, body: data }
}

/** The server's current state of document `name` as a Y.Doc (with `define` run on it first). */
async function serverDoc (ctx, name, define = defineRoots, headers = {}) {
  const res = await api(ctx, 'GET', `${docUrl(ctx, name)}?format=update`, { headers })
  assert.equal(res.status, 200, `GET ${name}?format=update: ${JSON.stringify(res.body)}`)
  const doc = new Y.Doc()
  define(doc)
  Y.applyUpdate(doc, res.body)
  return doc
}

/** Waits until the server holds everything `doc` has (its state vector covers the client's). */
async function waitServerHas (ctx, name, doc, define = defineRoots) {
  let last = null
  await waitFor(async () => {
    const remote = await serverDoc(ctx, name, define)
    last = stateVectorHex(remote)
    const mine = Y.decodeStateVector(Y.encodeStateVector(doc))
    const theirs = Y.decodeStateVector(Y.encodeStateVector(remote))
    remote.destroy()
    return [...mine].every(([client, clock]) => (theirs.get(client) ?? 0) >= clock)
  }, { message: () => `the server to hold the client's state ${stateVectorHex(doc)}; it has ${last}` })
}

async function saveVersion (ctx, name, label, headers = {}) {
  const res = await api(ctx, 'POST', `${docUrl(ctx, name)}/versions`, { body: { label }, headers })
  assert.equal(res.status, 201, `POST versions: ${JSON.stringify(res.body)}`)
  assert.equal(typeof res.body.id, 'number')
  assert.equal(res.body.label, label)
  assert.equal(typeof res.body.created_at_ms, 'number')
  assert.ok(res.body.bytes > 0, `bytes ${res.body.bytes}`)
  assert.match(res.body.position, /^\d+\.\d+$/)
  return res.body
}

async function restore (ctx, name, id, headers = {}) {
  const res = await api(ctx, 'POST', `${docUrl(ctx, name)}/versions/${id}/restore`, { headers })
  assert.equal(res.status, 200, `POST restore ${id}: ${JSON.stringify(res.body)}`)
  assert.equal(res.body.restored, id)
  assert.equal(res.body.changed, true, 'the document differed from the version, so the restore changed it')
  assert.equal(res.body.saved_before.label, `before restoring version ${id}`)
  assert.equal(typeof res.body.saved_before.id, 'number')
  assert.notEqual(res.body.saved_before.id, id)
  return res.body
}

// ---------------------------------------------------------------------------------------------
// Comparing content

/**
 * A text's delta with adjacent runs of equal formatting merged and absent formatting written as
 * none, so a restore that leaves formatting marks behind (splitting runs) still compares equal.
 */
function normDelta (delta) {
  const out = []
  for (const op of delta) {
    const attrs = op.attributes && Object.keys(op.attributes).length ? op.attributes : null
    const prev = out[out.length - 1]
    if (typeof op.insert === 'string' && prev && typeof prev.insert === 'string' &&
        canonical(prev.attributes ?? null) === canonical(attrs)) {
      prev.insert += op.insert
    } else {
      out.push(attrs ? { insert: op.insert, attributes: attrs } : { insert: op.insert })
    }
  }
  return out
}

/** What the y-websocket test compares: the text's delta, the map and the array. */
function content (doc) {
  return {
    text: normDelta(doc.getText('text').toDelta()),
    map: doc.getMap('map').toJSON(),
    array: doc.getArray('array').toJSON()
  }
}
const contentKey = (doc) => canonical(content(doc))

/**
 * An XmlFragment as ProseMirror JSON, the way y-prosemirror's yXmlFragmentToProsemirrorJSON reads
 * it: elements become nodes (attributes as they are), text runs become text nodes with one mark
 * per formatting attribute. Adjacent text nodes with equal marks are merged (ProseMirror
 * normalises them so), and empty mark attributes are left out.
 */
function pmJson (fragment) {
  const node = (item) => {
    if (item instanceof Y.XmlText) {
      return normDelta(item.toDelta()).map((op) => {
        const text = { type: 'text', text: op.insert }
        if (op.attributes) {
          text.marks = Object.keys(op.attributes).sort().map((type) => {
            const attrs = op.attributes[type]
            return attrs && typeof attrs === 'object' && Object.keys(attrs).length ? { type, attrs } : { type }
          })
        }
        return text
      })
    }
    const json = { type: item.nodeName }
    const attrs = item.getAttributes()
    if (Object.keys(attrs).length) json.attrs = attrs
    const children = item.toArray().flatMap(node)
    if (children.length) json.content = children
    return [json]
  }
  return { type: 'doc', content: fragment.toArray().flatMap(node) }
}

// ---------------------------------------------------------------------------------------------
// Tests

serverTest('y-websocket: restoring a named version turns text with formatting, maps, nested types and arrays back on connected clients, and it can be restored away', async (ctx) => {
  const [a, b] = await ctx.clients('hist', 2)
  // Any reconnect would replace the socket and emit a status event.
  const sockets = [a.provider.ws, b.provider.ws]
  const statusEvents = [0, 0]
  ;[a, b].forEach((c, i) => c.provider.on('status', () => { statusEvents[i]++ }))

  const text = a.doc.getText('text')
  const map = a.doc.getMap('map')
  const array = a.doc.getArray('array')
  a.doc.transact(() => {
    text.insert(0, 'hello ', {})
    text.insert(6, 'world', { bold: true })
  })
  a.doc.transact(() => {
    map.set('title', 'first')
    map.set('count', 1)
    const settings = new Y.Map()
    map.set('settings', settings)
    settings.set('theme', 'dark')
    settings.set('size', 12)
    const tags = new Y.Array()
    settings.set('tags', tags)
    tags.push(['a', 'b', 'c'])
    const list = new Y.Array()
    map.set('list', list)
    list.push([1, 2, { deep: true }])
  })
  a.doc.transact(() => {
    array.push([1, 'two', { three: 3 }])
    const item = new Y.Map()
    array.push([item])
    item.set('k', 'v')
    const inner = new Y.Array()
    array.push([inner])
    inner.push(['x', 'y'])
  })
  await waitConverged([a.doc, b.doc])
  await waitServerHas(ctx, 'hist', a.doc)

  const atVersion = content(a.doc)
  assert.deepEqual(atVersion.text, [{ insert: 'hello ' }, { insert: 'world', attributes: { bold: true } }])
  assert.deepEqual(atVersion.map, {
    title: 'first', count: 1, settings: { theme: 'dark', size: 12, tags: ['a', 'b', 'c'] }, list: [1, 2, { deep: true }]
  })
  assert.deepEqual(atVersion.array, [1, 'two', { three: 3 }, { k: 'v' }, ['x', 'y']])

  const version = await saveVersion(ctx, 'hist', 'first draft')
  const listed = await api(ctx, 'GET', `${docUrl(ctx, 'hist')}/versions`)
  assert.equal(listed.status, 200)
  const entry = listed.body.versions.find((v) => v.id === version.id)
  assert.deepEqual(entry, version, 'the listed version is the one saved')
  // The version as a Yjs update holds the content at version time.
  const asUpdate = await api(ctx, 'GET', `${docUrl(ctx, 'hist')}/versions/${version.id}?format=update`)
  assert.equal(asUpdate.status, 200)
  const versionDoc = defineRoots(new Y.Doc())
  Y.applyUpdate(versionDoc, asUpdate.body)
  assert.equal(contentKey(versionDoc), canonical(atVersion), 'GET ?format=update of the version')
  versionDoc.destroy()
  const versionJson = await api(ctx, 'GET', `${docUrl(ctx, 'hist')}/versions/${version.id}?format=json`)
  assert.equal(versionJson.status, 200)

  // Both clients edit everything.
  const bText = b.doc.getText('text')
  const bMap = b.doc.getMap('map')
  const bArray = b.doc.getArray('array')
  a.doc.transact(() => {
    text.insert(5, ', there') // hello, there world
    text.format(0, 5, { italic: true })
    text.delete(0, 1)
  })
  b.doc.transact(() => {
    const settings = bMap.get('settings')
    settings.set('theme', 'light')
    settings.delete('size')
    settings.set('added', true)
    settings.get('tags').delete(0, 2)
    settings.get('tags').push(['z'])
    bMap.get('list').delete(1, 1)
    bMap.set('title', 'second')
    bMap.delete('count')
    bMap.set('extra', { more: [1, 2] })
  })
  await waitConverged([a.doc, b.doc])
  b.doc.transact(() => {
    bText.format(bText.toString().indexOf('world'), 5, { bold: null, underline: true })
    bText.insert(bText.length, '!')
    bArray.delete(0, 2)
    bArray.get(1).set('k', 'changed') // the Y.Map that was at index 3
    bArray.get(2).insert(0, ['w'])
    bArray.push(['new'])
  })
  await waitConverged([a.doc, b.doc])
  await waitServerHas(ctx, 'hist', a.doc)
  const edited = content(a.doc)
  assert.notEqual(canonical(edited.text), canonical(atVersion.text))
  assert.notEqual(canonical(edited.map), canonical(atVersion.map))
  assert.notEqual(canonical(edited.array), canonical(atVersion.array))

  // Restore: both connected clients get exactly the version's content.
  const restored = await restore(ctx, 'hist', version.id)
  const converge = async (expected, what) => {
    const want = canonical(expected)
    await waitFor(() => contentKey(a.doc) === want && contentKey(b.doc) === want, {
      message: () => `both clients to show ${what}\n  expected ${want}\n  A: ${contentKey(a.doc)}\n  B: ${contentKey(b.doc)}`
    })
    // One view per client: identical state, not only identical content.
    assert.equal(stateVectorHex(a.doc), stateVectorHex(b.doc))
  }
  await converge(atVersion, `version ${version.id}`)
  assert.deepEqual(a.doc.getText('text').toString(), 'hello world')
  // The server's document reads as the version does.
  const afterRestore = await api(ctx, 'GET', `${docUrl(ctx, 'hist')}?format=json`)
  assert.equal(afterRestore.status, 200)
  assert.deepEqual(afterRestore.body, versionJson.body, 'the document as JSON equals the version as JSON')

  // The state before the restore was kept, and restoring it brings the edits back.
  const listed2 = await api(ctx, 'GET', `${docUrl(ctx, 'hist')}/versions`)
  assert.ok(listed2.body.versions.some((v) => v.id === restored.saved_before.id && v.label === restored.saved_before.label),
    `saved_before is listed: ${JSON.stringify(listed2.body.versions)}`)
  await restore(ctx, 'hist', restored.saved_before.id)
  await converge(edited, `the edits (version ${restored.saved_before.id})`)

  // The clients never reconnected, and keep editing together afterwards.
  assert.equal(a.provider.ws, sockets[0], 'client A kept its socket')
  assert.equal(b.provider.ws, sockets[1], 'client B kept its socket')
  assert.deepEqual(statusEvents, [0, 0], 'no status (connect/disconnect) events')
  b.doc.getText('text').insert(0, '>')
  await waitFor(() => a.doc.getText('text').toString().startsWith('>'), { message: () => `A: ${a.doc.getText('text').toString()}` })
})

/** A HocuspocusProvider on its own socket, with the XmlFragment Tiptap uses defined. */
function hocuspocus (ctx, name) {
  const socket = new HocuspocusProviderWebsocket({ url: ctx.server.url, WebSocketPolyfill: WebSocket })
  const doc = new Y.Doc()
  doc.getXmlFragment('default')
  const provider = new HocuspocusProvider({ websocketProvider: socket, name: ctx.docName(name), document: doc })
  provider.attach()
  ctx.providers.push({ destroy: () => { provider.destroy(); socket.destroy(); doc.destroy() } })
  return { doc, provider, socket, fragment: doc.getXmlFragment('default') }
}

const saved = (c) => waitFor(() => c.provider.synced && c.provider.unsyncedChanges === 0,
  { message: () => `${c.provider.configuration.name}: unsyncedChanges ${c.provider.unsyncedChanges}` })

/** A node as y-prosemirror writes it: an element named after its type, its text as one XmlText. */
function pmNode (type, attrs, runs) {
  const el = new Y.XmlElement(type)
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v)
  const text = new Y.XmlText()
  text.applyDelta(runs.map(([insert, marks]) => (marks ? { insert, attributes: marks } : { insert })))
  el.insert(0, [text])
  return el
}

serverTest('Hocuspocus: restoring a version turns a Tiptap document (heading level, paragraphs, bold) back on connected editors', async (ctx) => {
  const a = hocuspocus(ctx, 'tiptap')
  const b = hocuspocus(ctx, 'tiptap')
  await Promise.all([saved(a), saved(b)])
  const sockets = [a.socket.webSocket, b.socket.webSocket]
  assert.ok(sockets[0] && sockets[1])
  const reconnects = [0, 0]
  ;[a, b].forEach((c, i) => c.socket.on('status', () => { reconnects[i]++ }))

  a.doc.transact(() => {
    a.fragment.insert(0, [
      pmNode('heading', { level: 1 }, [['Minutes']]),
      pmNode('paragraph', {}, [['We agreed on '], ['three', { bold: {} }], [' things.']]),
      pmNode('paragraph', {}, [['Second paragraph.']]),
      pmNode('paragraph', {}, [['Third paragraph.']])
    ])
  })
  await saved(a)
  await waitFor(() => canonical(pmJson(b.fragment)) === canonical(pmJson(a.fragment)), { message: 'B to get A\'s document' })
  await waitServerHas(ctx, 'tiptap', a.doc, (d) => d.getXmlFragment('default'))
  const atVersion = pmJson(a.fragment)
  assert.deepEqual(atVersion.content[0], { type: 'heading', attrs: { level: 1 }, content: [{ type: 'text', text: 'Minutes' }] })
  assert.deepEqual(atVersion.content[1].content[1], { type: 'text', text: 'three', marks: [{ type: 'bold' }] })

  const version = await saveVersion(ctx, 'tiptap', 'minutes v1')
  const versionJson = await api(ctx, 'GET', `${docUrl(ctx, 'tiptap')}/versions/${version.id}?format=json`)
  assert.equal(versionJson.status, 200)

  // Edit: heading level, a paragraph's text (and its bold), one paragraph deleted, one added.
  a.doc.transact(() => {
    a.fragment.get(0).setAttribute('level', 2)
    const p = a.fragment.get(1).get(0)
    p.format(0, 2, { italic: {} })
    p.delete(p.length - 8, 8)
    p.insert(p.length, ' items, changed.')
    p.format('We agreed on '.length, 5, { bold: null })
  })
  await waitFor(() => canonical(pmJson(b.fragment)) === canonical(pmJson(a.fragment)), { message: 'B to get A\'s edit' })
  b.doc.transact(() => {
    b.fragment.delete(2, 1) // "Second paragraph."
    b.fragment.insert(b.fragment.length, [pmNode('paragraph', {}, [['Added by B '], ['bold', { bold: {} }]])])
  })
  await Promise.all([saved(a), saved(b)])
  await waitFor(() => canonical(pmJson(b.fragment)) === canonical(pmJson(a.fragment)), { message: 'A to get B\'s edit' })
  await waitServerHas(ctx, 'tiptap', a.doc, (d) => d.getXmlFragment('default'))
  await waitServerHas(ctx, 'tiptap', b.doc, (d) => d.getXmlFragment('default'))
  const edited = pmJson(a.fragment)
  assert.equal(edited.content[0].attrs.level, 2)
  assert.equal(edited.content.length, 4)
  assert.notEqual(canonical(edited), canonical(atVersion))

  const converge = async (expected, what) => {
    const want = canonical(expected)
    await waitFor(() => canonical(pmJson(a.fragment)) === want && canonical(pmJson(b.fragment)) === want, {
      message: () => `both editors to show ${what}\n  expected ${want}\n  A: ${canonical(pmJson(a.fragment))}\n  B: ${canonical(pmJson(b.fragment))}`
    })
  }
  const restored = await restore(ctx, 'tiptap', version.id)
  await converge(atVersion, `version ${version.id}`)
  for (const c of [a, b]) {
    const level = c.fragment.get(0).getAttribute('level')
    assert.equal(level, 1, `heading level ${JSON.stringify(level)} (${typeof level}) must be the number 1`)
  }
  const afterRestore = await api(ctx, 'GET', `${docUrl(ctx, 'tiptap')}?format=json`)
  assert.deepEqual(afterRestore.body, versionJson.body, 'the document as JSON equals the version as JSON')
  // The restore reaches the editors as an edit they save like any other: nothing left unsynced.
  await Promise.all([saved(a), saved(b)])

  await restore(ctx, 'tiptap', restored.saved_before.id)
  await converge(edited, `the edits (version ${restored.saved_before.id})`)
  assert.equal(a.fragment.get(0).getAttribute('level'), 2)

  assert.equal(a.socket.webSocket, sockets[0], 'editor A kept its socket')
  assert.equal(b.socket.webSocket, sockets[1], 'editor B kept its socket')
  assert.deepEqual(reconnects, [0, 0], 'no socket status changes')
})

const tempDirs = []
after(() => { for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true }) })
const secret = (() => {
  if (SKIP_EXTERNAL) return null
  const dir = mkdtempSync(path.join(os.tmpdir(), 'concord-history-auth-'))
  tempDirs.push(dir)
  const file = path.join(dir, 'secret')
  writeFileSync(file, 'history-interop-secret-0123456789')
  return file
})()

serverTest('a read-only token cannot keep or restore a version (403), and the document is untouched', async (ctx) => {
  const write = { authorization: `Bearer ${mintWith(secret, { ro: 'write' })}` }
  const read = { authorization: `Bearer ${mintWith(secret, { ro: 'read' })}` }
  const writer = ctx.client('ro', { params: { token: mintWith(secret, { ro: 'write' }) } })
  await waitSynced(writer.provider)
  writer.doc.getText('text').insert(0, 'kept')
  await waitFor(async () => {
    const res = await api(ctx, 'GET', `${docUrl(ctx, 'ro')}?format=json`, { headers: write })
    return res.status === 200 && res.body.text === 'kept'
  }, { message: 'the edit to be on the server' })
  const version = await saveVersion(ctx, 'ro', 'v1', write)
  writer.doc.getText('text').insert(4, ' and changed')
  await waitFor(async () => (await api(ctx, 'GET', `${docUrl(ctx, 'ro')}?format=json`, { headers: write })).body.text === 'kept and changed',
    { message: 'the second edit to be on the server' })

  // A reader may list and read versions, but not restore one, nor keep one.
  const list = await api(ctx, 'GET', `${docUrl(ctx, 'ro')}/versions`, { headers: read })
  assert.equal(list.status, 200)
  assert.ok(list.body.versions.some((v) => v.id === version.id))
  const refused = await api(ctx, 'POST', `${docUrl(ctx, 'ro')}/versions/${version.id}/restore`, { headers: read })
  assert.equal(refused.status, 403, `restore with a read-only token: ${JSON.stringify(refused.body)}`)
  const refusedSave = await api(ctx, 'POST', `${docUrl(ctx, 'ro')}/versions`, { body: { label: 'nope' }, headers: read })
  assert.equal(refusedSave.status, 403, `save with a read-only token: ${JSON.stringify(refusedSave.body)}`)
  const anonymous = await api(ctx, 'POST', `${docUrl(ctx, 'ro')}/versions/${version.id}/restore`)
  assert.equal(anonymous.status, 401, `restore without a token: ${JSON.stringify(anonymous.body)}`)

  // Nothing changed: the document, the client, and the list of versions (no "before restoring").
  assert.equal((await api(ctx, 'GET', `${docUrl(ctx, 'ro')}?format=json`, { headers: write })).body.text, 'kept and changed')
  const list2 = await api(ctx, 'GET', `${docUrl(ctx, 'ro')}/versions`, { headers: read })
  assert.deepEqual(list2.body, list.body)
  assert.equal(writer.doc.getText('text').toString(), 'kept and changed')

  // The writer's token restores.
  await restore(ctx, 'ro', version.id, write)
  await waitFor(() => writer.doc.getText('text').toString() === 'kept', { message: () => `writer: ${writer.doc.getText('text').toString()}` })
}, { serverArgs: SKIP_EXTERNAL ? [] : ['--auth-secret-file', secret], skip: SKIP_EXTERNAL })
