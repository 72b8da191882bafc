// The to-do list while one user is offline: both edit, neither sees the other's edits of that
// time, and both converge once she is back online (her edits survive a reload while offline).

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import {
  RECONNECT_TIMEOUT_MS, Suite, TEST_TIMEOUT_MS, addTodo, readTodos, screenshot, serveAppFromDisk, todoItem,
  uniqueRoom, waitFor, waitForApp, waitForLive, waitForSaved, waitForStatus
} from './harness.mjs'

const suite = new Suite()
before(() => suite.setup())
after(() => suite.teardown())

const texts = (todos) => todos.map((t) => t.text)
const shown = (todos) => JSON.stringify(todos.map(({ text, done }) => ({ text, done })))

test('list: edits made offline and edits made meanwhile by another user converge on reconnect', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('offline')
  const alice = await suite.user({ room, view: 'list', transport: 'ws', name: 'Alice' })
  const bob = await suite.user({ room, view: 'list', transport: 'ws', name: 'Bob' })
  await Promise.all([waitForLive(alice.page), waitForLive(bob.page)])

  // A shared starting point.
  await addTodo(alice.page, 'buy milk')
  await addTodo(bob.page, 'call the plumber', { via: 'button' })
  for (const u of [alice, bob]) {
    await waitFor(async () => (await readTodos(u.page)).length === 2,
      { message: async () => `two to-dos on ${u.name}'s page; it is ${shown(await readTodos(u.page))}` })
  }

  // Alice goes offline.
  await alice.setOffline(true)
  await waitForStatus(alice.page, 'Offline')

  // Alice, offline: two new to-dos, and ticks one off.
  await addTodo(alice.page, 'alice offline 1')
  await addTodo(alice.page, 'alice offline 2', { via: 'button' })
  await (await todoItem(alice.page, 'buy milk')).getByTestId('todo-toggle').click()
  await waitFor(async () => (await readTodos(alice.page)).find((t) => t.text === 'buy milk')?.done === true,
    { message: async () => `buy milk done on Alice's page; it is ${shown(await readTodos(alice.page))}` })

  // Bob, online meanwhile: a new to-do, and edits one; the server has them.
  await addTodo(bob.page, 'bob meanwhile')
  const plumber = (await todoItem(bob.page, 'call the plumber')).getByTestId('todo-text')
  await plumber.click()
  await bob.page.keyboard.press('End')
  await bob.page.keyboard.type(' today')
  await waitFor(async () => texts(await readTodos(bob.page)).includes('call the plumber today'),
    { message: async () => `Bob's edit on his page; it is ${shown(await readTodos(bob.page))}` })
  await waitForSaved(bob.page)

  // Neither sees the other's edits of the offline period: Bob's round trip to the server is done,
  // so an update Alice's page had still sent (a connection the app failed to close) would be there.
  const bobSees = await readTodos(bob.page)
  assert.ok(!texts(bobSees).some((t) => t.startsWith('alice offline')), `Bob sees Alice's offline to-dos: ${shown(bobSees)}`)
  assert.equal(bobSees.find((t) => t.text === 'buy milk')?.done, false, `Bob sees Alice's offline tick: ${shown(bobSees)}`)
  const aliceSees = await readTodos(alice.page)
  assert.ok(!texts(aliceSees).includes('bob meanwhile'), `Alice, offline, sees Bob's new to-do: ${shown(aliceSees)}`)
  assert.ok(texts(aliceSees).includes('call the plumber'), `Alice, offline, sees Bob's edit: ${shown(aliceSees)}`)
  assert.equal((await (await alice.page.getByTestId('connection-status').textContent()).trim()), 'Offline')
  await screenshot(suite.browser, 'list-offline', [alice, bob])

  // Alice reloads her page while still offline (its files from disk, see serveAppFromDisk): her
  // offline edits come back from IndexedDB, and the page still knows it is offline.
  await serveAppFromDisk(alice.context, suite.server)
  await alice.page.reload()
  await waitForApp(alice.page)
  await waitForStatus(alice.page, 'Offline')
  let reloaded = null
  await waitFor(async () => {
    reloaded = await readTodos(alice.page)
    return JSON.stringify(reloaded) === JSON.stringify(aliceSees)
  }, { message: () => `Alice's offline list back after the reload: ${shown(aliceSees)}; it is ${shown(reloaded ?? [])}` })
  await alice.context.unrouteAll()

  // Back online: Alice's page reconnects and both lists become the same.
  await alice.setOffline(false)
  await waitForLive(alice.page, { timeout: RECONNECT_TIMEOUT_MS })
  const expected = ['alice offline 1', 'alice offline 2', 'bob meanwhile', 'buy milk', 'call the plumber today']
  let a = null
  let b = null
  await waitFor(async () => {
    a = await readTodos(alice.page)
    b = await readTodos(bob.page)
    return JSON.stringify(a) === JSON.stringify(b) && JSON.stringify(texts(a).sort()) === JSON.stringify(expected)
  }, { timeout: RECONNECT_TIMEOUT_MS, message: () => `both lists equal with ${JSON.stringify(expected)}; Alice ${JSON.stringify(a)}, Bob ${JSON.stringify(b)}` })
  // Same items (ids), same order, same done flags: compared in full above; the flags are these.
  assert.deepEqual(a.filter((t) => t.done).map((t) => t.text), ['buy milk'])
  await waitForSaved(alice.page, { timeout: RECONNECT_TIMEOUT_MS })
  await waitForLive(alice.page)
  alice.allowNetworkFailures(false)
  await screenshot(suite.browser, 'list-reconnected', [alice, bob])
}))
