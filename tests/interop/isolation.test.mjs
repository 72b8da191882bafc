// Interop test: documents are isolated from each other, names may contain slashes, and the query string is not part of the name.

import assert from 'node:assert/strict'
import { serverTest, waitFor, waitSynced, waitConverged, docJson } from './harness.mjs'

serverTest('edits to one document never show up in another', async (ctx) => {
  const names = ['a', 'b', 'team/a/notes', 'team/a', 'team/b/notes']
  // Two clients per document, so we can tell when an edit has made its round trip.
  const pairs = {}
  for (const name of names) pairs[name] = await ctx.clients(name, 2)

  for (const name of names) pairs[name][0].doc.getText('text').insert(0, `content of ${name}|`)
  for (const name of names) {
    const [x, y] = pairs[name]
    await waitConverged([x.doc, y.doc])
    assert.equal(y.doc.getText('text').toString(), `content of ${name}|`, `document ${name} only has its own content`)
  }

  // A late joiner's SyncStep2 is the server's complete state of that one document.
  for (const name of names) {
    const late = ctx.client(name)
    await waitSynced(late.provider)
    assert.equal(late.doc.getText('text').toString(), `content of ${name}|`, `late joiner of ${name} gets exactly its content`)
    assert.equal(docJson(late.doc), docJson(pairs[name][0].doc), `late joiner of ${name} has exactly that document`)
  }
})

serverTest('a document name with slashes syncs like any other', async (ctx) => {
  const [x, y] = await ctx.clients('team/a/notes', 2)
  x.doc.getMap('meta').set('title', 'notes')
  y.doc.getText('body').insert(0, 'slashes ok')
  await waitConverged([x.doc, y.doc])
  assert.equal(x.doc.getText('body').toString(), 'slashes ok')
  assert.equal(y.doc.getMap('meta').get('title'), 'notes')
})

serverTest('the query string is not part of the document name', async (ctx) => {
  const plain = ctx.client('with-query')
  const withParams = ctx.client('with-query', { params: { token: 'secret', v: '2' } })
  await Promise.all([waitSynced(plain.provider), waitSynced(withParams.provider)])
  assert.match(withParams.provider.url, /\?token=secret&v=2$/)
  withParams.doc.getText('text').insert(0, 'via query')
  await waitFor(() => plain.doc.getText('text').toString() === 'via query', {
    message: () => `client without query to see the edit; it has ${docJson(plain.doc)}`
  })
})
