// The history panel: two users in the editor view of one room. A named version saved through the
// panel, a read-only preview of it that leaves the live document alone, a restore that reaches the
// other user's live editor without a reload, and the undo of that restore (restoring the
// "before restoring version N" version the server kept). Also: the panel's errors, and its
// keyboard use.

import assert from 'node:assert/strict'
import { after, before, test } from 'node:test'
import {
  RECONNECT_TIMEOUT_MS, Suite, TEST_TIMEOUT_MS, editorText, screenshot, testIdText, typeInEditor, typeInRichText,
  uniqueRoom, waitFor, waitForEditorText, waitForLive, waitForRichText, waitForSaved
} from './harness.mjs'

const suite = new Suite()
before(() => suite.setup())
after(() => suite.teardown())

/** The versions listed in the panel, in DOM order (newest first). */
async function listedVersions (page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid="history-list"] [data-testid="history-version"]')]
    .map((b) => ({ id: Number(b.dataset.id), label: b.dataset.label, text: b.textContent.trim(), pressed: b.getAttribute('aria-pressed') })))
}

/** The preview: which version it shows (once loaded) and the text of its Document part. */
async function preview (page) {
  return page.evaluate(() => {
    const section = document.querySelector('[data-testid="history-preview"]')
    const body = document.querySelector('[data-testid="history-preview-body"]')
    if (!section || section.hidden || !body) return null
    return {
      version: body.dataset.version === '' ? null : Number(body.dataset.version),
      text: body.querySelector('[data-testid="history-preview-text"] pre')?.textContent ?? null,
      editable: body.querySelector('[contenteditable="true"], input, textarea') !== null
    }
  })
}

async function panelState (page) {
  return {
    status: await testIdText(page, 'history-status'),
    error: await testIdText(page, 'history-error'),
    versions: await listedVersions(page),
    preview: await preview(page)
  }
}

/** Opens the panel with its header button and waits for the list to have loaded. */
async function openHistory (page) {
  const toggle = page.getByRole('button', { name: 'History', exact: true })
  await toggle.click()
  await waitFor(async () => (await toggle.getAttribute('aria-expanded')) === 'true' &&
    await page.getByTestId('history-panel').isVisible() &&
    (await page.getByTestId('history-list').getAttribute('aria-busy')) === null,
  { message: 'the history panel open, its list loaded' })
}

/** Saves a named version through the panel (label, then Enter); returns its id. */
async function saveVersion (page, label) {
  const before = new Set((await listedVersions(page)).map((v) => v.id))
  await page.getByLabel('Name a version of the document as it is now').fill(label)
  await page.getByLabel('Name a version of the document as it is now').press('Enter')
  const saved = await waitFor(async () => {
    const status = await testIdText(page, 'history-status')
    const fresh = (await listedVersions(page)).filter((v) => !before.has(v.id) && v.label === label)
    return status?.includes(`“${label}”`) && fresh.length === 1 && fresh[0]
  }, { message: async () => `version ${JSON.stringify(label)} saved and listed; panel ${JSON.stringify(await panelState(page))}` })
  assert.match(saved.text, new RegExp(`^${label}`), 'the list shows the label')
  assert.match(saved.text, /\d+(\.\d)? (B|KB|MB) · #\d+$/, 'the list shows the size and id')
  return saved.id
}

/** Selects version `id` in the list and waits for its preview. */
async function selectVersion (page, id) {
  await page.locator(`[data-testid="history-version"][data-id="${id}"]`).click()
  return waitFor(async () => {
    const p = await preview(page)
    return p !== null && p.version === id && p
  }, { message: async () => `the preview of version ${id}; panel ${JSON.stringify(await panelState(page))}` })
}

/** Restores the selected version: "Restore this version", then "Confirm restore". */
async function restoreSelected (page, id, editorBefore) {
  await page.getByRole('button', { name: 'Restore this version' }).click()
  const confirm = page.getByRole('button', { name: 'Confirm restore' })
  await confirm.waitFor({ state: 'visible' })
  // The first click only asks: nothing is restored yet.
  assert.equal(await testIdText(page, 'history-status'), '', 'no restore before the confirmation')
  assert.equal(await editorText(page), editorBefore, 'the live text before the confirmation')
  await confirm.click()
  return waitFor(async () => {
    const status = await testIdText(page, 'history-status')
    return status?.startsWith(`Restored version #${id} for everyone`) && status
  }, { message: async () => `the panel to report the restore of ${id}; panel ${JSON.stringify(await panelState(page))}` })
}

test('history: save a version, preview it, restore it for everyone, and undo the restore', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('history')
  const alice = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Alice' })
  const bob = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Bob' })
  await Promise.all([waitForLive(alice.page), waitForLive(bob.page)])
  // Set on both pages now: still there at the end means that no page was reloaded.
  for (const u of [alice, bob]) await u.page.evaluate(() => { window.historyTestMarker = 'not reloaded' })

  const original = 'Version one.'
  await typeInEditor(alice.page, original)
  await waitForEditorText(bob.page, (t) => t === original, `on Bob's page to be ${JSON.stringify(original)}`)
  // The server keeps in a version what it has stored.
  await waitForSaved(alice.page)

  await openHistory(alice.page)
  const firstDraft = await saveVersion(alice.page, 'First draft')

  // Both users write more after the version.
  await typeInEditor(alice.page, '\nAlice was here.')
  const afterAlice = `${original}\nAlice was here.`
  await waitForEditorText(bob.page, (t) => t === afterAlice, `on Bob's page to be ${JSON.stringify(afterAlice)}`)
  await typeInEditor(bob.page, '\nBob was here.')
  const edited = `${afterAlice}\nBob was here.`
  for (const u of [alice, bob]) {
    await waitForEditorText(u.page, (t) => t === edited, `on ${u.name}'s page to be ${JSON.stringify(edited)}`)
    await waitForSaved(u.page)
  }

  // The preview shows the version, read-only; the live editors keep the edited text.
  const shown = await selectVersion(alice.page, firstDraft)
  assert.equal(shown.text, original, 'the preview shows the version\'s text')
  assert.equal(shown.editable, false, 'the preview is not editable')
  assert.equal((await listedVersions(alice.page)).find((v) => v.id === firstDraft)?.pressed, 'true', 'the selected version is marked')
  assert.equal(await editorText(alice.page), edited, 'Alice\'s live text after the preview')
  assert.equal(await editorText(bob.page), edited, 'Bob\'s live text after the preview')
  await screenshot(suite.browser, 'history-preview', [alice, bob])

  // Restore: both live editors change to the version, without a reload.
  const restoredStatus = await restoreSelected(alice.page, firstDraft, edited)
  const undo = /kept as version #(\d+) “before restoring version (\d+)”/.exec(restoredStatus)
  assert.ok(undo, `the status names the version to restore to undo: ${restoredStatus}`)
  assert.equal(Number(undo[2]), firstDraft)
  const beforeRestore = Number(undo[1])
  for (const u of [bob, alice]) {
    await waitForEditorText(u.page, (t) => t === original, `on ${u.name}'s page to be the restored ${JSON.stringify(original)}`,
      { timeout: RECONNECT_TIMEOUT_MS })
  }
  await screenshot(suite.browser, 'history-restored', [alice, bob])

  // The list was refreshed: the kept state is there, newest first, and the version remains.
  const versions = await waitFor(async () => {
    const vs = await listedVersions(alice.page)
    return vs.some((v) => v.id === beforeRestore) && vs
  }, { message: async () => `version ${beforeRestore} listed; panel ${JSON.stringify(await panelState(alice.page))}` })
  assert.equal(versions[0].id, beforeRestore, `the newest version first: ${JSON.stringify(versions)}`)
  assert.equal(versions[0].label, `before restoring version ${firstDraft}`)
  assert.ok(versions.some((v) => v.id === firstDraft && v.label === 'First draft'), 'the restored version is still listed')
  const ids = versions.map((v) => v.id)
  assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'newest first')

  // Undo: restore the state kept before the restore.
  const kept = await selectVersion(alice.page, beforeRestore)
  assert.equal(kept.text, edited, 'the preview of the kept state shows the edited text')
  assert.equal(await editorText(alice.page), original, 'Alice\'s live text after the second preview')
  await restoreSelected(alice.page, beforeRestore, original)
  for (const u of [bob, alice]) {
    await waitForEditorText(u.page, (t) => t === edited, `on ${u.name}'s page to be the edited text again`,
      { timeout: RECONNECT_TIMEOUT_MS })
  }
  for (const u of [alice, bob]) {
    assert.equal(await u.page.evaluate(() => window.historyTestMarker), 'not reloaded', `${u.name}'s page was not reloaded`)
    await waitForLive(u.page)
    await waitForSaved(u.page)
  }
  assert.equal(await testIdText(alice.page, 'history-error'), '', 'no error in the panel')
  await screenshot(suite.browser, 'history-undone', [alice, bob])
}))

test('history: the panel works with the keyboard and shows errors from the API', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('history-errors')
  const alice = await suite.user({ room, view: 'editor', transport: 'ws', name: 'Alice' })
  await waitForLive(alice.page)
  const page = alice.page
  await typeInEditor(page, 'Some text.')
  await waitForSaved(page)

  // Keyboard: Enter on the header button opens the panel and moves the focus into it; Escape
  // closes it and gives the focus back.
  const toggle = page.getByRole('button', { name: 'History', exact: true })
  await toggle.focus()
  await page.keyboard.press('Enter')
  await waitFor(async () => (await toggle.getAttribute('aria-expanded')) === 'true' &&
    await page.evaluate(() => document.activeElement?.id === 'history-title'), { message: 'the panel open, its heading focused' })
  await page.keyboard.press('Escape')
  await waitFor(async () => (await toggle.getAttribute('aria-expanded')) === 'false' &&
    !(await page.getByTestId('history-panel').isVisible()) &&
    await page.evaluate(() => document.activeElement?.getAttribute('data-testid') === 'history-toggle'),
  { message: 'the panel closed, the focus back on its button' })

  await openHistory(page)
  // No label: said in the panel, nothing sent.
  await page.getByRole('button', { name: 'Save version' }).click()
  await waitFor(async () => (await testIdText(page, 'history-error')) === 'Give the version a name first.',
    { message: async () => `the missing label reported; panel ${JSON.stringify(await panelState(page))}` })
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'history-label', 'the focus on the label')

  const id = await saveVersion(page, 'Doomed')
  assert.equal(await testIdText(page, 'history-error'), '', 'the error cleared by the next action')
  await selectVersion(page, id)
  // Someone else deletes the version meanwhile.
  const url = `${suite.server.origin}/api/docs/${encodeURIComponent(room)}/versions/${id}`
  const deleted = await fetch(url, { method: 'DELETE' })
  assert.equal(deleted.status, 204, 'the version deleted through the API')

  await page.getByRole('button', { name: 'Restore this version' }).click()
  await page.getByRole('button', { name: 'Confirm restore' }).click()
  const error = await waitFor(async () => {
    const e = await testIdText(page, 'history-error')
    return e?.startsWith(`Restoring version #${id} failed (404)`) && e
  }, { message: async () => `the 404 reported in the panel; panel ${JSON.stringify(await panelState(page))}` })
  assert.match(error, /version/i)
  assert.equal(await page.getByTestId('history-error').getAttribute('role'), 'alert')
  // The list was refreshed after the failed restore: the version is gone, the preview too.
  await waitFor(async () => !(await listedVersions(page)).some((v) => v.id === id) && (await preview(page)) === null,
    { message: async () => `version ${id} gone from the panel; panel ${JSON.stringify(await panelState(page))}` })
  assert.equal(await editorText(page), 'Some text.', 'the live text after the failed restore')
  await screenshot(suite.browser, 'history-error', [alice])

  // Chromium logs the failed request itself: exactly that one is expected here.
  const expected = /^console\.error: Failed to load resource: the server responded with a status of 404 \(Not Found\)/
  const logged = alice.errors.filter((e) => expected.test(e))
  assert.equal(logged.length, 1, `one 404 logged by the browser: ${JSON.stringify(alice.errors)}`)
  alice.errors = alice.errors.filter((e) => !expected.test(e))
}))

test('history: a rich text version previews with its formatting, and restores into the rich text view', { timeout: TEST_TIMEOUT_MS }, () => suite.run(async () => {
  const room = uniqueRoom('history-rich')
  const alice = await suite.user({ room, view: 'richtext', transport: 'ws', name: 'Alice' })
  const page = alice.page
  await waitForLive(page)
  await typeInRichText(page, 'Plain, ')
  await page.keyboard.press('Control+B')
  await page.keyboard.type('bold')
  await page.keyboard.press('Control+B')
  const same = (blocks, text, bold) => blocks.length === 1 && blocks[0].text === text && JSON.stringify(blocks[0].bold) === JSON.stringify(bold)
  await waitForRichText(page, (b) => same(b, 'Plain, bold', ['bold']), 'to be "Plain, bold" with "bold" in bold')
  await waitForSaved(page)

  await openHistory(page)
  const id = await saveVersion(page, 'Formatted')
  await typeInRichText(page, ' and more')
  await waitForRichText(page, (b) => same(b, 'Plain, bold and more', ['bold']), 'to be "Plain, bold and more"')
  await waitForSaved(page)

  await selectVersion(page, id)
  const rich = await page.evaluate(() => {
    const part = document.querySelector('[data-testid="history-preview-body"] [data-testid="history-preview-richtext"]')
    return part && {
      paragraphs: [...part.querySelectorAll('p')].map((p) => p.textContent),
      bold: [...part.querySelectorAll('strong')].map((b) => b.textContent),
      first: document.querySelector('[data-testid="history-preview-body"] .history-preview-part')?.dataset.testid
    }
  })
  assert.deepEqual(rich, { paragraphs: ['Plain, bold'], bold: ['bold'], first: 'history-preview-richtext' },
    'the preview shows the rich text with its formatting, first in the rich text view')
  await waitForRichText(page, (b) => same(b, 'Plain, bold and more', ['bold']), 'unchanged by the preview')

  await restoreSelected(page, id, null)
  await waitForRichText(page, (b) => same(b, 'Plain, bold', ['bold']), 'to be the restored "Plain, bold"',
    { timeout: RECONNECT_TIMEOUT_MS })
  await screenshot(suite.browser, 'history-richtext', [alice])
}))
