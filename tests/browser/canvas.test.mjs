// Two users on the sticky-note canvas: add, drag with the mouse, edit text, change color, delete,
// and the remote mouse pointer.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import {
  Suite, TEST_TIMEOUT_MS, readNotes, screenshot, uniqueRoom, waitFor, waitForLive
} from './harness.mjs'

const suite = new Suite()
before(() => suite.setup())
after(() => suite.teardown())

const near = (a, b, tol) => Math.abs(a - b) <= tol

async function noteOn (page, id) {
  return (await readNotes(page)).find((n) => n.id === id) ?? null
}

async function remotePointers (page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid="canvas"] [data-testid="remote-pointer"]')]
    .map((el) => el.textContent.trim()))
}

/** Picks another color in the note's `note-color` select; returns the value chosen. */
async function changeColor (note) {
  const control = note.getByTestId('note-color')
  const current = await control.inputValue()
  const values = await control.evaluate((el) => [...el.options].map((o) => o.value))
  const next = values.find((v) => v !== current)
  await control.selectOption(next)
  return next
}

test('canvas: a note added, dragged, edited, recolored and deleted propagates; remote pointer', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('canvas')
  const alice = await suite.user({ room, view: 'canvas', transport: 'ws', name: 'Alice' })
  const bob = await suite.user({ room, view: 'canvas', transport: 'ws', name: 'Bob' })
  await Promise.all([waitForLive(alice.page), waitForLive(bob.page)])
  assert.deepEqual(await readNotes(alice.page), [], 'a new room has no notes')

  // Alice adds a note; Bob gets it.
  await alice.page.getByTestId('add-note').click()
  const [added] = await waitFor(async () => {
    const notes = await readNotes(alice.page)
    return notes.length === 1 && notes
  }, { message: async () => `one note on Alice's board; notes ${JSON.stringify(await readNotes(alice.page))}` })
  assert.ok(added.id, 'the note has a data-id')
  assert.ok(Number.isFinite(added.left) && Number.isFinite(added.top), `note positioned by style left/top: ${JSON.stringify(added)}`)
  await waitFor(async () => {
    const n = await noteOn(bob.page, added.id)
    return n && near(n.left, added.left, 2) && near(n.top, added.top, 2)
  }, { message: async () => `note ${added.id} at ${added.left},${added.top} on Bob's board; notes ${JSON.stringify(await readNotes(bob.page))}` })

  // Alice drags it by its handle with the mouse.
  const aliceNote = alice.page.locator(`[data-testid="note"][data-id="${added.id}"]`)
  const handle = aliceNote.getByTestId('note-handle')
  const box = await handle.boundingBox()
  assert.ok(box, 'the note handle is visible')
  const dx = 160
  const dy = 110
  const x0 = box.x + box.width / 2
  const y0 = box.y + box.height / 2
  await alice.page.mouse.move(x0, y0)
  await alice.page.mouse.down()
  await alice.page.mouse.move(x0 + dx, y0 + dy, { steps: 12 })
  await alice.page.mouse.up()
  const moved = await waitFor(async () => {
    const n = await noteOn(alice.page, added.id)
    return n && near(n.left, added.left + dx, 3) && near(n.top, added.top + dy, 3) && n
  }, { message: async () => `note moved by ${dx},${dy} from ${added.left},${added.top} on Alice's board; it is ${JSON.stringify(await noteOn(alice.page, added.id))}` })
  await waitFor(async () => {
    const n = await noteOn(bob.page, added.id)
    return n && near(n.left, moved.left, 2) && near(n.top, moved.top, 2)
  }, { message: async () => `note at ${moved.left},${moved.top} on Bob's board; it is ${JSON.stringify(await noteOn(bob.page, added.id))}` })

  // Alice's mouse is over the board: Bob sees her pointer, with her name.
  const board = await alice.page.getByTestId('canvas').boundingBox()
  let wiggle = 0
  await waitFor(async () => {
    // Keep moving inside the board while waiting, as a user's mouse would.
    wiggle = (wiggle + 1) % 20
    await alice.page.mouse.move(board.x + board.width * 0.7 + wiggle, board.y + board.height * 0.3 + wiggle)
    return (await remotePointers(bob.page)).some((t) => t.includes('Alice'))
  }, { interval: 100, message: async () => `Alice's pointer on Bob's board; pointers ${JSON.stringify(await remotePointers(bob.page))}` })
  assert.ok(!(await remotePointers(alice.page)).some((t) => t.includes('Alice')), 'Alice sees her own pointer as remote')

  // Bob edits the text; Alice sees it.
  const bobNote = bob.page.locator(`[data-testid="note"][data-id="${added.id}"]`)
  await bobNote.getByTestId('note-text').click()
  await bob.page.keyboard.press('Control+A')
  await bob.page.keyboard.type('Bob was here')
  await waitFor(async () => (await noteOn(alice.page, added.id))?.text === 'Bob was here',
    { message: async () => `note text on Alice's board; it is ${JSON.stringify(await noteOn(alice.page, added.id))}` })

  await screenshot(suite.browser, 'canvas-two-users', [alice, bob])

  // Alice changes the color; Bob's note takes the same color.
  const prior = await noteOn(bob.page, added.id)
  const chosen = await changeColor(aliceNote)
  await waitFor(async () => {
    const a = await noteOn(alice.page, added.id)
    const b = await noteOn(bob.page, added.id)
    return a && b && a.background !== prior.background && b.background === a.background &&
      a.color === chosen && b.color === chosen
  }, { message: async () => `color change (${chosen}) on both boards; before ${JSON.stringify(prior)}, ` +
    `Alice ${JSON.stringify(await noteOn(alice.page, added.id))}, Bob ${JSON.stringify(await noteOn(bob.page, added.id))}` })

  // Bob deletes it; it is gone from Alice's board.
  await bobNote.getByTestId('note-delete').click()
  await waitFor(async () => (await readNotes(alice.page)).length === 0 && (await readNotes(bob.page)).length === 0,
    { message: async () => `no notes left; Alice ${JSON.stringify(await readNotes(alice.page))}, Bob ${JSON.stringify(await readNotes(bob.page))}` })
}))
