// Keyboard and accessibility smoke test: every control has an accessible name (as Chromium's
// accessibility tree computes it), text has readable contrast, and the to-do list works with
// the keyboard alone.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import {
  Suite, TEST_TIMEOUT_MS, addTodo, goToView, readNotes, readRichText, readTodos, richTextCaretNames, screenshot, todoItem,
  typeInEditor, typeInRichText, uniqueRoom, waitFor, waitForLive
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
 * Visible text whose contrast with its background is under WCAG 2 AA (4.5:1, or 3:1 for large
 * text: 24px, or 18.66px bold). The background is the first opaque one among the element and
 * its ancestors (the page is flat colors: no text over images). Disabled controls are exempt,
 * as in WCAG. Each failure names the element, its text, colors and ratio.
 */
async function lowContrastText (page) {
  return page.evaluate(() => {
    const channels = (color) => {
      const m = color.match(/rgba?\(([^)]+)\)/)
      if (!m) return null
      const [r, g, b, a = 1] = m[1].split(/[ ,/]+/).filter(Boolean).map(Number)
      return { r, g, b, a }
    }
    const luminance = ({ r, g, b }) => {
      const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4 }
      return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    }
    const background = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = channels(getComputedStyle(e).backgroundColor)
        if (c && c.a >= 0.99) return c
      }
      return { r: 255, g: 255, b: 255, a: 1 }
    }
    const failures = []
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT)
    const seen = new Set()
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      const text = node.textContent.trim()
      const el = node.parentElement
      // Only text that shows: not a lone zero-width character (editors put one in carets).
      if (!/[\p{L}\p{N}\p{P}\p{S}]/u.test(text) || !el || seen.has(el)) continue
      seen.add(el)
      if (el.closest('[disabled], [aria-disabled="true"], [aria-hidden="true"]')) continue
      const style = getComputedStyle(el)
      const box = el.getBoundingClientRect()
      if (style.visibility === 'hidden' || style.display === 'none' || box.width === 0 || box.height === 0) continue
      const fg = channels(style.color)
      if (!fg) continue
      const bg = background(el)
      // A translucent text color is blended over its background.
      const blend = (f, b) => Math.round(f * fg.a + b * (1 - fg.a))
      const seenColor = { r: blend(fg.r, bg.r), g: blend(fg.g, bg.g), b: blend(fg.b, bg.b) }
      const [hi, lo] = [luminance(seenColor), luminance(bg)].sort((x, y) => y - x)
      const ratio = (hi + 0.05) / (lo + 0.05)
      const size = parseFloat(style.fontSize)
      const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700)
      const needed = large ? 3 : 4.5
      if (ratio < needed) {
        failures.push(`<${el.localName}${el.dataset.testid ? ` data-testid="${el.dataset.testid}"` : ''}${el.className && typeof el.className === 'string' ? ` class="${el.className}"` : ''}> ` +
          `${JSON.stringify(text.slice(0, 40))}: ${style.color} on rgb(${bg.r}, ${bg.g}, ${bg.b}) = ${ratio.toFixed(2)}:1, needs ${needed}:1`)
      }
    }
    return failures
  })
}

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

test('accessibility: every control in the header and the four views has an accessible name', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
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

  await goToView(alice.page, 'richtext')
  await typeInRichText(alice.page, 'check names')
  await waitFor(async () => (await readRichText(alice.page))?.[0]?.text === 'check names', { message: 'rich text to check' })
  const richControls = await check('rich text view (some text)')
  // The formatting buttons and the editor itself are among them.
  for (const name of ['Bold', 'Italic', 'Undo', 'Shared rich text']) {
    assert.ok(richControls.some((c) => c.endsWith(`: ${JSON.stringify(name)}`)), `a control named ${name} in the rich text view: ${richControls.join('; ')}`)
  }

  assert.deepEqual(problems, [], `controls without an accessible name (${seen.join(', ')})`)
}))

test('contrast: text in the header and the four views is readable (WCAG AA)', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('contrast')
  const alice = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Alice' })
  const bob = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Bob' })
  await Promise.all([waitForLive(alice.page), waitForLive(bob.page)])
  await typeInEditor(bob.page, 'Hello')
  const problems = []
  problems.push(...(await lowContrastText(alice.page)).map((p) => `editor view: ${p}`))
  await goToView(alice.page, 'canvas')
  await alice.page.getByTestId('add-note').click()
  await waitFor(async () => (await readNotes(alice.page)).length === 1, { message: 'a note to check' })
  problems.push(...(await lowContrastText(alice.page)).map((p) => `canvas view: ${p}`))
  await goToView(alice.page, 'list')
  await addTodo(alice.page, 'check contrast')
  await addTodo(alice.page, 'and a done one')
  await (await todoItem(alice.page, 'and a done one')).getByTestId('todo-toggle').click()
  problems.push(...(await lowContrastText(alice.page)).map((p) => `list view: ${p}`))
  await screenshot(suite.browser, 'contrast-list', [alice])
  // The rich text view, with formatting, and Bob's caret on Alice's page.
  await goToView(alice.page, 'richtext')
  await goToView(bob.page, 'richtext')
  await typeInRichText(alice.page, 'Plain, ')
  await alice.page.keyboard.press('Control+B')
  await alice.page.keyboard.type('bold')
  await typeInRichText(bob.page, ' and Bob')
  await waitFor(async () => (await richTextCaretNames(alice.page)).includes('Bob'), { message: 'Bob\'s caret on Alice\'s page' })
  problems.push(...(await lowContrastText(alice.page)).map((p) => `rich text view: ${p}`))
  await screenshot(suite.browser, 'contrast-richtext', [alice])
  assert.deepEqual(problems, [], 'text under WCAG AA contrast')
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
