// base64url without padding (RFC 4648 §5), the encoding of every binary value in Concord's HTTP API:
// state vectors in `?sv=`, updates in SSE data and in the polling JSON.
//
// Written out instead of using `btoa`/`Buffer` so that it behaves the same in browsers and Node and
// rejects malformed input instead of silently decoding garbage.

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/** Character code -> 6-bit value, -1 for characters outside the alphabet. */
const LOOKUP: Int8Array = (() => {
  const table = new Int8Array(128).fill(-1)
  for (let i = 0; i < ALPHABET.length; i++) table[ALPHABET.charCodeAt(i)] = i
  return table
})()

/** Encodes bytes as base64url without padding. */
export function toBase64Url (bytes: Uint8Array): string {
  let out = ''
  let i = 0
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]! + ALPHABET[n & 63]!
  }
  const rest = bytes.length - i
  if (rest === 1) {
    const n = bytes[i]! << 16
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]!
  } else if (rest === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8)
    out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]!
  }
  return out
}

/**
 * Decodes base64url. Trailing `=` padding is tolerated (some encoders add it); anything else outside
 * the alphabet, or a length that no encoding produces (4n+1), throws.
 */
export function fromBase64Url (text: string): Uint8Array {
  let end = text.length
  while (end > 0 && text.charCodeAt(end - 1) === 61 /* '=' */) end--
  if (end % 4 === 1) throw new Error(`invalid base64url: length ${end} is not a possible encoding length`)
  const out = new Uint8Array(Math.floor((end * 3) / 4))
  let acc = 0
  let bits = 0
  let o = 0
  for (let i = 0; i < end; i++) {
    const c = text.charCodeAt(i)
    const v = c < 128 ? LOOKUP[c]! : -1
    if (v < 0) throw new Error(`invalid base64url: unexpected character ${JSON.stringify(text[i])} at ${i}`)
    acc = (acc << 6) | v
    bits += 6
    if (bits >= 8) {
      bits -= 8
      out[o++] = (acc >> bits) & 0xff
    }
  }
  return out
}
