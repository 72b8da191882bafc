// Keyboard and accessibility smoke test: every control has an accessible name (as Chromium's
// accessibility tree computes it), and the to-do list works with the keyboard alone.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import {
  Suite, TEST_TIMEOUT_MS, addTodo, goToView, readNotes, readTodos, screenshot, uniqueRoom, waitFor, waitForLive
} from './harness.mjs'

const suite = new Suite()
before(() => suite.setup())
after(() => suite.teardown())

/** Roles of the controls a user operates: each needs a name. */
const CONTROL_ROLES = new Set([
  'button', 'checkbox', 'combobox', 'link', 'listbox', 'menuitem', 'radio', 'searchbox', 'slider',
  'spinbutton', 'switch', 'tab', 'textbox', 'menuitemcheckbox', 'menuitemradio', 'option'
])

/**
 * The controls without an accessible name in the page, from Chromium's full accessibility tree
 * (CDP Accessibility.getFullAXTree: names computed by the browser from labels, aria-label,
 * aria-labelledby, title, text content, placeholder...). Each is described by its tag and
 * data-testid so a failure says which one.
 */
async function unnamedControls (user) {
  const cdp = await user.context.newCDPSession(user.page)
  try {
    await cdp.send('DOM.enable')
    await cdp.send('Accessibility.enable')
    const { nodes } = await cdp.send('Accessibility.getFullAXTree')
    const unnamed = []
    const controls = []
    for (const n of nodes) {
      if (n.ignored) continue
      const role = n.role?.value
      if (!CONTROL_ROLES.has(role)) continue
      const name = (n.name?.value ?? '').trim()
      let desc = `${role}`
      if (n.backendDOMNodeId) {
        const { node } = await cdp.send('DOM.describeNode', { backendNodeId: n.backendDOMNodeId })
        const attrs = {}
        for (let i = 0; i < (node.attributes ?? []).length; i += 2) attrs[node.attributes[i]] = node.attributes[i + 1]
        desc = `<${node.localName}${attrs['data-testid'] ? ` data-testid="${attrs['data-testid']}"` : ''}` +
          `${attrs.class ? ` class="${attrs.class}"` : ''}> (role ${role})`
      }
      controls.push(`${desc}: ${JSON.stringify(name)}`)
      if (!name) unnamed.push(desc)
    }
    return { unnamed, controls }
  } finally {
    await cdp.detach()
  }
}

test('accessibility: every control in the header and the three views has an accessible name', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('a11y')
  const alice = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Alice' })
  await waitForLive(alice.page)
  const problems = []
  const seen = []
  const check = async (where) => {
    const { unnamed, controls } = await unnamedControls(alice)
    seen.push(`${where}: ${controls.length} controls`)
    for (const u of unnamed) problems.push(`${where}: ${u}`)
    return controls
  }
  const editorControls = await check('editor view')
  // The header's controls and the editor are among them.
  assert.ok(editorControls.length >= 8, `controls found in the editor view: ${editorControls.join('; ')}`)

  await goToView(alice.page, 'canvas')
  await alice.page.getByTestId('add-note').click()
  await waitFor(async () => (await readNotes(alice.page)).length === 1, { message: 'a note to check' })
  await check('canvas view (one note)')

  await goToView(alice.page, 'list')
  await addTodo(alice.page, 'check names')
  await check('list view (one to-do)')
  await screenshot(suite.browser, 'a11y-list', [alice])

  assert.deepEqual(problems, [], `controls without an accessible name (${seen.join(', ')})`)
}))

test('keyboard: the to-do list can be used with the keyboard alone', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('keyboard')
  const alice = await suite.user({ room, view: 'list', transport: 'ws', name: 'Alice' })
  await waitForLive(alice.page)
  await alice.page.getByTestId('todo-input').waitFor()
  const page = alice.page
  const focusedTestId = () => page.evaluate(() => document.activeElement?.getAttribute('data-testid') ?? document.activeElement?.tagName)

  /** Presses Tab until `pred(activeElement)` holds; at most `max` presses. */
  const tabTo = async (what, pred, max = 60) => {
    const trail = []
    for (let i = 0; i < max; i++) {
      if (await page.evaluate(pred)) return
      await page.keyboard.press('Tab')
      trail.push(await focusedTestId())
    }
    if (await page.evaluate(pred)) return
    throw new Error(`Tab never reached ${what}; focus went through ${JSON.stringify(trail)}`)
  }

  await tabTo('todo-input', () => document.activeElement?.getAttribute('data-testid') === 'todo-input')
  await page.keyboard.type('keyboard only')
  await page.keyboard.press('Enter')
  const [item] = await waitFor(async () => {
    const todos = await readTodos(page)
    return todos.length === 1 && todos[0].text === 'keyboard only' && todos
  }, { message: async () => `the to-do added with Enter; list ${JSON.stringify(await readTodos(page))}` })
  assert.equal(item.done, false)

  await tabTo(`the checkbox of to-do ${item.id}`, () => {
    const el = document.activeElement
    return el?.getAttribute('data-testid') === 'todo-toggle' && el.closest('[data-testid="todo-item"]')?.getAttribute('data-id') !== null
  })
  await page.keyboard.press('Space')
  await waitFor(async () => (await readTodos(page))[0]?.done === true,
    { message: async () => `the to-do ticked with Space; list ${JSON.stringify(await readTodos(page))}` })
  await page.keyboard.press('Space')
  await waitFor(async () => (await readTodos(page))[0]?.done === false,
    { message: async () => `the to-do unticked with Space; list ${JSON.stringify(await readTodos(page))}` })
  await page.keyboard.press('Space')
  await waitFor(async () => (await readTodos(page))[0]?.done === true, { message: 'ticked again' })
  await screenshot(suite.browser, 'keyboard-list', [alice])
}))
