// Two users in the editor view of one room: text, remote carets, presence, typing indicator,
// connection and save badges; and the away state of a hidden page.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import {
  RECONNECT_TIMEOUT_MS, Suite, TEST_TIMEOUT_MS, editorText, presence, remoteCaretNames,
  screenshot, setPageVisibility, status, typeInEditor, uniqueRoom, waitFor, waitForEditorText, waitForLive,
  waitForPresence, waitForSaved
} from './harness.mjs'

const suite = new Suite()
before(() => suite.setup())
after(() => suite.teardown())

async function twoEditors (label) {
  const room = uniqueRoom(label)
  const alice = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Alice' })
  const bob = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Bob' })
  await Promise.all([waitForLive(alice.page), waitForLive(bob.page)])
  return { room, alice, bob }
}

test('editor: text, remote carets, presence, typing indicator and badges between two users', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const { alice, bob } = await twoEditors('editor')

  for (const u of [alice, bob]) {
    for (const name of ['Alice', 'Bob']) await waitForPresence(u.page, name, 'online')
  }

  // Alice types one key at a time until Bob's page shows that she is typing: the indicator is
  // seen "while Alice types", however slowly the machine delivers the awareness update.
  const sentence = 'Hello from Alice.'
  let typed = ''
  await alice.page.locator('[data-testid="editor"] .cm-content').click()
  await waitFor(async () => {
    if (typed.length < sentence.length) {
      const ch = sentence[typed.length]
      await alice.page.keyboard.type(ch)
      typed += ch
    }
    const { typing } = await status(bob.page)
    return typing !== null && typing.includes('Alice') && /typing/.test(typing)
  }, { interval: 100, message: async () => `Bob's typing indicator to name Alice; it is ${JSON.stringify((await status(bob.page)).typing)}` })
  const indicator = (await status(bob.page)).typing
  assert.match(indicator, /^Alice is typing(…|\.\.\.)$/, 'typing indicator wording')
  // The rest of the sentence, so both pages end on the same known text.
  await alice.page.keyboard.type(sentence.slice(typed.length))
  await waitForEditorText(bob.page, (t) => t === sentence, `on Bob's page to be ${JSON.stringify(sentence)}`)
  // Alice does not see her own typing indicator.
  assert.ok(!((await status(alice.page)).typing ?? '').includes('Alice'), 'Alice sees herself typing')

  // Bob answers on a new line; Alice sees it.
  await typeInEditor(bob.page, '\nHi Alice, Bob here.')
  const both = 'Hello from Alice.\nHi Alice, Bob here.'
  await waitForEditorText(alice.page, (t) => t === both, `on Alice's page to be ${JSON.stringify(both)}`)
  await waitForEditorText(bob.page, (t) => t === both, `on Bob's page to be ${JSON.stringify(both)}`)

  // Each page shows the other user's caret with their name.
  await waitFor(async () => (await remoteCaretNames(alice.page)).includes('Bob'),
    { message: async () => `a remote caret labelled Bob on Alice's page; labels: ${JSON.stringify(await remoteCaretNames(alice.page))}` })
  await waitFor(async () => (await remoteCaretNames(bob.page)).includes('Alice'),
    { message: async () => `a remote caret labelled Alice on Bob's page; labels: ${JSON.stringify(await remoteCaretNames(bob.page))}` })
  assert.ok(!(await remoteCaretNames(alice.page)).includes('Alice'), 'Alice sees a remote caret of her own')

  // Nobody types any more: the indicators clear by themselves.
  for (const u of [alice, bob]) {
    await waitFor(async () => (await status(u.page)).typing === '', {
      timeout: RECONNECT_TIMEOUT_MS,
      message: async () => `${u.name}'s typing indicator to clear; it is ${JSON.stringify((await status(u.page)).typing)}`
    })
  }

  for (const u of [alice, bob]) {
    await waitForLive(u.page)
    await waitForSaved(u.page)
  }
  await screenshot(suite.browser, 'editor-two-users', [alice, bob])
  assert.equal(await editorText(alice.page), both)
}))

test('presence: a hidden page is listed as away, and online again when it is shown', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const { alice, bob } = await twoEditors('away')
  await waitForPresence(alice.page, 'Bob', 'online')
  await waitForPresence(bob.page, 'Alice', 'online')

  await setPageVisibility(bob.page, 'hidden')
  await waitForPresence(alice.page, 'Bob', 'away', { timeout: RECONNECT_TIMEOUT_MS })
  // Alice herself stays online, on both pages.
  assert.ok((await presence(alice.page)).some((i) => i.text.includes('Alice') && i.state === 'online'),
    `Alice online on her page: ${JSON.stringify(await presence(alice.page))}`)
  await screenshot(suite.browser, 'presence-away', [alice, bob])

  await setPageVisibility(bob.page, 'visible')
  await waitForPresence(alice.page, 'Bob', 'online', { timeout: RECONNECT_TIMEOUT_MS })
  await waitForPresence(bob.page, 'Alice', 'online')
}))
