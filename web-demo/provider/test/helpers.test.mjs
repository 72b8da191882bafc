// Unit tests of the small pure helpers: base64url, the backoff schedule and positions.

import assert from 'node:assert/strict'
import { test } from 'node:test'
import * as Y from 'yjs'
import { Backoff, backoffDelay, comparePositions, fromBase64Url, parsePosition, toBase64Url } from '../dist/index.js'
import { deleteSetCovers } from '../dist/deleteset.js'

test('base64url: known vectors (RFC 4648 §10, url alphabet, no padding)', () => {
  const vectors = [['', ''], ['f', 'Zg'], ['fo', 'Zm8'], ['foo', 'Zm9v'], ['foob', 'Zm9vYg'], ['fooba', 'Zm9vYmE'], ['foobar', 'Zm9vYmFy']]
  for (const [plain, encoded] of vectors) {
    const bytes = new TextEncoder().encode(plain)
    assert.equal(toBase64Url(bytes), encoded)
    assert.deepEqual(fromBase64Url(encoded), bytes)
  }
  // The two characters where base64url differs from base64.
  assert.equal(toBase64Url(Uint8Array.of(0xfb, 0xff)), '-_8')
  assert.deepEqual(fromBase64Url('-_8'), Uint8Array.of(0xfb, 0xff))
})

test('base64url: round trips every length and agrees with Node', () => {
  let seed = 7
  for (let len = 0; len < 300; len++) {
    const bytes = new Uint8Array(len)
    for (let i = 0; i < len; i++) { seed = (seed * 48271) % 2147483647; bytes[i] = seed & 0xff }
    const encoded = toBase64Url(bytes)
    assert.equal(encoded, Buffer.from(bytes).toString('base64url'), `length ${len}`)
    assert.deepEqual(fromBase64Url(encoded), bytes, `length ${len}`)
  }
})

test('base64url: padding is tolerated, anything else malformed throws', () => {
  assert.deepEqual(fromBase64Url('Zg=='), Uint8Array.of(0x66))
  assert.deepEqual(fromBase64Url('Zm8='), Uint8Array.of(0x66, 0x6f))
  assert.throws(() => fromBase64Url('Zm+v'), /unexpected character "\+"/)
  assert.throws(() => fromBase64Url('Zm/v'), /unexpected character "\/"/)
  assert.throws(() => fromBase64Url('Zm9 '), /unexpected character/)
  assert.throws(() => fromBase64Url('Zm9vY'), /length 5/)
  assert.throws(() => fromBase64Url('Zm9é'), /unexpected character/)
})

test('backoff: 100 ms doubling, capped at 2.5 s, without jitter', () => {
  const schedule = Array.from({ length: 9 }, (_, i) => backoffDelay(i, { jitter: 0 }))
  assert.deepEqual(schedule, [100, 200, 400, 800, 1600, 2500, 2500, 2500, 2500])
  // Far into an outage the delay stays finite and capped.
  assert.equal(backoffDelay(10_000, { jitter: 0 }), 2500)
})

test('backoff: jitter takes up to its fraction off the delay', () => {
  assert.equal(backoffDelay(3, {}, () => 0), 800)
  assert.equal(backoffDelay(3, {}, () => 0.5), 600)
  assert.equal(backoffDelay(3, {}, () => 0.999999), 400)
  assert.equal(backoffDelay(3, { jitter: 0.2 }, () => 0.5), 720)
  assert.equal(backoffDelay(0, { initialDelay: 50, maxDelay: 1000 }, () => 0), 50)
  assert.equal(backoffDelay(9, { initialDelay: 50, maxDelay: 1000 }, () => 0), 1000)
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(i % 8, {})
    const base = Math.min(100 * 2 ** (i % 8), 2500)
    assert.ok(d >= base / 2 && d <= base, `${d} within [${base / 2}, ${base}]`)
  }
})

test('Backoff counts failures and resets', () => {
  const b = new Backoff({ jitter: 0 })
  assert.deepEqual([b.next(), b.next(), b.next()], [100, 200, 400])
  assert.equal(b.attempts, 3)
  b.reset()
  assert.equal(b.next(), 100)
})

test('positions: parsed and compared numerically', () => {
  assert.deepEqual(parsePosition('17.3'), { seq: 17n, index: 3n })
  assert.ok(comparePositions('17.10', '17.9') > 0)
  assert.ok(comparePositions('2.0', '1.99') > 0)
  assert.ok(comparePositions('0.0', '0.1') < 0)
  assert.equal(comparePositions('5.5', '5.5'), 0)
  assert.ok(comparePositions('18446744073709551615.0', '18446744073709551614.9') > 0)
  for (const bad of ['', '1', '1.', '.1', '1.2.3', '-1.0', ' 1.0', 'a.b']) {
    assert.throws(() => parsePosition(bad), /not a position/, JSON.stringify(bad))
  }
})

test('delete sets: coverage across unsorted, split and adjacent ranges', () => {
  const ds = (entries) => {
    const set = Y.createDeleteSet()
    for (const [client, ranges] of Object.entries(entries)) set.clients.set(Number(client), ranges.map(([clock, len]) => ({ clock, len })))
    return set
  }
  const outer = ds({ 1: [[10, 5], [0, 3], [3, 2]], 2: [[4, 1]] })
  assert.equal(deleteSetCovers(outer, ds({ 1: [[0, 5]] })), true, 'adjacent ranges merge')
  assert.equal(deleteSetCovers(outer, ds({ 1: [[1, 2], [11, 4]], 2: [[4, 1]] })), true)
  assert.equal(deleteSetCovers(outer, ds({ 1: [[4, 2]] })), false, 'a range past the end of one')
  assert.equal(deleteSetCovers(outer, ds({ 1: [[9, 1]] })), false)
  assert.equal(deleteSetCovers(outer, ds({ 3: [[0, 1]] })), false, 'a client the outer set lacks')
  assert.equal(deleteSetCovers(outer, ds({ 3: [] })), true)
  assert.equal(deleteSetCovers(ds({}), ds({})), true)
})
