// The editor view: CodeMirror 6 on the document's `text` (a Y.Text), with everyone's carets and
// selections from y-codemirror.next.

import * as Y from 'yjs'
import { EditorState, Transaction } from '@codemirror/state'
import { EditorView, drawSelection, highlightActiveLine, keymap, placeholder } from '@codemirror/view'
import { defaultKeymap } from '@codemirror/commands'
import { HighlightStyle, LanguageSupport, syntaxHighlighting } from '@codemirror/language'
import { tags } from '@lezer/highlight'
import { markdownKeymap, markdownLanguage } from '@codemirror/lang-markdown'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'
import type { Awareness } from 'y-protocols/awareness'
import type { Session, StatusSource } from './session'
import type { Presence } from './presence'

export interface MountedView {
  destroy: () => void
  /**
   * Set by a view with a connection of its own (rich text): the header shows its statuses and
   * the people in its awareness, instead of the session's, while the view is open.
   */
  header?: { status: StatusSource, awareness: Awareness }
}

const theme = EditorView.theme({
  '&': { height: '100%', fontSize: '16px', backgroundColor: 'var(--surface)', color: 'var(--text)' },
  '&.cm-focused': { outline: 'none' },
  '.cm-scroller': { fontFamily: 'var(--font-sans)', lineHeight: '1.6', overflow: 'auto' },
  '.cm-content': { padding: '20px 0 40vh', caretColor: 'var(--text)' },
  '.cm-line': { padding: '0 24px' },
  '.cm-activeLine': { backgroundColor: 'var(--active-line)' },
  '.cm-placeholder': { color: 'var(--text-muted)' },
  // Name labels always show (y-codemirror.next shows them on hover only): in a demo, who is
  // where is the point.
  '.cm-ySelectionInfo': {
    opacity: '1',
    fontFamily: 'var(--font-sans)',
    fontWeight: '600',
    padding: '1px 4px',
    borderRadius: '3px 3px 3px 0',
    top: '-1.35em'
  }
})

/** Markdown as a document reads: real headings and emphasis, the markup itself muted. */
const markdownStyle = HighlightStyle.define([
  { tag: tags.heading1, fontSize: '1.6em', fontWeight: '700' },
  { tag: tags.heading2, fontSize: '1.35em', fontWeight: '700' },
  { tag: tags.heading3, fontSize: '1.15em', fontWeight: '700' },
  { tag: [tags.heading4, tags.heading5, tags.heading6], fontWeight: '700' },
  { tag: tags.strong, fontWeight: '700' },
  { tag: tags.emphasis, fontStyle: 'italic' },
  { tag: tags.strikethrough, textDecoration: 'line-through' },
  { tag: [tags.link, tags.url], color: 'var(--accent)', textDecoration: 'underline' },
  { tag: tags.monospace, fontFamily: 'var(--font-mono)', fontSize: '0.92em', backgroundColor: 'var(--surface-sunken)' },
  { tag: tags.quote, color: 'var(--text-muted)', fontStyle: 'italic' },
  { tag: [tags.processingInstruction, tags.contentSeparator, tags.labelName], color: 'var(--text-muted)' }
])

export function mountEditor (root: HTMLElement, session: Session, presence: Presence): MountedView {
  const section = document.createElement('section')
  section.className = 'view view-editor'
  section.setAttribute('aria-labelledby', 'view-title')
  section.innerHTML = `
    <div class="view-head">
      <h1 id="view-title">Document</h1>
      <p class="view-hint">Markdown. Everyone in the room edits this text together.</p>
    </div>
    <div class="editor-frame" data-testid="editor"></div>`
  const container = section.querySelector<HTMLElement>('[data-testid="editor"]')!
  root.replaceChildren(section)
  const ytext = session.doc.getText('text')
  const undoManager = new Y.UndoManager(ytext)
  const view = new EditorView({
    parent: container,
    state: EditorState.create({
      doc: ytext.toString(),
      extensions: [
        // Undo goes through Yjs, so that it undoes only this user's edits; Tab is left to
        // move the focus, so the keyboard can leave the editor.
        keymap.of([...yUndoManagerKeymap, ...markdownKeymap, ...defaultKeymap]),
        drawSelection(),
        highlightActiveLine(),
        EditorView.lineWrapping,
        // Markdown without markdown()'s embedded HTML, CSS and JavaScript support, which would
        // triple the bundle.
        new LanguageSupport(markdownLanguage),
        syntaxHighlighting(markdownStyle),
        placeholder('Start writing: everyone in this room sees it as you type.'),
        EditorView.contentAttributes.of({ 'aria-label': 'Shared document' }),
        theme,
        yCollab(ytext, session.awareness, { undoManager }),
        EditorView.updateListener.of((update) => {
          // Remote changes come in without a user event; only this user's input is typing.
          if (update.docChanged && update.transactions.some((tr) => tr.annotation(Transaction.userEvent) !== undefined)) {
            presence.typed()
          }
        }),
        EditorView.domEventHandlers({
          blur: () => { presence.stopTyping() }
        })
      ]
    })
  })
  return {
    destroy: () => {
      view.destroy()
      undoManager.destroy()
      section.remove()
      presence.stopTyping()
      // Otherwise the others keep seeing this caret while this user is in another view.
      session.awareness.setLocalStateField('cursor', null)
    }
  }
}
