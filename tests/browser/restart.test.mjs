// Persistence across a server restart: what a page saved is in the server's store, the page
// reconnects by itself, and a new user with no local copy sees it all.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import {
  RECONNECT_TIMEOUT_MS, Suite, TEST_TIMEOUT_MS, addTodo, editorText, goToView, readNotes, readTodos, screenshot,
  startServer, typeInEditor, uniqueRoom, waitFor, waitForEditorText, waitForLive, waitForSaved, waitForStatus
} from './harness.mjs'

const suite = new Suite()
before(() => suite.setup())
after(() => suite.teardown())

/** Stops the suite's server (SIGTERM, clean exit) and starts it again on the same port and data dir. */
async function restartServer (users) {
  const old = suite.server
  for (const u of users) u.allowNetworkFailures(true)
  await old.stop()
  for (const u of users) {
    await waitForStatus(u.page, ['Offline', 'Connecting'], { timeout: RECONNECT_TIMEOUT_MS })
  }
  suite.server = await startServer({ port: old.port, dataDir: old.dataDir })
  // The new server owns the directory now (the suite removes it at the end).
  suite.server.ownsDataDir = old.ownsDataDir
  old.ownsDataDir = false
}

test('restart: text, to-do and note survive a server restart and reach a user with no local copy', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('restart')
  const alice = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Alice' })
  await waitForLive(alice.page)

  const text = 'Written before the restart.'
  await typeInEditor(alice.page, text)
  await goToView(alice.page, 'list')
  await addTodo(alice.page, 'survive the restart')
  await goToView(alice.page, 'canvas')
  await alice.page.getByTestId('add-note').click()
  await waitFor(async () => (await readNotes(alice.page)).length === 1, { message: 'the note on Alice\'s board' })
  const note = (await alice.page.locator('[data-testid="note"] [data-testid="note-text"]'))
  await note.click()
  await alice.page.keyboard.press('Control+A')
  await alice.page.keyboard.type('persistent note')
  await waitFor(async () => (await readNotes(alice.page))[0].text === 'persistent note', { message: 'note text on Alice\'s board' })
  const [savedNote] = await readNotes(alice.page)
  await waitForSaved(alice.page)

  // Restart 1: the page notices, and reconnects by itself once the server is back.
  await restartServer([alice])
  await waitForLive(alice.page, { timeout: RECONNECT_TIMEOUT_MS })
  await waitForSaved(alice.page, { timeout: RECONNECT_TIMEOUT_MS })
  alice.allowNetworkFailures(false)
  await goToView(alice.page, 'editor')
  assert.equal(await editorText(alice.page), text)
  await screenshot(suite.browser, 'restart-reconnected', [alice])

  // Restart 2, with Alice gone: her page re-sent its state when it reconnected above, so only now
  // is the server's store the one place the document exists. Carol, a new context (no IndexedDB,
  // no BroadcastChannel shared with Alice), then gets everything from the restarted server.
  await alice.close()
  suite.users = suite.users.filter((u) => u !== alice)
  await restartServer([])

  const carol = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Carol' })
  await waitForLive(carol.page)
  await waitForEditorText(carol.page, (t) => t === text, `on Carol's page to be ${JSON.stringify(text)}`)
  await goToView(carol.page, 'list')
  await waitFor(async () => {
    const todos = await readTodos(carol.page)
    return todos.length === 1 && todos[0].text === 'survive the restart' && todos[0].done === false
  }, { message: async () => `the to-do on Carol's page; it is ${JSON.stringify(await readTodos(carol.page))}` })
  await goToView(carol.page, 'canvas')
  await waitFor(async () => {
    const notes = await readNotes(carol.page)
    return notes.length === 1 && notes[0].id === savedNote.id && notes[0].text === 'persistent note' &&
      Math.abs(notes[0].left - savedNote.left) <= 1 && Math.abs(notes[0].top - savedNote.top) <= 1
  }, { message: async () => `the note ${JSON.stringify(savedNote)} on Carol's board; it is ${JSON.stringify(await readNotes(carol.page))}` })
  await screenshot(suite.browser, 'restart-new-user', [carol])
}))
