// The HTTP transports (@concord/http-provider over Server-Sent Events and long-polling) against a
// WebSocket user in the same room: text both ways, and presence.

import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import {
  Suite, TEST_TIMEOUT_MS, presence, screenshot, typeInEditor, uniqueRoom, waitFor, waitForEditorText,
  waitForLive, waitForPresence
} from './harness.mjs'

const suite = new Suite()
before(() => suite.setup())
after(() => suite.teardown())

async function exchange (alice, bob, round) {
  for (const u of [alice, bob]) {
    for (const name of ['Alice', 'Bob']) await waitForPresence(u.page, name, 'online')
    // Exactly the two of them: whoever switched transport left the room with the old
    // connection, also on a polling page (which only sees presence as a whole).
    await waitFor(async () => (await presence(u.page)).length === 2,
      { message: async () => `two people on ${u.name}'s page; it lists ${JSON.stringify(await presence(u.page))}` })
  }
  const fromAlice = `[${round}] from Alice (${await transportOf(alice)})`
  await typeInEditor(alice.page, `\n${fromAlice}`)
  await waitForEditorText(bob.page, (t) => t !== null && t.includes(fromAlice), `on Bob's page to include ${JSON.stringify(fromAlice)}`)
  const fromBob = `[${round}] from Bob (${await transportOf(bob)})`
  await typeInEditor(bob.page, `\n${fromBob}`)
  await waitForEditorText(alice.page, (t) => t !== null && t.includes(fromBob), `on Alice's page to include ${JSON.stringify(fromBob)}`)
}

async function transportOf (user) {
  return user.page.getByTestId('transport').inputValue()
}

test('transports: sse and poll users edit together with a ws user', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('transports')
  const alice = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Alice' })
  const bob = await suite.user({ room, view: 'editor', transport: 'sse', name: 'Bob' })
  await Promise.all([waitForLive(alice.page), waitForLive(bob.page)])
  assert.equal(await transportOf(alice), 'ws')
  assert.equal(await transportOf(bob), 'sse')
  await exchange(alice, bob, 'ws-sse')
  await screenshot(suite.browser, 'transports-ws-sse', [alice, bob])

  // Bob switches to long-polling with the transport menu.
  await bob.page.getByTestId('transport').selectOption('poll')
  await waitForLive(bob.page)
  assert.equal(await transportOf(bob), 'poll')
  await exchange(alice, bob, 'ws-poll')

  // And Alice to Server-Sent Events: both on HTTP transports.
  await alice.page.getByTestId('transport').selectOption('sse')
  await waitForLive(alice.page)
  await exchange(alice, bob, 'sse-poll')
  await screenshot(suite.browser, 'transports-sse-poll', [alice, bob])
}))
