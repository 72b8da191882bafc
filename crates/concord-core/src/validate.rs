//! Structural validation of y-websocket frames before yrs decodes them.
//!
//! yrs trusts counts read from the wire and pre-allocates for them, so a 7-byte frame can make
//! it reserve gigabytes. Every inbound frame goes through [`validate_frame`] first: a single,
//! allocation-free pass over the lib0 v1 encoding that mirrors how yrs 0.28.1 reads each field
//! (same integer widths, same accepted tags) and rejects anything yrs would reject, anything
//! whose declared counts cannot fit in the bytes actually present, and anything that makes yrs
//! panic (clocks past 2^31 - 1, 11-byte signed varints, client ids above 53 bits).
//!
//! Deliberate deviations from "accept whatever yrs accepts", each because accepting it would
//! corrupt state or break peers:
//! * content ref 2 (`ContentJSON`) is rejected: yrs 0.28.1 reads `n + 1` strings for a count of
//!   `n`, while Yjs (and yrs's own encoder) write `n`, so yrs cannot even re-read its own
//!   encoding of such an item; a document holding one could no longer be loaded.
//! * info bit `0x10` is rejected: yrs masks it away, Yjs would index past its content table.
//! * trailing bytes after an update, state vector or awareness update are rejected, and so are
//!   delete ranges of length zero.
//! * `Any` values nested deeper than 128 levels are rejected: yrs decodes them
//!   recursively, so deep nesting would overflow its stack.
//! * awareness states must be JSON (yrs stores them unparsed, peers `JSON.parse` them).
//! * awareness clocks stop short of `u32::MAX` (`u32::MAX - 2` for a state, `u32::MAX - 1` for
//!   a removal), so that the removal the room broadcasts when a state's connection leaves, and
//!   that clients echo back, is accepted in turn (see `max_awareness_clock`).
//!
//! Where yrs and Yjs disagree on the wire format without either being unsafe, yrs wins, since
//! yrs is what decodes the frame next: type ref 5 (XmlHook) carries no name (Yjs writes one).
//! The yrs-only type refs 9 (SubDoc) and 15 (Undefined) are refused: Yjs clients throw on them.
//!
//! The JSON inside frames (awareness states, embeds, format values) is checked by the
//! syntax-only checker in `validate/json_syntax.rs`.

mod json_syntax;

use json_syntax::{JsonError, JsonFlavor, check_json};

/// Deepest nesting of `Any` arrays/maps accepted. yrs decodes `Any` recursively, so without a
/// cap a frame of `[117, 1]` pairs could overflow the decoding thread's stack; 128 matches
/// serde_json's recursion limit, so anything JSON-shaped a client can build passes.
const MAX_ANY_DEPTH: usize = 128;

/// Highest clock a struct may reach, and an id may name. yrs 0.28.1 reads clocks as u32 but
/// computes how far a struct lies beyond its client's clock in i32 (`Update::integrate`): a
/// struct at 2^31 or beyond gets no skip range in front of it, and yrs panics pushing it
/// (`block_store.rs`, an `unwrap` of a missing index). Its v2 encoder, which compacted
/// snapshots use, also diffs origin and parent clocks as i32 and overflows (a panic in debug
/// builds) between clocks on either side of 2^31. Yjs clients count one clock tick per
/// inserted character or value, so 2^31 is out of reach of any real session.
const MAX_CLOCK: u32 = i32::MAX as u32;

/// Client ids in yrs are 53-bit (JavaScript safe integers); `ClientID::new` debug-asserts this
/// and silently truncates in release builds, which would alias two clients.
const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// Why a frame was rejected. Display messages are short, lowercase, human-readable; they go
/// into WebSocket close reasons (each stays well under 100 bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// The frame contained no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The input ended in the middle of a field.
    #[error("truncated {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// A count declares more elements than the remaining bytes could possibly hold.
    #[error("{what} {count} too large for {remaining} remaining bytes")]
    CountTooLarge {
        /// The counted collection.
        what: &'static str,
        /// The declared element count.
        count: u64,
        /// Bytes left in the enclosing payload when the count was read.
        remaining: usize,
    },
    /// A length prefix points past the end of the enclosing payload.
    #[error("{what} length {len} exceeds {remaining} remaining bytes")]
    LengthTooLarge {
        /// The length-prefixed field.
        what: &'static str,
        /// The declared byte length.
        len: u64,
        /// Bytes left in the enclosing payload after the prefix.
        remaining: usize,
    },
    /// A varint is longer than yrs accepts or its value overflows the integer type yrs reads
    /// it into.
    #[error("varint overflow in {what}")]
    VarIntOverflow {
        /// The field being read.
        what: &'static str,
    },
    /// A client id does not fit in 53 bits.
    #[error("{what} {client} exceeds 53 bits")]
    ClientIdTooLarge {
        /// Where the client id appeared.
        what: &'static str,
        /// The offending id.
        client: u64,
    },
    /// A clock beyond what yrs handles: a struct reaching past 2^31 - 1 (yrs computes clock
    /// offsets in i32), a delete range past u32::MAX, or an awareness clock without room for
    /// the increment that removes the state.
    #[error("clock overflow in {what}")]
    ClockOverflow {
        /// The clocked structure.
        what: &'static str,
    },
    /// A GC or skip block of length zero, which yrs rejects, or a delete range of length zero.
    #[error("zero-length {what}")]
    EmptyBlock {
        /// The kind of block.
        what: &'static str,
    },
    /// The message type is not one of sync, awareness, auth or query-awareness.
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    /// The sync message subtype is not step 1, step 2 or update.
    #[error("unknown sync message type {0}")]
    UnknownSyncMessageType(u64),
    /// An item's content ref (`info & 0x1f`) is not one Yjs and yrs both understand.
    #[error("unknown content ref {0}")]
    UnknownContentRef(u8),
    /// A type content names a type ref yrs does not know.
    #[error("unknown type ref {0}")]
    UnknownTypeRef(u8),
    /// An `Any` value starts with an unknown tag byte.
    #[error("unknown any tag {0}")]
    UnknownAnyTag(u8),
    /// Content that is well-formed but that Concord refuses because yrs mishandles it.
    #[error("unsupported {what}")]
    UnsupportedContent {
        /// The kind of content.
        what: &'static str,
    },
    /// A string is not valid UTF-8.
    #[error("invalid utf-8 in {what}")]
    InvalidUtf8 {
        /// The string field.
        what: &'static str,
    },
    /// A string that must hold JSON does not.
    #[error("invalid json in {what}")]
    InvalidJson {
        /// The JSON field.
        what: &'static str,
    },
    /// Nesting exceeds the allowed depth.
    #[error("{what} nested too deeply")]
    TooDeep {
        /// The nested value.
        what: &'static str,
    },
    /// Bytes remain after a length-delimited payload was fully parsed.
    #[error("{count} trailing bytes after {what}")]
    TrailingBytes {
        /// The payload.
        what: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
}

impl InvalidMessage {
    /// True when the frame is well-formed lib0 but uses a message type Concord does not speak
    /// (the server closes with 1003 instead of 1007). This covers unknown message types,
    /// unknown sync subtypes and content Concord refuses on purpose.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Self::UnknownMessageType(_)
                | Self::UnknownSyncMessageType(_)
                | Self::UnsupportedContent { .. }
        )
    }
}

/// Validates one binary WebSocket frame: a sequence of one or more y-protocols messages.
pub fn validate_frame(frame: &[u8]) -> Result<(), InvalidMessage> {
    if frame.is_empty() {
        return Err(InvalidMessage::Empty);
    }
    let mut r = Reader::new(frame);
    while r.has_more() {
        message(&mut r)?;
    }
    Ok(())
}

/// Validates a Yjs v1 update (the payload of SyncStep2 / Update, or of the HTTP API later).
pub fn validate_update_v1(update: &[u8]) -> Result<(), InvalidMessage> {
    let mut r = Reader::new(update);
    let clients = r.count_u32("update client count", 3)?;
    for _ in 0..clients {
        let structs = r.count_u32("struct count", 2)?;
        r.client("update client")?;
        // Tracked in u64 so the u32 overflow yrs would hit (`clock += block.len()`) is caught
        // along with clocks past MAX_CLOCK.
        let mut clock = u64::from(r.var_u32("update clock")?);
        for _ in 0..structs {
            clock += u64::from(block(&mut r)?);
            if clock > u64::from(MAX_CLOCK) {
                return Err(InvalidMessage::ClockOverflow { what: "update" });
            }
        }
    }
    delete_set(&mut r)?;
    r.finish("update")
}

/// Validates a v1-encoded state vector (payload of SyncStep1).
pub fn validate_state_vector_v1(sv: &[u8]) -> Result<(), InvalidMessage> {
    let mut r = Reader::new(sv);
    let entries = r.count_u32("state vector count", 2)?;
    for _ in 0..entries {
        r.client("state vector client")?;
        r.var_u32("state vector clock")?;
    }
    r.finish("state vector")
}

/// Validates an awareness update (payload of an awareness message): counts, UTF-8 and JSON of
/// each state.
pub fn validate_awareness_update(update: &[u8]) -> Result<(), InvalidMessage> {
    const WHAT: &str = "awareness state";
    let mut r = Reader::new(update);
    // yrs reads this count as usize, the per-entry clock as u32.
    let entries = r.count_u64("awareness count", 3)?;
    for _ in 0..entries {
        r.client("awareness client")?;
        let clock = r.var_u32("awareness clock")?;
        let state = r.string(WHAT)?;
        if clock > max_awareness_clock(state) {
            return Err(InvalidMessage::ClockOverflow {
                what: "awareness clock",
            });
        }
        // yrs stores the state unparsed, but peers JSON.parse it when it is relayed, so a
        // malformed state would make every other client throw.
        check_json(state, JsonFlavor::Relayed).map_err(|e| e.into_invalid(WHAT))?;
    }
    r.finish("awareness update")
}

/// The highest clock an awareness entry may carry.
///
/// When a connection leaves or its state expires, the room removes the state by incrementing
/// its clock, and broadcasts that removal; every y-websocket client that knew the state sends
/// the removal straight back (clients re-broadcast every change they apply). So a state must
/// leave room for the increment, and the removal it turns into must itself pass this check, or
/// the echo gets innocent clients closed: a state yrs considers present (anything but the exact
/// string `null`, as yrs compares it) may reach `u32::MAX - 2`, a removal `u32::MAX - 1`.
/// `u32::MAX` is refused even for a removal: yrs increments the clock of a removal aimed at its
/// own client id, which would overflow.
fn max_awareness_clock(state: &str) -> u32 {
    if state == "null" {
        u32::MAX - 1
    } else {
        u32::MAX - 2
    }
}

/// One y-protocols message, mirroring `yrs::sync::Message::decode`.
fn message(r: &mut Reader<'_>) -> Result<(), InvalidMessage> {
    match r.var_u64("message type")? {
        0 => match r.var_u64("sync message type")? {
            0 => validate_state_vector_v1(r.bytes("state vector")?),
            1 => validate_update_v1(r.bytes("sync step 2")?),
            2 => validate_update_v1(r.bytes("update")?),
            other => Err(InvalidMessage::UnknownSyncMessageType(other)),
        },
        1 => validate_awareness_update(r.bytes("awareness update")?),
        2 => {
            // yrs reads the auth subtype as u8; 0 = permission denied, followed by a reason.
            let subtype = r.var_u64("auth message type")?;
            if subtype > u64::from(u8::MAX) {
                return Err(InvalidMessage::VarIntOverflow {
                    what: "auth message type",
                });
            }
            if subtype == 0 {
                r.string("auth reason")?;
            }
            Ok(())
        }
        3 => Ok(()),
        // Concord's durability extension: a buffer holding exactly one varUint request id.
        t if t == u64::from(crate::MSG_SAVED) => {
            let mut payload = Reader::new(r.bytes("save request")?);
            payload.var_u64("save request id")?;
            payload.finish("save request")
        }
        other => Err(InvalidMessage::UnknownMessageType(other)),
    }
}

/// One struct of an update, mirroring `Update::decode_block`. Returns the clock length yrs
/// assigns to it (0 for items yrs drops because their content is empty).
fn block(r: &mut Reader<'_>) -> Result<u32, InvalidMessage> {
    // GC (0) and skip (10) are matched on the whole info byte, as yrs does: flag bits on them
    // make yrs treat the struct as an item with an invalid content ref.
    let info = r.u8("struct info")?;
    match info {
        0 | 10 => {
            let what = if info == 0 { "gc block" } else { "skip block" };
            let len = r.var_u32(what)?;
            if len == 0 {
                return Err(InvalidMessage::EmptyBlock { what });
            }
            return Ok(len);
        }
        _ => {}
    }
    // yrs masks the content ref with 0x0f, Yjs with 0x1f; checking 0x1f rejects refs 16..=31,
    // which yrs would alias onto real refs while Yjs throws on them.
    let content_ref = info & 0x1f;
    if !(1..=9).contains(&content_ref) {
        return Err(InvalidMessage::UnknownContentRef(content_ref));
    }
    if info & 0x80 != 0 {
        r.id("origin")?;
    }
    if info & 0x40 != 0 {
        r.id("right origin")?;
    }
    if info & 0xc0 == 0 {
        // yrs: parent info (u32) == 1 means a root type name follows, anything else an id.
        if r.var_u32("parent info")? == 1 {
            r.string("parent name")?;
        } else {
            r.id("parent")?;
        }
        if info & 0x20 != 0 {
            r.string("parent sub")?;
        }
    }
    content(r, content_ref)
}

/// Item content, mirroring `ItemContent::decode`. Returns the item's length in yrs's terms
/// (`ItemContent::len_utf16`).
fn content(r: &mut Reader<'_>, content_ref: u8) -> Result<u32, InvalidMessage> {
    match content_ref {
        1 => r.var_u32("deleted length"),
        2 => {
            // Check the count first so a bomb gets the precise error, then refuse (see the
            // module docs: yrs reads one string more than was written).
            r.count_u32("json content count", 1)?;
            Err(InvalidMessage::UnsupportedContent {
                what: "json content",
            })
        }
        3 => {
            r.bytes("binary content")?;
            Ok(1)
        }
        4 => {
            let s = r.string("string content")?;
            Ok(utf16_len(s))
        }
        5 => {
            json_string(r, "embed")?;
            Ok(1)
        }
        6 => {
            r.string("format key")?;
            json_string(r, "format value")?;
            Ok(1)
        }
        7 => {
            type_ref(r)?;
            Ok(1)
        }
        8 => {
            let n = r.count_u32("any content count", 1)?;
            any_values(r, n.into())?;
            // Each value is one clock tick, as in `ItemContent::len_utf16`.
            Ok(n)
        }
        9 => {
            r.string("subdoc guid")?;
            any_values(r, 1)?;
            Ok(1)
        }
        // Unreachable: `block` only passes 1..=9.
        other => Err(InvalidMessage::UnknownContentRef(other)),
    }
}

/// A type ref, mirroring `TypeRef::decode` without the `weak` feature: the ref is one raw
/// byte; XmlElement carries a tag name. yrs's XmlHook (5) carries nothing, unlike Yjs's.
/// yrs also reads SubDoc (9) and Undefined (15), but Yjs clients throw on any type ref above 6,
/// so relaying one would break every JS client of the room: they are refused.
fn type_ref(r: &mut Reader<'_>) -> Result<(), InvalidMessage> {
    match r.u8("type ref")? {
        0 | 1 | 2 | 4 | 5 | 6 => Ok(()),
        9 | 15 => Err(InvalidMessage::UnsupportedContent {
            what: "type ref unknown to yjs",
        }),
        3 => r.string("xml element name").map(|_| ()),
        other => Err(InvalidMessage::UnknownTypeRef(other)),
    }
}

/// A varString holding JSON that yrs parses with `Any::from_json`.
fn json_string(r: &mut Reader<'_>, what: &'static str) -> Result<(), InvalidMessage> {
    let s = r.string(what)?;
    check_json(s, JsonFlavor::YrsAny).map_err(|e| e.into_invalid(what))
}

/// The delete set, mirroring `IdSet::decode`.
fn delete_set(r: &mut Reader<'_>) -> Result<(), InvalidMessage> {
    let clients = r.count_u32("delete set client count", 2)?;
    for _ in 0..clients {
        r.client("delete set client")?;
        let ranges = r.count_u32("delete range count", 2)?;
        for _ in 0..ranges {
            let clock = r.var_u32("delete range clock")?;
            let len = r.var_u32("delete range length")?;
            // yrs computes `clock..clock + len` in u32.
            if clock.checked_add(len).is_none() {
                return Err(InvalidMessage::ClockOverflow {
                    what: "delete range",
                });
            }
            // Deletes nothing, and neither Yjs nor yrs ever writes one; but yrs keeps it as a
            // pending delete set for a client it does not know, which a live room drops at its
            // next update while a room reloaded from the stored update keeps it (and then
            // reports missing updates).
            if len == 0 {
                return Err(InvalidMessage::EmptyBlock {
                    what: "delete range",
                });
            }
        }
    }
    Ok(())
}

/// `count` consecutive lib0 `Any` values, mirroring `Any::decode` but iteratively, with a
/// fixed-size stack so hostile nesting costs neither heap nor call stack. Taking the whole
/// sequence at once sets that stack up once per item rather than once per value.
fn any_values(r: &mut Reader<'_>, count: u64) -> Result<(), InvalidMessage> {
    // remaining[d] = elements still to read in the container at depth d; bit d of `maps` marks
    // maps, whose elements are preceded by a key.
    let mut remaining = [0u64; MAX_ANY_DEPTH];
    let mut maps: u128 = 0;
    let mut depth = 0usize;
    let mut top_level = count;
    loop {
        if depth == 0 {
            if top_level == 0 {
                return Ok(());
            }
            top_level -= 1;
        } else {
            let d = depth - 1;
            if remaining[d] == 0 {
                depth -= 1;
                continue;
            }
            remaining[d] -= 1;
            if maps >> d & 1 == 1 {
                r.string("any map key")?;
            }
        }
        match r.u8("any tag")? {
            // undefined, null, false, true
            127 | 126 | 121 | 120 => {}
            125 => r.var_i64("any integer")?,
            124 => r.skip(4, "any float32")?,
            123 => r.skip(8, "any float64")?,
            122 => r.skip(8, "any bigint")?,
            119 => {
                r.string("any string")?;
            }
            116 => {
                r.bytes("any buffer")?;
            }
            tag @ (117 | 118) => {
                let is_map = tag == 118;
                // yrs reads these counts as usize; a map entry is at least a key length and a
                // tag byte.
                let n = if is_map {
                    r.count_u64("any map size", 2)?
                } else {
                    r.count_u64("any array length", 1)?
                };
                if depth == MAX_ANY_DEPTH {
                    return Err(InvalidMessage::TooDeep { what: "any value" });
                }
                remaining[depth] = n;
                if is_map {
                    maps |= 1 << depth;
                } else {
                    maps &= !(1 << depth);
                }
                depth += 1;
            }
            other => return Err(InvalidMessage::UnknownAnyTag(other)),
        }
    }
}

/// Length of a string in UTF-16 code units, as yrs measures text items: one unit per scalar
/// value, two for those outside the BMP (exactly the ones encoded with a 4-byte UTF-8 lead).
fn utf16_len(s: &str) -> u32 {
    let units: usize = s
        .bytes()
        .map(|b| usize::from(b & 0xc0 != 0x80) + usize::from(b >= 0xf0))
        .sum();
    // The string's byte length came from a u32 prefix and units <= bytes, so this cannot
    // saturate; saturating keeps the clock check conservative if that ever changes.
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// A cursor over one length-delimited payload. Every read is bounds-checked and returns a
/// precise error; nothing allocates.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    fn has_more(&self) -> bool {
        self.pos < self.buf.len()
    }

    #[inline]
    fn u8(&mut self, what: &'static str) -> Result<u8, InvalidMessage> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(InvalidMessage::Truncated { what })?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], InvalidMessage> {
        if n > self.remaining() {
            return Err(InvalidMessage::Truncated { what });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    fn skip(&mut self, n: usize, what: &'static str) -> Result<(), InvalidMessage> {
        self.take(n, what).map(|_| ())
    }

    /// An unsigned LEB128 varint read exactly. yrs accepts up to 11 bytes (a 10th continuation
    /// byte is still followed), but silently wraps bits beyond the target width; rejecting any
    /// value that does not fit means every accepted varint reads identically in yrs.
    #[inline]
    fn var_u64(&mut self, what: &'static str) -> Result<u64, InvalidMessage> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if shift < 64 {
                if shift > 0 && bits >> (64 - shift) != 0 {
                    return Err(InvalidMessage::VarIntOverflow { what });
                }
                value |= bits << shift;
            } else if bits != 0 {
                return Err(InvalidMessage::VarIntOverflow { what });
            }
            if b < 0x80 {
                return Ok(value);
            }
            shift += 7;
            if shift > 70 {
                return Err(InvalidMessage::VarIntOverflow { what });
            }
        }
    }

    /// A varint yrs reads as u32.
    #[inline]
    fn var_u32(&mut self, what: &'static str) -> Result<u32, InvalidMessage> {
        let v = self.var_u64(what)?;
        u32::try_from(v).map_err(|_| InvalidMessage::VarIntOverflow { what })
    }

    /// A lib0 signed varint (`readVarInt`): the first byte holds continuation, sign and 6 data
    /// bits. yrs shifts an i64 by up to 69 bits here, which panics in debug builds once the
    /// varint reaches 11 bytes, and negates the magnitude, which overflows for 2^63; so accept
    /// at most 10 bytes and magnitudes up to i64::MAX.
    fn var_i64(&mut self, what: &'static str) -> Result<(), InvalidMessage> {
        let first = self.u8(what)?;
        if first < 0x80 {
            return Ok(());
        }
        let mut magnitude = u64::from(first & 0x3f);
        let mut shift = 6u32;
        loop {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            // shift <= 62 here; the value must stay below 2^63.
            if bits >> (63 - shift) != 0 {
                return Err(InvalidMessage::VarIntOverflow { what });
            }
            magnitude |= bits << shift;
            if b < 0x80 {
                debug_assert!(magnitude <= i64::MAX as u64);
                return Ok(());
            }
            shift += 7;
            if shift > 62 {
                return Err(InvalidMessage::VarIntOverflow { what });
            }
        }
    }

    /// A count of elements each taking at least `min_size` bytes, read as u32 like yrs does.
    fn count_u32(&mut self, what: &'static str, min_size: u64) -> Result<u32, InvalidMessage> {
        let n = self.var_u64(what)?;
        self.check_count(what, n, min_size)?;
        // check_count bounds n by the remaining bytes, but the u32 check is yrs's rule and
        // must hold independently of how large a payload is.
        u32::try_from(n).map_err(|_| InvalidMessage::VarIntOverflow { what })
    }

    /// A count of elements each taking at least `min_size` bytes, read as u64/usize.
    fn count_u64(&mut self, what: &'static str, min_size: u64) -> Result<u64, InvalidMessage> {
        let n = self.var_u64(what)?;
        self.check_count(what, n, min_size)?;
        Ok(n)
    }

    fn check_count(&self, what: &'static str, n: u64, min_size: u64) -> Result<(), InvalidMessage> {
        let remaining = self.remaining();
        if n.saturating_mul(min_size) > remaining as u64 {
            return Err(InvalidMessage::CountTooLarge {
                what,
                count: n,
                remaining,
            });
        }
        Ok(())
    }

    /// A varUint8Array; yrs reads the length as u32.
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], InvalidMessage> {
        let len = self.var_u32(what)?;
        let remaining = self.remaining();
        if u64::from(len) > remaining as u64 {
            return Err(InvalidMessage::LengthTooLarge {
                what,
                len: len.into(),
                remaining,
            });
        }
        self.take(len as usize, what)
    }

    /// A varString; yrs rejects invalid UTF-8.
    fn string(&mut self, what: &'static str) -> Result<&'a str, InvalidMessage> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b).map_err(|_| InvalidMessage::InvalidUtf8 { what })
    }

    /// A client id: yrs reads u64 and requires 53 bits.
    fn client(&mut self, what: &'static str) -> Result<u64, InvalidMessage> {
        let client = self.var_u64(what)?;
        if client > MAX_CLIENT_ID {
            return Err(InvalidMessage::ClientIdTooLarge { what, client });
        }
        Ok(client)
    }

    /// An item id: client then u32 clock, at most MAX_CLOCK (no struct lives beyond it, so a
    /// reference there could only dangle, and it would break yrs's v2 encoding).
    fn id(&mut self, what: &'static str) -> Result<(), InvalidMessage> {
        self.client(what)?;
        if self.var_u32(what)? > MAX_CLOCK {
            return Err(InvalidMessage::ClockOverflow { what });
        }
        Ok(())
    }

    /// Ends a length-delimited payload: leftovers mean the sender and yrs disagree on its
    /// structure, and yrs would silently ignore them.
    fn finish(&self, what: &'static str) -> Result<(), InvalidMessage> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(InvalidMessage::TrailingBytes { what, count }),
        }
    }
}

/// The checker knows nothing of frames; the field a failure is reported against is named here.
impl JsonError {
    fn into_invalid(self, what: &'static str) -> InvalidMessage {
        match self {
            JsonError::Invalid => InvalidMessage::InvalidJson { what },
            JsonError::TooDeep => InvalidMessage::TooDeep { what },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Rng;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use yrs::sync::{Awareness, AwarenessUpdate, Message, SyncMessage};
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{
        Any, Array, ArrayPrelim, Doc, GetString, Map, MapPrelim, Number, ReadTxn, StateVector,
        Text, TextPrelim, Transact, Update, Xml, XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    fn frame(messages: &[Message]) -> Vec<u8> {
        messages.iter().flat_map(|m| m.encode_v1()).collect()
    }

    fn update_frame(update: Vec<u8>) -> Vec<u8> {
        Message::Sync(SyncMessage::Update(update)).encode_v1()
    }

    /// Everything a valid update should pass: the update itself, both sync wrappings, and the
    /// state vector derived from it. Also checks yrs agrees it decodes.
    fn assert_valid_update(update: &[u8]) {
        assert_eq!(validate_update_v1(update), Ok(()), "update {update:?}");
        Update::decode_v1(update).expect("yrs decodes what we validated");
        assert_eq!(validate_frame(&update_frame(update.to_vec())), Ok(()));
        let step2 = Message::Sync(SyncMessage::SyncStep2(update.to_vec())).encode_v1();
        assert_eq!(validate_frame(&step2), Ok(()));
        let sv = yrs::encode_state_vector_from_update_v1(update).unwrap();
        assert_eq!(validate_state_vector_v1(&sv), Ok(()));
    }

    fn full_state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// Collects every incremental update a doc emits.
    fn record_updates(doc: &Doc) -> Arc<Mutex<Vec<Vec<u8>>>> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        doc.observe_update_v1("test", move |_, e| {
            sink.lock().unwrap().push(e.update.clone())
        })
        .unwrap();
        log
    }

    fn every_any_kind() -> Vec<Any> {
        let mut map = HashMap::new();
        map.insert("n".to_string(), Any::Null);
        map.insert("s".to_string(), Any::from("ünïcødé 😀"));
        map.insert(
            "nested".to_string(),
            Any::Array(vec![Any::Bool(true), Any::Map(Arc::new(HashMap::new()))].into()),
        );
        vec![
            Any::Undefined,
            Any::Null,
            Any::Bool(true),
            Any::Bool(false),
            Any::Number(Number::Int(0)),
            Any::Number(Number::Int(42)),
            Any::Number(Number::Int(-42)),
            Any::Number(Number::Int(i32::MAX as i64)),
            Any::Number(Number::Int(-(i32::MAX as i64))),
            // Encoded as float32 / float64 / bigint by yrs.
            Any::Number(Number::Int(1 << 40)),
            Any::Number(Number::Int((1 << 53) - 1)),
            Any::Number(Number::Int(i64::MAX - 1)),
            Any::Number(Number::Int(i64::MIN + 1)),
            Any::Number(Number::Float(0.5)),
            Any::Number(Number::Float(-1.0e300)),
            Any::Number(Number::Float(std::f64::consts::PI)),
            Any::from(""),
            Any::from("text"),
            Any::Buffer(vec![0u8, 1, 2, 255].into()),
            Any::Buffer(Vec::<u8>::new().into()),
            Any::Array(Vec::<Any>::new().into()),
            Any::Array(vec![Any::Null, Any::from(1.5), Any::from("x")].into()),
            Any::Map(Arc::new(map)),
        ]
    }

    #[test]
    fn any_values_of_every_kind_validate() {
        for value in every_any_kind() {
            let mut buf = Vec::new();
            value.encode(&mut buf);
            let mut r = Reader::new(&buf);
            assert_eq!(any_values(&mut r, 1), Ok(()), "{value:?}");
            assert_eq!(r.remaining(), 0, "{value:?}");
        }
        // Every tag byte shows up at least once above.
        let mut tags = std::collections::BTreeSet::new();
        for value in every_any_kind() {
            let mut buf = Vec::new();
            value.encode(&mut buf);
            tags.insert(buf[0]);
        }
        assert_eq!(
            tags.into_iter().collect::<Vec<_>>(),
            (116..=127).collect::<Vec<u8>>()
        );
    }

    #[test]
    fn text_with_formatting_embeds_and_deletions_validates() {
        let doc = Doc::with_client_id(7);
        let log = record_updates(&doc);
        let text = doc.get_or_insert_text("text");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello wörld 😀 and more");
            let bold: yrs::types::Attrs = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
            text.format(&mut txn, 0, 5, bold);
            let link: yrs::types::Attrs = HashMap::from([(
                Arc::from("link"),
                Any::Map(Arc::new(HashMap::from([(
                    "href".to_string(),
                    Any::from("https://example.com/?q=\"quoted\"\\"),
                )]))),
            )]);
            text.insert_with_attributes(&mut txn, 0, "linked ", link);
            text.insert_embed(&mut txn, 3, Any::from("image.png"));
            text.insert_embed(
                &mut txn,
                1,
                Any::Map(Arc::new(HashMap::from([
                    ("width".to_string(), Any::from(640)),
                    ("ratio".to_string(), Any::from(1.25)),
                    ("big".to_string(), Any::Number(Number::Int(i64::MAX))),
                    ("neg".to_string(), Any::Number(Number::Int(-5))),
                    (
                        "list".to_string(),
                        Any::Array(vec![Any::Null, Any::Bool(false)].into()),
                    ),
                ]))),
            );
        }
        {
            let mut txn = doc.transact_mut();
            text.remove_range(&mut txn, 0, 4);
            let unbold: yrs::types::Attrs = HashMap::from([(Arc::from("bold"), Any::Null)]);
            text.format(&mut txn, 0, 3, unbold);
        }
        let updates = log.lock().unwrap().clone();
        assert_eq!(updates.len(), 2);
        for update in &updates {
            assert_valid_update(update);
        }
        assert_valid_update(&full_state(&doc));
    }

    #[test]
    fn arrays_maps_nested_types_xml_and_subdocs_validate() {
        let doc = Doc::with_client_id((1 << 53) - 1);
        let log = record_updates(&doc);
        let array = doc.get_or_insert_array("array");
        let map = doc.get_or_insert_map("map");
        let xml = doc.get_or_insert_xml_fragment("xml");
        {
            let mut txn = doc.transact_mut();
            for value in every_any_kind() {
                array.push_back(&mut txn, value);
            }
            array.insert_range(&mut txn, 0, vec![1, 2, 3]);
            let nested = array.push_back(&mut txn, ArrayPrelim::default());
            nested.push_back(&mut txn, MapPrelim::from([("k", Any::from("v"))]));
            map.insert(&mut txn, "text", TextPrelim::new("nested text"));
            map.insert(
                &mut txn,
                "array",
                ArrayPrelim::from([Any::from(1), Any::from("two")]),
            );
            map.insert(&mut txn, "map", MapPrelim::from([("deep", Any::Null)]));
            for (i, value) in every_any_kind().into_iter().enumerate() {
                map.insert(&mut txn, format!("any{i}"), value);
            }
            map.insert(&mut txn, "subdoc", Doc::with_client_id(3));
            let p = xml.push_back(&mut txn, XmlElementPrelim::empty("p"));
            p.insert_attribute(&mut txn, "class", "lead");
            p.push_back(&mut txn, XmlTextPrelim::new("xml text"));
            xml.push_back(&mut txn, XmlElementPrelim::new("div", []));
            xml.push_back(&mut txn, XmlTextPrelim::new("tail"));
        }
        {
            // Deleting nested types and overwriting keys produces deleted content, GC'd structs
            // and a delete set.
            let mut txn = doc.transact_mut();
            array.remove_range(&mut txn, 1, 5);
            map.remove(&mut txn, "text");
            map.insert(&mut txn, "map", "overwritten");
            xml.remove_range(&mut txn, 0, 1);
        }
        let updates = log.lock().unwrap().clone();
        for update in &updates {
            assert_valid_update(update);
        }
        let state = full_state(&doc);
        assert_valid_update(&state);
        // Merging non-adjacent updates yields skip structs.
        let merged = yrs::merge_updates_v1([updates[0].as_slice(), updates[1].as_slice()]).unwrap();
        assert_valid_update(&merged);
        let skipping = yrs::merge_updates_v1([updates[1].as_slice()]).unwrap();
        assert_valid_update(&skipping);
    }

    #[test]
    fn protocol_messages_validate() {
        let doc = Doc::with_client_id(11);
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "x");
        let sv = doc.transact().state_vector();
        let update = full_state(&doc);
        let mut awareness = Awareness::new(doc);
        awareness
            .set_local_state_raw(r##"{"user":{"name":"Ada \ud83d\ude00","color":"#ff0"},"cursor":null,"n":[1,-2.5e3,true]}"##);
        let aw_update = awareness.update().unwrap();
        let null_state = AwarenessUpdate {
            clients: HashMap::from([(
                yrs::ClientID::new(12),
                yrs::sync::awareness::AwarenessUpdateEntry {
                    clock: 4,
                    json: Arc::from("null"),
                },
            )]),
        };
        let messages = [
            Message::Sync(SyncMessage::SyncStep1(sv)),
            Message::Sync(SyncMessage::SyncStep1(StateVector::default())),
            Message::Sync(SyncMessage::SyncStep2(update.clone())),
            Message::Sync(SyncMessage::Update(update)),
            Message::Awareness(aw_update.clone()),
            Message::Awareness(null_state),
            Message::Awareness(AwarenessUpdate {
                clients: HashMap::new(),
            }),
            Message::Auth(Some("permission denied: nope".into())),
            Message::Auth(None),
            Message::AwarenessQuery,
        ];
        for m in &messages {
            assert_eq!(validate_frame(&m.encode_v1()), Ok(()), "{m:?}");
        }
        // All of them back to back in one frame.
        assert_eq!(validate_frame(&frame(&messages)), Ok(()));
        assert_eq!(validate_awareness_update(&aw_update.encode_v1()), Ok(()));
    }

    /// Builds one random document through random edits, returning every update it emitted
    /// plus its final state.
    fn random_doc_updates(rng: &mut Rng) -> Vec<Vec<u8>> {
        const CHARS: &[char] = &['a', 'b', ' ', 'é', 'ß', '中', '😀', '\n', '"', '\\'];
        fn random_string(rng: &mut Rng, max: u64) -> String {
            (0..rng.below(max) + 1)
                .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize])
                .collect()
        }
        fn random_any(rng: &mut Rng, depth: u32) -> Any {
            match rng.below(if depth > 3 { 9 } else { 11 }) {
                0 => Any::Null,
                1 => Any::Undefined,
                2 => Any::Bool(rng.chance(50)),
                3 => Any::Number(Number::Int(rng.next() as i64 >> rng.below(64))),
                4 => Any::Number(Number::Int(rng.below(1000) as i64 - 500)),
                5 => Any::Number(Number::Float(f64::from_bits(rng.next() & !(0x7ff << 52)))),
                6 => Any::Number(Number::Float(rng.below(1 << 20) as f64 / 7.0)),
                7 => Any::from(random_string(rng, 8)),
                8 => Any::Buffer(
                    (0..rng.below(6))
                        .map(|_| rng.next() as u8)
                        .collect::<Vec<_>>()
                        .into(),
                ),
                9 => Any::Array(
                    (0..rng.below(4))
                        .map(|_| random_any(rng, depth + 1))
                        .collect::<Vec<_>>()
                        .into(),
                ),
                _ => Any::Map(Arc::new(
                    (0..rng.below(4))
                        .map(|_| (random_string(rng, 4), random_any(rng, depth + 1)))
                        .collect(),
                )),
            }
        }
        // JSON-safe values for embeds and format attributes (no buffers / undefined).
        fn random_json_any(rng: &mut Rng) -> Any {
            match rng.below(6) {
                0 => Any::Null,
                1 => Any::Bool(rng.chance(50)),
                2 => Any::Number(Number::Int(rng.next() as i64 >> rng.below(64))),
                3 => Any::Number(Number::Float(rng.below(1 << 20) as f64 / 3.0)),
                4 => Any::from(random_string(rng, 6)),
                _ => Any::Map(Arc::new(HashMap::from([(
                    random_string(rng, 3),
                    Any::from(1),
                )]))),
            }
        }
        fn char_offsets(s: &str) -> Vec<u32> {
            s.char_indices()
                .map(|(i, _)| i as u32)
                .chain([s.len() as u32])
                .collect()
        }

        let doc = Doc::with_client_id(rng.below(1 << 53));
        let log = record_updates(&doc);
        let plain = doc.get_or_insert_text("plain");
        let rich = doc.get_or_insert_text("rich");
        let array = doc.get_or_insert_array("array");
        let map = doc.get_or_insert_map("map");
        let xml = doc.get_or_insert_xml_fragment("xml");
        for _ in 0..rng.below(12) + 1 {
            let mut txn = doc.transact_mut();
            for _ in 0..rng.below(4) + 1 {
                match rng.below(12) {
                    0 | 1 => {
                        let offs = char_offsets(&plain.get_string(&txn));
                        let at = offs[rng.below(offs.len() as u64) as usize];
                        plain.insert(&mut txn, at, &random_string(rng, 10));
                    }
                    2 => {
                        let offs = char_offsets(&plain.get_string(&txn));
                        let a = rng.below(offs.len() as u64) as usize;
                        let b = a + rng.below((offs.len() - a) as u64) as usize;
                        if rng.chance(50) {
                            plain.remove_range(&mut txn, offs[a], offs[b] - offs[a]);
                        } else {
                            let attrs = HashMap::from([(Arc::from("b"), random_json_any(rng))]);
                            plain.format(&mut txn, offs[a], offs[b] - offs[a], attrs);
                        }
                    }
                    3 => {
                        // ASCII only, inserted at the ends, so byte offsets never split a char.
                        let len = rich.len(&txn);
                        let at = if rng.chance(50) { 0 } else { len };
                        if rng.chance(50) {
                            rich.insert_embed(&mut txn, at, random_json_any(rng));
                        } else {
                            let attrs = HashMap::from([(Arc::from("i"), random_json_any(rng))]);
                            rich.insert_with_attributes(&mut txn, at, "abc", attrs);
                        }
                        if rng.chance(30) && rich.len(&txn) > 1 {
                            rich.remove_range(&mut txn, 0, 1);
                        }
                    }
                    4 | 5 => {
                        let at = rng.below(array.len(&txn) as u64 + 1) as u32;
                        array.insert(&mut txn, at, random_any(rng, 0));
                    }
                    6 => {
                        let len = array.len(&txn);
                        if len > 0 {
                            let at = rng.below(len as u64) as u32;
                            let n = rng.below((len - at) as u64) as u32 + 1;
                            array.remove_range(&mut txn, at, n);
                        }
                    }
                    7 => {
                        let key = format!("k{}", rng.below(5));
                        match rng.below(5) {
                            0 => {
                                map.insert(&mut txn, key, TextPrelim::new(random_string(rng, 5)));
                            }
                            1 => {
                                map.insert(&mut txn, key, ArrayPrelim::from([random_any(rng, 0)]));
                            }
                            2 => {
                                map.insert(&mut txn, key, Doc::with_client_id(rng.below(1 << 32)));
                            }
                            _ => {
                                map.insert(&mut txn, key, random_any(rng, 0));
                            }
                        }
                    }
                    8 => {
                        map.remove(&mut txn, &format!("k{}", rng.below(5)));
                    }
                    9 | 10 => {
                        let at = rng.below(xml.len(&txn) as u64 + 1) as u32;
                        if rng.chance(50) {
                            let el = xml.insert(&mut txn, at, XmlElementPrelim::empty("p"));
                            el.insert_attribute(&mut txn, "data-x", random_string(rng, 4));
                            el.push_back(&mut txn, XmlTextPrelim::new(random_string(rng, 6)));
                        } else {
                            xml.insert(&mut txn, at, XmlTextPrelim::new(random_string(rng, 6)));
                        }
                    }
                    _ => {
                        let len = xml.len(&txn);
                        if len > 0 {
                            xml.remove_range(&mut txn, rng.below(len as u64) as u32, 1);
                        }
                    }
                }
            }
        }
        let mut updates = log.lock().unwrap().clone();
        if updates.len() >= 3 {
            // Merging non-adjacent updates of one client leaves a gap, encoded as a skip struct.
            let merged = yrs::merge_updates_v1([updates[0].as_slice(), updates[2].as_slice()]);
            updates.push(merged.unwrap());
        }
        updates.push(full_state(&doc));
        updates
    }

    #[test]
    fn random_documents_validate_and_every_truncation_is_rejected() {
        let mut rng = Rng(0x5eed_c0de);
        let mut checked = 0usize;
        for _ in 0..150 {
            for update in random_doc_updates(&mut rng) {
                assert_valid_update(&update);
                for cut in 0..update.len() {
                    assert!(
                        validate_update_v1(&update[..cut]).is_err(),
                        "prefix {cut} of {update:?}"
                    );
                }
                let framed = update_frame(update);
                for cut in 0..framed.len() {
                    assert!(
                        validate_frame(&framed[..cut]).is_err(),
                        "frame prefix {cut}"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > 500, "only {checked} updates generated");
    }

    /// Random byte mutations never panic the validator, and whatever it accepts yrs decodes
    /// without error or panic: the validator is never more permissive than yrs.
    #[test]
    fn mutations_never_panic_and_accepted_input_decodes_in_yrs() {
        let mut rng = Rng(0xbad_f00d);
        let mut accepted = 0usize;
        let mut total = 0usize;
        for _ in 0..60 {
            for update in random_doc_updates(&mut rng) {
                for _ in 0..40 {
                    let mut m = update.clone();
                    for _ in 0..rng.below(3) + 1 {
                        let i = rng.below(m.len() as u64) as usize;
                        match rng.below(4) {
                            0 => m[i] = rng.next() as u8,
                            1 => m[i] ^= 1 << rng.below(8),
                            2 => m.insert(i, rng.next() as u8),
                            _ => {
                                if m.len() > 1 {
                                    m.remove(i);
                                }
                            }
                        }
                    }
                    total += 1;
                    if validate_update_v1(&m).is_ok() {
                        accepted += 1;
                        if let Err(e) = Update::decode_v1(&m) {
                            panic!("validator accepted {m:?} but yrs rejects it: {e}");
                        }
                    }
                    let framed = update_frame(m.clone());
                    assert_eq!(
                        validate_frame(&framed).is_ok(),
                        validate_update_v1(&m).is_ok()
                    );
                    let _ = validate_state_vector_v1(&m);
                    let _ = validate_awareness_update(&m);
                }
            }
        }
        // Sanity: mutations are not all rejected (the yrs cross-check above did real work).
        assert!(accepted > total / 100, "accepted {accepted} of {total}");
    }

    /// Purely random bytes through every entry point: no panics, whatever comes out.
    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng(42);
        for _ in 0..20_000 {
            let len = rng.below(40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.below(4) {
                    0 => 0xff,
                    1 => rng.below(4) as u8,
                    _ => rng.next() as u8,
                })
                .collect();
            let _ = validate_frame(&bytes);
            if validate_update_v1(&bytes).is_ok() {
                Update::decode_v1(&bytes).expect("yrs decodes what we validated");
            }
            if validate_state_vector_v1(&bytes).is_ok() {
                StateVector::decode_v1(&bytes).expect("yrs decodes what we validated");
            }
            if validate_awareness_update(&bytes).is_ok() {
                AwarenessUpdate::decode_v1(&bytes).expect("yrs decodes what we validated");
            }
        }
    }

    fn push_var(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    fn push_str(buf: &mut Vec<u8>, s: &[u8]) {
        push_var(buf, s.len() as u64);
        buf.extend_from_slice(s);
    }

    /// An update with one item under root "a" with the given info byte's content ref and
    /// the given content bytes, followed by an empty delete set.
    fn one_item(content_ref: u8, content: &[u8]) -> Vec<u8> {
        let mut u = vec![1, 1, 1, 0, content_ref, 1];
        push_str(&mut u, b"a");
        u.extend_from_slice(content);
        u.push(0);
        u
    }

    /// An awareness update with one entry holding `state`.
    fn awareness_with(state: &[u8]) -> Vec<u8> {
        let mut a = vec![1, 5, 1];
        push_str(&mut a, state);
        a
    }

    const BOMB: [u8; 4] = [255, 255, 255, 122];

    /// An awareness message with one entry: client 5, `clock`, `state`.
    fn awareness_frame(clock: u32, state: &str) -> Vec<u8> {
        let mut update = vec![1, 5];
        push_var(&mut update, clock.into());
        push_str(&mut update, state.as_bytes());
        let mut frame = vec![1];
        push_str(&mut frame, &update);
        frame
    }

    /// Found by tests/fuzz_inbound.rs: a state at clock u32::MAX - 1 was accepted, its removal
    /// (clock u32::MAX) broadcast when its connection left, and the echo that every y-websocket
    /// client sends of that removal refused, closing each of them with 1007.
    #[test]
    fn the_removal_of_any_accepted_awareness_state_is_accepted_back() {
        use crate::{Access, Room};
        let overflow = Err(InvalidMessage::ClockOverflow {
            what: "awareness clock",
        });
        assert_eq!(
            validate_frame(&awareness_frame(u32::MAX - 1, "{}")),
            overflow
        );
        assert_eq!(
            validate_frame(&awareness_frame(u32::MAX - 1, " null")),
            overflow
        );
        assert_eq!(validate_frame(&awareness_frame(u32::MAX, "null")), overflow);
        assert_eq!(
            validate_frame(&awareness_frame(u32::MAX - 1, "null")),
            Ok(())
        );

        // The highest accepted state, removed when its connection leaves: what the room
        // broadcasts, and so what clients echo, passes validation.
        let mut room = Room::new(Arc::new(|| 0u64));
        room.join(1, Access::ReadWrite);
        room.join(2, Access::ReadWrite);
        let state = awareness_frame(u32::MAX - 2, r#"{"user":"x"}"#);
        room.receive(1, crate::decode_frame(&state).unwrap());
        let removal = room.leave(1);
        assert_eq!(removal.send.len(), 1);
        assert_eq!(
            &removal.send[0].frame[..],
            awareness_frame(u32::MAX - 1, "null")
        );
        assert_eq!(validate_frame(&removal.send[0].frame), Ok(()));
        // The echo, received from another client, changes nothing and is not relayed again.
        let echo = room.receive(2, crate::decode_frame(&removal.send[0].frame).unwrap());
        assert!(echo.send.is_empty());
    }

    /// Found by tests/fuzz_inbound.rs: the 25-byte frame `[0, 2, 22, 1, 1, <client 1234567890>,
    /// <clock 2718281828>, 4, 1, 4, "text", 1, "H", 0]`, one character from a client the room
    /// already had, at a clock past 2^31, made yrs panic while integrating (block_store.rs:317,
    /// an `unwrap` on `None`): the room was poisoned and all its connections closed.
    #[test]
    fn clocks_past_2_31_are_rejected_before_yrs_panics_on_them() {
        use crate::{Access, Room, decode_frame};
        // One character of root text "t" from client 1 at `clock`, with an origin at
        // `origin` (the previous character) when there is one.
        let char_at = |clock: u64, origin: Option<u64>| {
            let mut u = vec![1, 1, 1];
            push_var(&mut u, clock);
            match origin {
                Some(origin) => {
                    u.extend([0x84, 1]);
                    push_var(&mut u, origin);
                }
                None => u.extend([4, 1, 1, b't']),
            }
            u.extend([1, b'x', 0]);
            update_frame(u)
        };
        let overflow = |what| Err(InvalidMessage::ClockOverflow { what });
        assert_eq!(validate_frame(&char_at(0, None)), Ok(()));
        assert_eq!(validate_frame(&char_at(1 << 31, None)), overflow("update"));
        assert_eq!(
            validate_frame(&char_at(2_718_281_828, None)),
            overflow("update")
        );
        assert_eq!(
            validate_frame(&char_at(1, Some(1 << 31))),
            overflow("origin")
        );
        // The last clock below the limit still works, and the room survives it.
        let mut room = Room::new(Arc::new(|| 0u64));
        room.join(1, Access::ReadWrite);
        let first = room.receive(1, decode_frame(&char_at(0, None)).unwrap());
        assert_eq!(first.fault, None);
        let last = char_at(u64::from(MAX_CLOCK) - 1, None);
        assert_eq!(validate_frame(&last), Ok(()));
        let effects = room.receive(1, decode_frame(&last).unwrap());
        assert_eq!(effects.fault, None);
        assert!(!room.is_poisoned());
        // What the limit prevents: yrs itself on the rejected frame's update, bypassing
        // validation.
        let doc = Doc::with_client_id(2);
        doc.transact_mut()
            .apply_update(Update::decode_v1(&char_at(0, None)[3..]).unwrap())
            .unwrap();
        let update = Update::decode_v1(&char_at(2_718_281_828, None)[3..]).unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _ = doc.transact_mut().apply_update(update);
        }));
        assert!(panicked.is_err(), "yrs 0.28.1 panics on a struct past 2^31");
    }

    /// Found by tests/fuzz_inbound.rs: a delete range of length zero for a client the room did
    /// not know stayed in a reloaded room as a pending delete set the live room had dropped.
    #[test]
    fn zero_length_delete_ranges_are_rejected() {
        assert_eq!(
            validate_update_v1(&[0, 1, 8, 1, 5, 0]),
            Err(InvalidMessage::EmptyBlock {
                what: "delete range"
            })
        );
        assert_eq!(validate_update_v1(&[0, 1, 8, 1, 5, 1]), Ok(()));
    }

    /// Which validator a table case feeds its bytes to.
    #[derive(Debug, Clone, Copy)]
    enum Input {
        Frame,
        Update,
        StateVector,
        Awareness,
    }

    /// What a table case must produce.
    #[derive(Debug)]
    enum Expect {
        /// Accepted.
        Valid,
        /// Accepted, and yrs decodes it too.
        ValidAndDecodes,
        /// Exactly this error.
        Error(InvalidMessage),
        /// Exactly this error, and it counts as unsupported (the server closes with 1003, not
        /// 1007).
        Unsupported(InvalidMessage),
        /// `CountTooLarge` for this field, whatever the count and remaining bytes.
        CountTooLarge(&'static str),
        /// Some error, whichever.
        AnyError,
    }

    /// One named case of a validator table.
    struct Case {
        name: String,
        input: Input,
        bytes: Vec<u8>,
        expect: Expect,
    }

    fn case(
        name: impl Into<String>,
        input: Input,
        bytes: impl Into<Vec<u8>>,
        expect: Expect,
    ) -> Case {
        Case {
            name: name.into(),
            input,
            bytes: bytes.into(),
            expect,
        }
    }

    /// Runs every case and reports every failure at once, so that one failing case does not
    /// hide the others.
    fn run_cases(cases: Vec<Case>) {
        let mut names = std::collections::HashSet::new();
        let mut failures = Vec::new();
        let total = cases.len();
        for Case {
            name,
            input,
            bytes,
            expect,
        } in cases
        {
            assert!(names.insert(name.clone()), "two cases are named {name:?}");
            let result = match input {
                Input::Frame => validate_frame(&bytes),
                Input::Update => validate_update_v1(&bytes),
                Input::StateVector => validate_state_vector_v1(&bytes),
                Input::Awareness => validate_awareness_update(&bytes),
            };
            let decodes = || match input {
                Input::Frame => crate::decode_frame(&bytes).is_ok(),
                Input::Update => Update::decode_v1(&bytes).is_ok(),
                Input::StateVector => StateVector::decode_v1(&bytes).is_ok(),
                Input::Awareness => AwarenessUpdate::decode_v1(&bytes).is_ok(),
            };
            let passed = match (&expect, &result) {
                (Expect::Valid, Ok(())) => true,
                (Expect::ValidAndDecodes, Ok(())) => decodes(),
                (Expect::Error(want), Err(got)) => want == got,
                (Expect::Unsupported(want), Err(got)) => want == got && got.is_unsupported(),
                (Expect::CountTooLarge(want), Err(InvalidMessage::CountTooLarge { what, .. })) => {
                    what == want
                }
                (Expect::AnyError, Err(_)) => true,
                _ => false,
            };
            if !passed {
                failures.push(format!(
                    "{name}: {input:?} {bytes:?} gave {result:?}, expected {expect:?}"
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {total} cases failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn malformed_frames_are_rejected_precisely() {
        use Expect::{AnyError, CountTooLarge, Error, Unsupported};
        use Input::{Awareness, Frame, Update};
        use InvalidMessage as E;
        let mut cases = vec![
            case("empty frame", Frame, [], Error(E::Empty)),
            case(
                "the 7-byte bomb from the field",
                Frame,
                [0, 2, 4, 255, 255, 255, 122],
                Error(E::CountTooLarge {
                    what: "update client count",
                    count: 257_949_695,
                    remaining: 0,
                }),
            ),
            case("an http request", Frame, *b"GET / HTTP/1.1\r\n", AnyError),
            case(
                "garbage",
                Frame,
                [0xff, 0xff],
                Error(E::Truncated {
                    what: "message type",
                }),
            ),
            case(
                "truncated varint",
                Frame,
                [0, 0x80],
                Error(E::Truncated {
                    what: "sync message type",
                }),
            ),
            case(
                "twelve-byte varint",
                Frame,
                [0xff; 12],
                Error(E::VarIntOverflow {
                    what: "message type",
                }),
            ),
            case(
                "unknown message type",
                Frame,
                [7, 0],
                Unsupported(E::UnknownMessageType(7)),
            ),
            case(
                "unknown sync message type",
                Frame,
                [0, 3, 0],
                Unsupported(E::UnknownSyncMessageType(3)),
            ),
            case(
                "a valid message followed by a bad one",
                Frame,
                [3, 9],
                Error(E::UnknownMessageType(9)),
            ),
            case(
                "message payload length past the end of the frame",
                Frame,
                [0, 2, 10, 0, 0],
                Error(E::LengthTooLarge {
                    what: "update",
                    len: 10,
                    remaining: 2,
                }),
            ),
            case(
                "trailing bytes inside an update",
                Frame,
                [0, 2, 3, 0, 0, 9],
                Error(E::TrailingBytes {
                    what: "update",
                    count: 1,
                }),
            ),
            case(
                "trailing bytes inside a state vector",
                Frame,
                [0, 0, 2, 0, 0],
                Error(E::TrailingBytes {
                    what: "state vector",
                    count: 1,
                }),
            ),
            case(
                "huge any content count",
                Update,
                one_item(8, &BOMB),
                CountTooLarge("any content count"),
            ),
            case(
                "huge json content count",
                Update,
                one_item(2, &BOMB),
                CountTooLarge("json content count"),
            ),
            case(
                "string length past the end",
                Update,
                one_item(4, &[50, b'x']),
                Error(E::LengthTooLarge {
                    what: "string content",
                    len: 50,
                    remaining: 2,
                }),
            ),
            case(
                "awareness state of invalid utf-8",
                Awareness,
                awareness_with(b"{\"a\":\"\xff\"}"),
                Error(E::InvalidUtf8 {
                    what: "awareness state",
                }),
            ),
            case(
                "unknown content ref",
                Update,
                one_item(11, &[]),
                Error(E::UnknownContentRef(11)),
            ),
            case(
                "info bit 0x10",
                Update,
                one_item(0x14, &[1, b'x']),
                Error(E::UnknownContentRef(20)),
            ),
            case(
                "type ref 7",
                Update,
                one_item(7, &[7]),
                Error(E::UnknownTypeRef(7)),
            ),
            case(
                "type ref 16",
                Update,
                one_item(7, &[16]),
                Error(E::UnknownTypeRef(16)),
            ),
            case(
                "unknown any tag",
                Update,
                one_item(8, &[1, 115]),
                Error(E::UnknownAnyTag(115)),
            ),
            case(
                "json content, refused on purpose",
                Update,
                one_item(2, &[1, 1, b'1']),
                Unsupported(E::UnsupportedContent {
                    what: "json content",
                }),
            ),
            case(
                "an embed that is not json",
                Update,
                one_item(5, &[3, b'{', b'x', b'}']),
                Error(E::InvalidJson { what: "embed" }),
            ),
            case(
                "a struct reaching past the clock limit",
                Update,
                [1, 2, 1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 1, 0],
                Error(E::ClockOverflow { what: "update" }),
            ),
            case(
                "a delete range past u32::MAX",
                Update,
                [0, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 2],
                Error(E::ClockOverflow {
                    what: "delete range",
                }),
            ),
            case(
                "an update clock varint over 32 bits",
                Update,
                [1, 1, 1, 0x80, 0x80, 0x80, 0x80, 0x10],
                Error(E::VarIntOverflow {
                    what: "update clock",
                }),
            ),
            case(
                "a zero-length gc block",
                Update,
                [1, 1, 1, 0, 0, 0, 0],
                Error(E::EmptyBlock { what: "gc block" }),
            ),
            case(
                "a zero-length skip block",
                Update,
                [1, 1, 1, 0, 10, 0, 0],
                Error(E::EmptyBlock { what: "skip block" }),
            ),
            case(
                "an auth message type varint overflow",
                Frame,
                [2, 0x80, 0x02],
                Error(E::VarIntOverflow {
                    what: "auth message type",
                }),
            ),
            case(
                "an auth reason of invalid utf-8",
                Frame,
                [2, 0, 2, 0xc3, 0x28],
                Error(E::InvalidUtf8 {
                    what: "auth reason",
                }),
            ),
            case("an empty state vector payload", Frame, [0, 1, 0], AnyError),
        ];

        // An awareness clock that cannot be incremented when the state is removed.
        let mut awareness = vec![1, 1];
        push_var(&mut awareness, u64::from(u32::MAX));
        push_str(&mut awareness, b"{}");
        cases.push(case(
            "an awareness clock of u32::MAX",
            Awareness,
            awareness,
            Error(E::ClockOverflow {
                what: "awareness clock",
            }),
        ));

        // An eleven-byte varint, one byte longer than any u64.
        let mut eleven = vec![0x80; 10];
        eleven.push(0x02);
        cases.push(case(
            "eleven-byte varint",
            Frame,
            eleven,
            Error(E::VarIntOverflow {
                what: "message type",
            }),
        ));

        // Huge counts everywhere.
        let prefixed = |prefix: &[u8], suffix: &[u8]| {
            let mut bytes = prefix.to_vec();
            bytes.extend(BOMB);
            bytes.extend_from_slice(suffix);
            bytes
        };
        for (what, input, bytes) in [
            ("state vector count", Frame, prefixed(&[0, 0, 4], &[])),
            ("awareness count", Frame, prefixed(&[1, 4], &[])),
            ("struct count", Update, prefixed(&[1], &[1, 0])),
            ("delete set client count", Update, prefixed(&[0], &[])),
            ("delete range count", Update, prefixed(&[0, 1, 1], &[])),
            (
                "any array length",
                Update,
                one_item(8, &prefixed(&[1, 117], &[])),
            ),
            (
                "any map size",
                Update,
                one_item(8, &prefixed(&[1, 118], &[])),
            ),
        ] {
            cases.push(case(
                format!("huge {what}"),
                input,
                bytes,
                CountTooLarge(what),
            ));
        }

        // Awareness states that are not JSON.
        for bad in [
            &b"{"[..],
            b"{'a':1}",
            b"[1,]",
            b"nul",
            b"",
            b"1 2",
            b"01",
            b"\"\\x\"",
            b"\"tab\there\"",
        ] {
            cases.push(case(
                format!("awareness state {:?}", String::from_utf8_lossy(bad)),
                Awareness,
                awareness_with(bad),
                Error(E::InvalidJson {
                    what: "awareness state",
                }),
            ));
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        cases.push(case(
            "an awareness state nested 200 deep",
            Awareness,
            awareness_with(deep.as_bytes()),
            Error(E::TooDeep {
                what: "awareness state",
            }),
        ));

        // Any values nested 200 deep.
        let mut nested = vec![1];
        for _ in 0..200 {
            nested.extend([117, 1]);
        }
        nested.push(126);
        cases.push(case(
            "any values nested 200 deep",
            Update,
            one_item(8, &nested),
            Error(E::TooDeep { what: "any value" }),
        ));

        // A format value yrs's serde_json parse refuses (above i64::MAX, below u64::MAX).
        let mut format = Vec::new();
        push_str(&mut format, b"bold");
        push_str(&mut format, b"9223372036854775808");
        cases.push(case(
            "a format value yrs refuses",
            Update,
            one_item(6, &format),
            Error(E::InvalidJson {
                what: "format value",
            }),
        ));

        // A client id one past 53 bits.
        let mut big_client = vec![1, 1];
        push_var(&mut big_client, 1 << 53);
        cases.push(case(
            "a client id over 53 bits",
            Update,
            big_client,
            Error(E::ClientIdTooLarge {
                what: "update client",
                client: 1 << 53,
            }),
        ));

        // An any integer one bit longer than lib0 allows.
        let mut long_int = vec![1, 125, 0xff];
        long_int.extend([0xff; 9]);
        long_int.push(0);
        cases.push(case(
            "an any integer over 64 bits",
            Update,
            one_item(8, &long_int),
            Error(E::VarIntOverflow {
                what: "any integer",
            }),
        ));

        run_cases(cases);
    }

    #[test]
    fn edge_cases_yrs_accepts_still_pass() {
        use Expect::{Error, Valid, ValidAndDecodes};
        use Input::{Awareness, Frame, StateVector, Update};
        let mut cases = vec![
            case("empty update", Frame, [0, 2, 2, 0, 0], Valid),
            case("empty state vector", Frame, [0, 0, 1, 0], Valid),
            case("empty awareness update", Frame, [1, 1, 0], Valid),
            // Non-canonical (zero-padded) varints that yrs reads to the same value.
            case(
                "zero-padded varints",
                Frame,
                [0x80, 0x00, 0x82, 0x80, 0x00, 2, 0, 0],
                Valid,
            ),
            // yrs drops an item of zero-length deleted or string content, and does not advance
            // the clock.
            case(
                "zero-length deleted content",
                Update,
                one_item(1, &[0]),
                Valid,
            ),
            case(
                "zero-length string content",
                Update,
                one_item(4, &[0]),
                Valid,
            ),
        ];

        let mut padded = vec![0x83];
        padded.extend([0x80; 9]);
        padded.push(0x00);
        cases.push(case("a ten-byte zero-padded varint", Frame, padded, Valid));

        // u64::MAX as a message type is well-formed, just unknown.
        let mut max = Vec::new();
        push_var(&mut max, u64::MAX);
        cases.push(case(
            "message type u64::MAX",
            Frame,
            max,
            Error(InvalidMessage::UnknownMessageType(u64::MAX)),
        ));

        // The largest lib0 signed varint.
        let mut int = vec![1, 125, 0xff];
        int.extend([0xff; 8]);
        int.push(0x01);
        cases.push(case(
            "the largest any integer",
            Update,
            one_item(8, &int),
            ValidAndDecodes,
        ));

        // Type refs Yjs knows (yrs reads XmlHook without a name).
        for t in [0, 1, 2, 4, 5, 6] {
            cases.push(case(
                format!("type ref {t}"),
                Update,
                one_item(7, &[t]),
                ValidAndDecodes,
            ));
        }
        // yrs-only type refs (SubDoc, Undefined) would make Yjs clients throw.
        for t in [9, 15] {
            cases.push(case(
                format!("yrs-only type ref {t}"),
                Update,
                one_item(7, &[t]),
                Error(InvalidMessage::UnsupportedContent {
                    what: "type ref unknown to yjs",
                }),
            ));
        }

        // ContentBinary: Yjs writes it for Uint8Array values, yrs never does.
        let mut binary = Vec::new();
        push_str(&mut binary, &[0, 1, 255]);
        cases.push(case(
            "binary content",
            Update,
            one_item(3, &binary),
            ValidAndDecodes,
        ));
        let mut xml = vec![3];
        push_str(&mut xml, b"p");
        cases.push(case(
            "an xml element with its name",
            Update,
            one_item(7, &xml),
            Valid,
        ));

        // A clock exactly reaching MAX_CLOCK is fine (one more overflows: see the malformed
        // cases).
        let mut u = vec![1, 1, 1];
        push_var(&mut u, u64::from(MAX_CLOCK) - 1);
        u.extend([0, 1, 0]);
        cases.push(case("a struct reaching MAX_CLOCK", Update, u, Valid));

        // A client id of exactly 53 bits.
        let mut sv = vec![1];
        push_var(&mut sv, (1 << 53) - 1);
        sv.push(5);
        cases.push(case("a 53-bit client id", StateVector, sv, ValidAndDecodes));

        // Awareness states that are any JSON value, with whitespace, escapes and numbers.
        for ok in [
            &b"null"[..],
            b" {} ",
            b"[]",
            b"\"\\u00e9\\ud83d\\ude00\\n\"",
            b"{\"a\":[1,-0,0.5e-3,1E+9,true,false,null,{}]}",
            b"18446744073709551615",
            // JSON.parse takes these; browsers emit the first for a string cut mid-emoji.
            b"{\"name\":\"ab\\ud83d\"}",
            b"1e400",
        ] {
            cases.push(case(
                format!("awareness state {:?}", String::from_utf8_lossy(ok)),
                Awareness,
                awareness_with(ok),
                Valid,
            ));
        }
        let deepest = format!("{}{}", "[".repeat(127), "]".repeat(127));
        cases.push(case(
            "an awareness state nested 127 deep",
            Awareness,
            awareness_with(deepest.as_bytes()),
            Valid,
        ));
        let mut deepest_any = vec![1];
        for _ in 0..MAX_ANY_DEPTH {
            deepest_any.extend([117, 1]);
        }
        deepest_any.push(126);
        cases.push(case(
            "any values nested MAX_ANY_DEPTH deep",
            Update,
            one_item(8, &deepest_any),
            Valid,
        ));

        run_cases(cases);
    }
    #[test]
    fn error_messages_are_short() {
        use InvalidMessage as E;
        let longest = "delete set client count";
        let errors = [
            E::Empty,
            E::Truncated { what: longest },
            E::CountTooLarge {
                what: longest,
                count: u64::MAX,
                remaining: usize::MAX,
            },
            E::LengthTooLarge {
                what: longest,
                len: u64::MAX,
                remaining: usize::MAX,
            },
            E::VarIntOverflow { what: longest },
            E::ClientIdTooLarge {
                what: longest,
                client: u64::MAX,
            },
            E::ClockOverflow { what: longest },
            E::EmptyBlock { what: longest },
            E::UnknownMessageType(u64::MAX),
            E::UnknownSyncMessageType(u64::MAX),
            E::UnknownContentRef(u8::MAX),
            E::UnknownTypeRef(u8::MAX),
            E::UnknownAnyTag(u8::MAX),
            E::UnsupportedContent { what: longest },
            E::InvalidUtf8 { what: longest },
            E::InvalidJson { what: longest },
            E::TooDeep { what: longest },
            E::TrailingBytes {
                what: longest,
                count: usize::MAX,
            },
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(msg.len() < 100, "{msg}");
            assert_eq!(msg, msg.to_lowercase(), "{msg}");
        }
    }
}
