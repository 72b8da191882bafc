// Interop test: webhooks from the server binary to a Node receiver that verifies them with the
// verification snippet of crates/concord-server/HTTP.md, read from that file (so the snippet
// users copy is the one tested). A real y-websocket client edits a document; the receiver gets a
// signed document.updated event whose state vector is the client's, then document.deleted after
// an HTTP DELETE. A tampered body, another secret and a stale timestamp are refused.

import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { after } from 'node:test'
import * as Y from 'yjs'
import { externalServerUrl, repoRoot, serverTest, waitFor, waitSynced } from './harness.mjs'

/** The `verifyConcord` function exactly as HTTP.md gives it. */
function snippetFromDocs () {
  const doc = readFileSync(path.join(repoRoot, 'crates', 'concord-server', 'HTTP.md'), 'utf8')
  const section = doc.slice(doc.indexOf('## Webhooks'))
  const match = /```js\n([\s\S]*?)```/.exec(section)
  assert.ok(match, 'HTTP.md has a js block in its Webhooks section')
  // eslint-disable-next-line no-new-func
  return new Function('require', `${match[1]}\nreturn verifyConcord`)(createRequire(import.meta.url))
}
const verifyConcord = snippetFromDocs()

const SECRET = 'whsec interop secret'
const dir = mkdtempSync(path.join(os.tmpdir(), 'concord-webhooks-'))
const secretFile = path.join(dir, 'secret')
writeFileSync(secretFile, `${SECRET}\n`)

// The receiver: records every request with its raw body.
const received = []
const receiver = http.createServer((req, res) => {
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    received.push({ headers: req.headers, body: Buffer.concat(chunks) })
    res.writeHead(204).end()
  })
})
await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve))
const hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`
after(() => {
  receiver.close()
  rmSync(dir, { recursive: true, force: true })
})

const fromBase64url = (s) => Buffer.from(s.replace(/-/g, '+').replace(/_/g, '/'), 'base64')

serverTest('webhooks reach a Node receiver, verified by the documented snippet, with the client\'s state vector', async (ctx) => {
  const name = ctx.docName('hooked')
  const { doc, provider } = ctx.client('hooked')
  await waitSynced(provider)
  doc.getText('text').insert(0, 'written by y-websocket')
  const event = await waitFor(() => received.find((r) => JSON.parse(r.body).document === name), {
    message: 'a document.updated event'
  })
  const body = JSON.parse(event.body)
  assert.equal(body.type, 'document.updated')
  assert.equal(event.headers['concord-event-id'], body.id)
  assert.equal(event.headers['content-type'], 'application/json')
  const signature = event.headers['concord-signature']
  assert.ok(verifyConcord(SECRET, signature, event.body), `signature ${signature}`)
  // What a receiver must refuse: another body, another secret, an old request.
  assert.ok(!verifyConcord(SECRET, signature, Buffer.concat([event.body, Buffer.from(' ')])))
  assert.ok(!verifyConcord('another secret', signature, event.body))
  const stale = signature.replace(/t=(\d+)/, (_, t) => `t=${Number(t) - 600}`)
  assert.ok(!verifyConcord(SECRET, stale, event.body))
  // The state vector is the document's, and the HTTP API takes it as `sv`.
  assert.deepEqual(
    Y.decodeStateVector(fromBase64url(body.state_vector)),
    Y.decodeStateVector(Y.encodeStateVector(doc))
  )
  const base = ctx.server.url.replace(/^ws:/, 'http:')
  const missing = await fetch(`${base}/api/docs/${encodeURIComponent(name)}?sv=${body.state_vector}`)
  assert.equal(missing.status, 200)
  const rest = new Uint8Array(await missing.arrayBuffer())
  const probe = new Y.Doc()
  Y.applyUpdate(probe, rest)
  assert.equal(probe.getText('text').toString(), '', 'nothing beyond the event\'s state vector')

  provider.destroy()
  const deleted = await fetch(`${base}/api/docs/${encodeURIComponent(name)}`, { method: 'DELETE' })
  assert.equal(deleted.status, 204)
  const gone = await waitFor(() => received.find((r) => {
    const b = JSON.parse(r.body)
    return b.document === name && b.type === 'document.deleted'
  }), { message: 'a document.deleted event' })
  assert.ok(verifyConcord(SECRET, gone.headers['concord-signature'], gone.body))
}, {
  serverArgs: ['--webhook-url', hookUrl, '--webhook-secret-file', secretFile],
  skip: externalServerUrl ? 'starts a server with its own flags' : false
})
