// Unit tests of the text/event-stream parser: every way the network may cut a stream into chunks,
// line endings, multi-line data, comments, ids without data, and the fields the spec defines.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import { SseParser } from '../dist/index.js'

/** Feeds `chunks` to a fresh parser and returns every event, plus the parser. */
function parse (chunks, { end = true } = {}) {
  const parser = new SseParser()
  const events = []
  for (const chunk of chunks) events.push(...parser.push(chunk))
  if (end) events.push(...parser.end())
  return { events, parser }
}

/** The shape the tests compare: what a consumer uses. */
const brief = (events) => events.map((e) => ({ event: e.event, data: e.data, id: e.lastEventId, hasId: e.hasId }))

// A stream with everything at once: comments, ids, an id-only block, multi-line data, the three
// line endings, a field without a colon, an unknown field and a retry.
const STREAM =
  ': hello\n' +
  'event: sync\nid: 3.0\ndata: AAA\n\n' +
  ': heartbeat\r\n' +
  'event: update\r\nid: 4.0\r\ndata: first\r\ndata: second\r\n\r\n' +
  'event: awareness\rdata: aw\r\r' +
  'id: 5.0\n\n' +
  'data\nfoo: bar\nretry: 1500\n\n' +
  'event: update\nid: 6.1\ndata:no-space\ndata:  two-spaces\n\n'

const EXPECTED = [
  { event: 'sync', data: 'AAA', id: '3.0', hasId: true },
  { event: 'update', data: 'first\nsecond', id: '4.0', hasId: true },
  // No id of its own: it carries the last one, as EventSource's lastEventId does.
  { event: 'awareness', data: 'aw', id: '4.0', hasId: false },
  // `data` without a colon is a data line with an empty value; the id-only block before it moved
  // the last event id to 5.0 without dispatching anything.
  { event: 'message', data: '', id: '5.0', hasId: false },
  { event: 'update', data: 'no-space\n two-spaces', id: '6.1', hasId: true }
]

test('a whole stream in one chunk', () => {
  const { events, parser } = parse([STREAM])
  assert.deepEqual(brief(events), EXPECTED)
  assert.equal(parser.comments, 2)
  assert.equal(parser.retry, 1500)
  assert.equal(parser.lastEventId, '6.1')
})

test('split into two chunks at every position, including between CR and LF', () => {
  for (let i = 0; i <= STREAM.length; i++) {
    const { events } = parse([STREAM.slice(0, i), STREAM.slice(i)])
    assert.deepEqual(brief(events), EXPECTED, `split at ${i}: ${JSON.stringify(STREAM.slice(Math.max(0, i - 5), i))}|${JSON.stringify(STREAM.slice(i, i + 5))}`)
  }
})

test('one character per chunk, and empty chunks in between', () => {
  const chars = [...STREAM].flatMap((c) => [c, ''])
  assert.deepEqual(brief(parse(chars).events), EXPECTED)
})

test('random chunkings', () => {
  let seed = 12345
  const rand = (n) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n }
  for (let round = 0; round < 200; round++) {
    const chunks = []
    for (let i = 0; i < STREAM.length;) {
      const n = 1 + rand(12)
      chunks.push(STREAM.slice(i, i + n))
      i += n
    }
    assert.deepEqual(brief(parse(chunks).events), EXPECTED, `chunks ${JSON.stringify(chunks)}`)
  }
})

test('events are returned by the push that completes them, not before', () => {
  const parser = new SseParser()
  assert.deepEqual(parser.push('event: update\nid: 1.0\ndata: x\n'), [])
  const events = parser.push('\n')
  assert.equal(events.length, 1)
  assert.equal(events[0].data, 'x')
})

test('a CR at the end of a chunk ends the line at once; the LF after it is not a second line end', () => {
  const parser = new SseParser()
  assert.deepEqual(parser.push('data: a\r'), [])
  // The blank line is the next CR LF, not the LF that completes the first CR LF.
  assert.deepEqual(parser.push('\n'), [])
  assert.deepEqual(brief(parser.push('\r\n')), [{ event: 'message', data: 'a', id: '', hasId: false }])
})

test('an id without data moves the last event id but dispatches nothing', () => {
  const parser = new SseParser()
  assert.deepEqual(parser.push('id: 9.2\n\n'), [])
  assert.equal(parser.lastEventId, '9.2')
  assert.deepEqual(brief(parser.push('event: awareness\ndata: z\n\n')), [{ event: 'awareness', data: 'z', id: '9.2', hasId: false }])
})

test('an id is committed only when its event is dispatched', () => {
  // A stream cut after `id:` but before the blank line must not advance the resume position.
  const parser = new SseParser()
  parser.push('event: update\nid: 1.0\ndata: a\n\nevent: update\nid: 2.0\ndata: b\n')
  assert.equal(parser.lastEventId, '1.0')
  assert.deepEqual(parser.end(), [])
  assert.equal(parser.lastEventId, '1.0')
})

test('an incomplete event at the end of the stream is discarded', () => {
  const { events } = parse(['data: complete\n\ndata: cut'])
  assert.deepEqual(brief(events), [{ event: 'message', data: 'complete', id: '', hasId: false }])
})

test('comments only: no events, counted', () => {
  const { events, parser } = parse([': heartbeat\n', ':\n', ': x: y\n\n'])
  assert.deepEqual(events, [])
  assert.equal(parser.comments, 3)
})

test('an id containing NUL is ignored; an empty id resets the last event id', () => {
  const parser = new SseParser()
  parser.push('id: 1.0\ndata: a\n\n')
  assert.equal(brief(parser.push('id: 2\u00000\ndata: b\n\n'))[0].id, '1.0')
  assert.equal(brief(parser.push('id\ndata: c\n\n'))[0].id, '')
})

test('a leading byte order mark is skipped, only at the very start', () => {
  const { events } = parse(['\uFEFFdata: a\n\n\uFEFFdata: b\n\n'])
  // The second BOM is part of a field name that is not `data`, so that block has no data.
  assert.deepEqual(brief(events), [{ event: 'message', data: 'a', id: '', hasId: false }])
})

test('bytes: UTF-8 characters split across chunks decode whole', () => {
  const bytes = new TextEncoder().encode('event: update\nid: 1.0\ndata: héllo ✓ 𝄞\n\n')
  for (let i = 0; i <= bytes.length; i++) {
    const { events } = parse([bytes.subarray(0, i), bytes.subarray(i)])
    assert.deepEqual(brief(events), [{ event: 'update', data: 'héllo ✓ 𝄞', id: '1.0', hasId: true }], `split at byte ${i}`)
  }
})

test('retry accepts digits only', () => {
  const parser = new SseParser()
  parser.push('retry: 10x\n\nretry: 250\n\nretry: -1\n\n')
  assert.equal(parser.retry, 250)
})
