// Rooms: opening the demo without a room makes one and puts it in the URL, and that URL, opened
// by someone else, is the same room.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import {
  Suite, TEST_TIMEOUT_MS, screenshot, typeInEditor, waitFor, waitForEditorText, waitForLive
} from './harness.mjs'

const suite = new Suite()
before(() => suite.setup())
after(() => suite.teardown())

const roomOf = (url) => new URL(url).searchParams.get('room')

test('room: / gets a generated room in its URL, and the shared URL opens the same room', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const alice = await suite.user({}, { name: 'Alice (no room)' })
  const room = await waitFor(() => roomOf(alice.page.url()), { message: () => `room= in Alice's URL ${alice.page.url()}` })
  assert.match(room, /^\S{4,}$/, 'a generated room name')
  await waitForLive(alice.page)

  // A second visit to / is another room.
  const other = await suite.user({}, { name: 'someone else' })
  const otherRoom = await waitFor(() => roomOf(other.page.url()), { message: () => `room= in the other URL ${other.page.url()}` })
  assert.notEqual(otherRoom, room, 'two visits to / got the same room')
  await other.close()

  if (!(await alice.page.getByTestId('editor').count())) {
    await alice.page.getByTestId('nav-editor').click()
  }
  const text = 'Shared by URL.'
  await typeInEditor(alice.page, text)

  const shareUrl = alice.page.url()
  const bob = await suite.user({}, { name: 'Bob (shared URL)' })
  await bob.page.goto(shareUrl)
  await waitFor(() => roomOf(bob.page.url()) === room, { message: () => `Bob's URL ${bob.page.url()} in room ${room}` })
  await waitForLive(bob.page)
  if (!(await bob.page.getByTestId('editor').count())) {
    await bob.page.getByTestId('nav-editor').click()
  }
  await waitForEditorText(bob.page, (t) => t === text, `on Bob's page to be ${JSON.stringify(text)}`)
  await screenshot(suite.browser, 'room-shared-url', [alice, bob])
}))
