// A streaming parser for `text/event-stream` (the WHATWG HTML "event stream interpretation"), fed with
// whatever chunks the network delivers. The provider reads the SSE endpoint with `fetch` rather than
// `EventSource`, because EventSource cannot send an `Authorization` header and Node 20 has none.

/** One dispatched event. */
export interface SseEvent {
  /** The `event:` field, `'message'` when the event had none. */
  event: string
  /** The `data:` lines joined with `\n`. */
  data: string
  /**
   * The last event id in force when the event was dispatched: the stream's most recent `id:` field,
   * which (as in EventSource) carries over to later events that have no `id:` of their own.
   */
  lastEventId: string
  /** Whether this very event carried an `id:` field. */
  hasId: boolean
}

/**
 * Incremental event-stream parser. `push` takes text (or bytes, decoded as UTF-8 across chunk
 * boundaries) and returns the events completed by it; lines may be split anywhere, including between
 * the CR and LF of a CRLF.
 */
export class SseParser {
  /** The last event id: set by an `id:` field once its event is dispatched (even one without data). */
  lastEventId = ''
  /** The `retry:` field last seen, in ms, or null. */
  retry: number | null = null
  /** How many comment lines (`: heartbeat`) were seen: they prove the stream is alive. */
  comments = 0

  private buffer = ''
  private data = ''
  private eventType = ''
  private idBuffer: string | null = null
  private sawFirstChunk = false
  /** The previous chunk ended with CR: an LF at the start of the next one belongs to it. */
  private pendingCr = false
  private readonly decoder = new TextDecoder('utf-8')

  /** Parses one chunk and returns the events it completed. */
  push (chunk: string | Uint8Array): SseEvent[] {
    let text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true })
    if (!this.sawFirstChunk && text.length > 0) {
      this.sawFirstChunk = true
      // A leading byte order mark is not part of the first line.
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1)
    }
    // An empty chunk says nothing about what follows a trailing CR.
    if (text.length === 0) return []
    if (this.pendingCr && text.charCodeAt(0) === 10) text = text.slice(1)
    this.pendingCr = false
    const events: SseEvent[] = []
    let start = 0
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i)
      if (c !== 10 && c !== 13) continue
      const line = this.buffer + text.slice(start, i)
      this.buffer = ''
      if (c === 13) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === 10) i++
        } else {
          this.pendingCr = true
        }
      }
      start = i + 1
      this.processLine(line, events)
    }
    this.buffer += text.slice(start)
    return events
  }

  /**
   * The end of the stream. An event whose blank line never came is discarded, as the specification
   * says: it may be incomplete.
   */
  end (): SseEvent[] {
    const tail = this.decoder.decode()
    const events = tail.length > 0 ? this.push(tail) : []
    this.buffer = ''
    this.data = ''
    this.eventType = ''
    this.idBuffer = null
    this.pendingCr = false
    return events
  }

  private processLine (line: string, events: SseEvent[]): void {
    if (line === '') {
      this.dispatch(events)
      return
    }
    if (line.charCodeAt(0) === 58 /* ':' */) {
      this.comments++
      return
    }
    const colon = line.indexOf(':')
    let field: string
    let value: string
    if (colon < 0) {
      field = line
      value = ''
    } else {
      field = line.slice(0, colon)
      value = line.slice(colon + 1)
      if (value.charCodeAt(0) === 32 /* ' ' */) value = value.slice(1)
    }
    switch (field) {
      case 'event':
        this.eventType = value
        break
      case 'data':
        this.data += value + '\n'
        break
      case 'id':
        // An id containing NUL is ignored (the specification's rule).
        if (!value.includes('\0')) this.idBuffer = value
        break
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.retry = Number(value)
        break
      default:
        // Unknown fields are ignored.
        break
    }
  }

  private dispatch (events: SseEvent[]): void {
    const hasId = this.idBuffer !== null
    if (this.idBuffer !== null) {
      this.lastEventId = this.idBuffer
      this.idBuffer = null
    }
    const data = this.data
    const eventType = this.eventType
    this.data = ''
    this.eventType = ''
    // An event without data is not dispatched, but its id (committed above) stays.
    if (data === '') return
    events.push({
      event: eventType === '' ? 'message' : eventType,
      data: data.endsWith('\n') ? data.slice(0, -1) : data,
      lastEventId: this.lastEventId,
      hasId
    })
  }
}
