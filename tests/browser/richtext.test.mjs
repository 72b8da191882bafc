// The rich text view: Tiptap over @hocuspocus/provider, connected to the server's root URL, on
// the same document (room) as the y-websocket views. Two users edit formatted text together and
// see each other's named carets; the header's Saved badge follows the provider's unsynced
// changes (Concord acknowledges an update only once it is stored); the HTTP API reads the same
// XmlFragment; presence crosses between the Hocuspocus and y-websocket views of one room, each
// user listed once; and edits made offline are "Saving" until the connection is back.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import {
  RECONNECT_TIMEOUT_MS, Suite, TEST_TIMEOUT_MS, goToView, openUser, presence, readRichText, richTextCaretNames,
  screenshot, startServer, status, typeInEditor, typeInRichText, uniqueRoom, waitFor, waitForEditorText, waitForLive,
  waitForPresence, waitForRichText, waitForSaved, waitForStatus
} from './harness.mjs'

const suite = new Suite()
before(() => suite.setup())
after(() => suite.teardown())

/** The room's document as the HTTP API reads it, with `richtext` read as an XmlFragment (unless `types` says otherwise). */
async function httpDoc (room, base = suite.server.origin, types = 'xml:richtext,text:text') {
  const res = await fetch(`${base}/api/docs/${encodeURIComponent(room)}?format=json&types=${types}`)
  assert.equal(res.status, 200, `GET /api/docs/${room}: ${res.status} ${await res.clone().text()}`)
  return res.json()
}

/** How many items of the presence list name `name`. */
async function listed (page, name) {
  return (await presence(page)).filter((i) => i.text.includes(name)).length
}

/** Waits until `page` lists exactly `names`, each once (a user in two awarenesses would show twice). */
async function waitForPeople (page, names, who) {
  await waitFor(async () => {
    const items = await presence(page)
    return items.length === names.length && names.every((n) => items.filter((i) => i.text.includes(n)).length === 1)
  }, { message: async () => `${who}'s presence list to be ${JSON.stringify(names)}, each once; it is ${JSON.stringify(await presence(page))}` })
}

const texts = (blocks) => blocks.map((b) => b.text)

test('rich text: formatted text, named carets and the Saved badge between two users over Hocuspocus; the HTTP API reads it', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('richtext')
  const alice = await suite.user({ room, view: 'richtext', transport: 'ws', name: 'Alice' })
  const bob = await suite.user({ room, view: 'richtext', transport: 'ws', name: 'Bob' })
  // The header shows the view's own connection: Live once the Hocuspocus provider has synced.
  await Promise.all([waitForLive(alice.page), waitForLive(bob.page)])
  for (const u of [alice, bob]) await waitForPeople(u.page, ['Alice', 'Bob'], u.name)

  // Alice types, with a bold word (Ctrl+B on and off).
  await typeInRichText(alice.page, 'Hello ')
  await alice.page.keyboard.press('Control+B')
  await alice.page.keyboard.type('bold')
  await alice.page.keyboard.press('Control+B')
  await alice.page.keyboard.type(' world')
  const first = { tag: 'p', text: 'Hello bold world', bold: ['bold'], italic: [] }
  await waitForRichText(bob.page, (b) => JSON.stringify(b) === JSON.stringify([first]), `on Bob's page to be ${JSON.stringify([first])}`)

  // Bob answers in a second paragraph, in italics (the toolbar button, then Ctrl+I to end it).
  await typeInRichText(bob.page, '')
  await bob.page.keyboard.press('Enter')
  await bob.page.getByTestId('format-italic').click()
  await waitFor(async () => (await bob.page.getByTestId('format-italic').getAttribute('aria-pressed')) === 'true',
    { message: 'the Italic button to show as pressed' })
  await bob.page.keyboard.type('Hi Alice')
  await bob.page.keyboard.press('Control+I')
  await bob.page.keyboard.type(', Bob here.')
  const second = { tag: 'p', text: 'Hi Alice, Bob here.', bold: [], italic: ['Hi Alice'] }
  const both = JSON.stringify([first, second])
  for (const u of [alice, bob]) {
    await waitForRichText(u.page, (b) => JSON.stringify(b) === both, `on ${u.name}'s page to be ${both}`)
  }

  // Each sees the other's caret, labelled with the name, and not their own.
  await waitFor(async () => (await richTextCaretNames(alice.page)).includes('Bob'),
    { message: async () => `a caret labelled Bob on Alice's page; labels: ${JSON.stringify(await richTextCaretNames(alice.page))}` })
  await alice.page.locator('.collaboration-carets__label', { hasText: 'Bob' }).waitFor({ state: 'visible' })
  await waitFor(async () => (await richTextCaretNames(bob.page)).includes('Alice'),
    { message: async () => `a caret labelled Alice on Bob's page; labels: ${JSON.stringify(await richTextCaretNames(bob.page))}` })
  await bob.page.locator('.collaboration-carets__label', { hasText: 'Alice' }).waitFor({ state: 'visible' })
  assert.ok(!(await richTextCaretNames(alice.page)).includes('Alice'), 'Alice sees a caret of her own')
  assert.ok(!(await richTextCaretNames(bob.page)).includes('Bob'), 'Bob sees a caret of his own')

  // Saved: the provider has no unsynced changes, i.e. the server says it stored them all.
  for (const u of [alice, bob]) {
    await waitForSaved(u.page)
    const badge = u.page.getByTestId('save-status')
    assert.equal(await badge.getAttribute('data-saving'), 'false')
    assert.match(await badge.getAttribute('title'), /saved on the server/)
  }
  await screenshot(suite.browser, 'richtext-two-users', [alice, bob])

  // The HTTP API reads the same document: the XmlFragment as XML, with the formatting.
  let doc = null
  await waitFor(async () => {
    doc = await httpDoc(room)
    return typeof doc.richtext === 'string' && doc.richtext.includes('Hi Alice')
  }, { message: () => `the rich text in GET /api/docs; it is ${JSON.stringify(doc)}` })
  assert.match(doc.richtext, /^<paragraph>Hello <bold>bold<\/bold> world<\/paragraph><paragraph><italic>Hi Alice<\/italic>, Bob here\.<\/paragraph>$/,
    `the XML of the rich text: ${doc.richtext}`)
  // Without a hint the server infers the kind: the XmlFragment Tiptap wrote reads as the same XML.
  assert.equal((await httpDoc(room, suite.server.origin, '')).richtext, doc.richtext)
}))

test('rich text: presence crosses between the Hocuspocus and y-websocket views of a room, each user listed once', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('richtext-presence')
  const alice = await suite.user({ room, view: 'richtext', transport: 'ws', name: 'Alice' })
  const carol = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Carol' })
  await Promise.all([waitForLive(alice.page), waitForLive(carol.page)])

  // Alice (Hocuspocus) sees Carol (y-websocket) and the other way round, each once.
  await waitForPeople(alice.page, ['Alice', 'Carol'], 'Alice')
  await waitForPeople(carol.page, ['Alice', 'Carol'], 'Carol')
  await waitFor(async () => (await presence(carol.page)).some((i) => i.text.includes('Alice')) &&
    (await carol.page.locator('[data-testid="presence-item"]', { hasText: 'Alice' }).getAttribute('title')) === 'Alice: online, in the rich text',
  { message: async () => `Alice listed on Carol's page as in the rich text; list ${JSON.stringify(await presence(carol.page))}` })

  // Carol's typing shows on Alice's page, across the protocols.
  await typeInEditor(carol.page, 'plain text from Carol')
  await waitFor(async () => /Carol is typing/.test((await status(alice.page)).typing ?? ''),
    { message: async () => `Alice's typing indicator to name Carol; it is ${JSON.stringify((await status(alice.page)).typing)}` })

  // The two kinds of text are two root types of one document: the other's views show both.
  await typeInRichText(alice.page, 'rich text from Alice')
  await goToView(carol.page, 'richtext')
  await waitForLive(carol.page)
  await waitForRichText(carol.page, (b) => texts(b).join('\n') === 'rich text from Alice', 'on Carol\'s page to be Alice\'s')
  await goToView(alice.page, 'editor')
  await waitForLive(alice.page)
  await waitForEditorText(alice.page, (t) => t === 'plain text from Carol', 'on Alice\'s page to be Carol\'s')

  // Both switched views: each still listed once, now in the other place.
  await waitForPeople(alice.page, ['Alice', 'Carol'], 'Alice')
  await waitForPeople(carol.page, ['Alice', 'Carol'], 'Carol')
  await waitFor(async () => (await alice.page.locator('[data-testid="presence-item"]', { hasText: 'Carol' }).getAttribute('title')) === 'Carol: online, in the rich text',
    { message: async () => `Carol listed on Alice's page as in the rich text; list ${JSON.stringify(await presence(alice.page))}` })
  assert.equal(await listed(alice.page, 'Alice'), 1)
  await screenshot(suite.browser, 'richtext-presence', [alice, carol])
}))

test('rich text: edits made offline show Saving until the connection is back, then reach the others', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('richtext-offline')
  const alice = await suite.user({ room, view: 'richtext', transport: 'ws', name: 'Alice' })
  const bob = await suite.user({ room, view: 'richtext', transport: 'ws', name: 'Bob' })
  await Promise.all([waitForLive(alice.page), waitForLive(bob.page)])
  await typeInRichText(alice.page, 'online line')
  await waitForRichText(bob.page, (b) => texts(b).join('\n') === 'online line', 'on Bob\'s page to be Alice\'s first line')
  await waitForSaved(alice.page)

  await alice.setOffline(true)
  await waitForStatus(alice.page, 'Offline')
  await alice.page.keyboard.press('Enter')
  await alice.page.keyboard.type('offline line')
  await waitForRichText(alice.page, (b) => texts(b).join('\n') === 'online line\noffline line', 'on Alice\'s page with her offline line')
  // Disconnected, the provider cannot be told that these changes are stored.
  await waitForStatus(alice.page, 'Saving', { field: 'save' })

  // Bob, online meanwhile, edits and is saved: a change Alice's page had still sent would be there.
  await typeInRichText(bob.page, ' and Bob')
  await waitForSaved(bob.page)
  const bobSees = texts(await readRichText(bob.page))
  assert.ok(!bobSees.some((t) => t.includes('offline line')), `Bob sees Alice's offline line: ${JSON.stringify(bobSees)}`)
  assert.equal((await status(alice.page)).save, 'Saving', 'Alice\'s badge while offline with unsynced changes')
  await screenshot(suite.browser, 'richtext-offline', [alice, bob])

  await alice.setOffline(false)
  await waitForLive(alice.page, { timeout: RECONNECT_TIMEOUT_MS })
  await waitForSaved(alice.page, { timeout: RECONNECT_TIMEOUT_MS })
  alice.allowNetworkFailures(false)
  const expected = 'online line and Bob\noffline line'
  for (const u of [alice, bob]) {
    await waitForRichText(u.page, (b) => texts(b).join('\n') === expected, `on ${u.name}'s page to be ${JSON.stringify(expected)}`)
  }
  // Back online, Alice is listed again on Bob's page (once).
  await waitForPresence(bob.page, 'Alice', 'online', { timeout: RECONNECT_TIMEOUT_MS })
  assert.equal(await listed(bob.page, 'Alice'), 1)
  const doc = await httpDoc(room)
  assert.ok(doc.richtext.includes('offline line'), `the server has Alice's offline line: ${doc.richtext}`)
}))

test('rich text under --path-prefix: the Hocuspocus URL is the prefix, where the y-websocket users of the room are too', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const server = await startServer({ extraArgs: ['--path-prefix', '/collab'] })
  try {
    // The demo is served at /collab/: its server root is ws://HOST/collab (documents below it).
    const prefixed = { origin: `${server.origin}/collab` }
    const room = uniqueRoom('richtext-prefix')
    const alice = await openUser(suite.browser, prefixed, { room, view: 'richtext', transport: 'ws', name: 'Alice' })
    suite.users.push(alice)
    // The page's sockets, from a reload: the session's (y-websocket, the room below the prefix)
    // and the rich text view's (Hocuspocus, the prefix itself).
    const sockets = []
    alice.page.on('websocket', (ws) => sockets.push(ws.url()))
    await alice.page.reload()
    await waitForLive(alice.page)
    assert.deepEqual([...new Set(sockets)].sort(), [`ws://127.0.0.1:${server.port}/collab`, `ws://127.0.0.1:${server.port}/collab/${room}`])
    const bob = await openUser(suite.browser, prefixed, { room, view: 'editor', transport: 'ws', name: 'Bob' })
    suite.users.push(bob)
    await Promise.all([waitForLive(alice.page), waitForLive(bob.page)])
    await waitForPeople(alice.page, ['Alice', 'Bob'], 'Alice')
    await waitForPeople(bob.page, ['Alice', 'Bob'], 'Bob')
    await typeInRichText(alice.page, 'under a prefix')
    await waitForSaved(alice.page)
    const doc = await httpDoc(room, prefixed.origin)
    assert.equal(doc.richtext, '<paragraph>under a prefix</paragraph>')
  } finally {
    await suite.closeUsers()
    await server.dispose()
  }
}))
