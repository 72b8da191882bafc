//! The pure parts of webhook delivery: signing and verifying requests, debouncing edits into
//! `document.updated` events, the retry schedule and deterministic event ids. The server owns the
//! HTTP client, the clock and the randomness; everything here takes them as arguments (times in
//! milliseconds or seconds since the Unix epoch, random numbers as a `u64`).
//!
//! The server's `webhooks` module delivers them (`--webhook-url`).
//!
//! # Events
//!
//! Concord POSTs a JSON body per event: `document.updated` (debounced per document by
//! [`Debouncer`]), `document.deleted` and `document.restored`. Delivery is at least once, retried
//! on the schedule of [`Retry`], so receivers should deduplicate on the event id. Each request
//! carries two headers:
//!
//! - `Concord-Event-Id`: the event's id, from [`event_id`]. An event generated again (after a
//!   crash, say) for the same document and range of positions has the same id.
//! - `Concord-Signature`: `t=<unix seconds>,v1=<hex>`, from [`sign`].
//!
//! # Signature scheme
//!
//! `v1` is the lowercase hex HMAC-SHA256, keyed with the receiver's secret, of the signed
//! payload `"<t>.<body>"`: the timestamp exactly as written after `t=`, a full stop, then the
//! raw request body bytes (before any JSON parsing). Receivers should:
//!
//! 1. split the header on `,`, and each item on the first `=`; take `t` and every `v1` (there
//!    may be several while a secret is rotated; ignore unknown keys);
//! 2. compute the HMAC of `"<t>.<body>"` and compare it, in constant time, with each `v1`:
//!    accept if any matches;
//! 3. refuse timestamps more than a tolerance (five minutes, say) away from their clock, which
//!    bounds replays of captured requests.
//!
//! [`verify`] does this in Rust. In Node:
//!
//! ```text
//! const crypto = require('crypto');
//!
//! // `body` is the raw request body (a Buffer or string), not re-serialised JSON.
//! function verifyConcord(secret, header, body, toleranceS = 300) {
//!   let t = null;
//!   const sigs = [];
//!   for (const item of header.split(',')) {
//!     const i = item.indexOf('=');
//!     if (i < 0) continue;
//!     const key = item.slice(0, i).trim(), value = item.slice(i + 1).trim();
//!     if (key === 't') t = value;
//!     else if (key === 'v1') sigs.push(value);
//!   }
//!   if (t === null || !/^[0-9]+$/.test(t) || sigs.length === 0) return false;
//!   if (Math.abs(Date.now() / 1000 - Number(t)) > toleranceS) return false;
//!   const expected = crypto.createHmac('sha256', secret).update(`${t}.${body}`).digest();
//!   return sigs.some((sig) => {
//!     const given = Buffer.from(sig, 'hex');
//!     return given.length === expected.length && crypto.timingSafeEqual(given, expected);
//!   });
//! }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::{DocName, Position};

/// The name of the header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Concord-Signature";
/// The name of the header carrying the event id.
pub const EVENT_ID_HEADER: &str = "Concord-Event-Id";

/// The most `v1` entries [`verify`] checks in one header (each costs an HMAC).
const MAX_SIGNATURES: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// Why [`verify`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header is not `t=<digits>` plus one to eight `v1=<64 hex digits>` entries.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further from now than the tolerance (a replay, or a skewed clock).
    #[error("signature timestamp outside the tolerance")]
    Stale,
    /// No `v1` entry matches the body under the secret.
    #[error("signature does not match")]
    BadSignature,
}

/// A MAC keyed with `secret`.
fn mac(secret: &[u8]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length")
}

fn signed_mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = mac(secret);
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// Decodes exactly 32 bytes of hex (either case), or `None`.
fn unhex32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    match base16ct::mixed::decode(text, &mut out) {
        Ok(decoded) if decoded.len() == 32 => Some(out),
        _ => None,
    }
}

/// The `Concord-Signature` header value for `body` sent at `timestamp_s` (Unix seconds):
/// `t=<timestamp_s>,v1=<hex HMAC-SHA256(secret, "<timestamp_s>.<body>")>`.
pub fn sign(secret: &[u8], timestamp_s: u64, body: &[u8]) -> String {
    let t = timestamp_s.to_string();
    let tag = signed_mac(secret, &t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex(&tag))
}

/// Checks a `Concord-Signature` header against `body`: well formed, some `v1` entry matching
/// under `secret` (compared in constant time), and a timestamp at most `tolerance_s` seconds
/// from `now_s` either way. Items are separated by `,` and may be padded with spaces; unknown
/// keys are ignored; `t` must appear once.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<(), VerifyError> {
    let mut timestamp: Option<(&str, u64)> = None;
    let mut signatures: Vec<[u8; 32]> = Vec::new();
    for item in header.split(',') {
        let (key, value) = item.split_once('=').ok_or(VerifyError::Malformed)?;
        let (key, value) = (key.trim(), value.trim());
        match key {
            "t" => {
                // `u64::from_str` would take a leading `+`; only digits are a timestamp.
                if timestamp.is_some()
                    || value.is_empty()
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(VerifyError::Malformed);
                }
                let seconds = value.parse().map_err(|_| VerifyError::Malformed)?;
                timestamp = Some((value, seconds));
            }
            "v1" => {
                if signatures.len() == MAX_SIGNATURES {
                    return Err(VerifyError::Malformed);
                }
                signatures.push(unhex32(value).ok_or(VerifyError::Malformed)?);
            }
            _ => {}
        }
    }
    let (text, seconds) = timestamp.ok_or(VerifyError::Malformed)?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed);
    }
    let expected = signed_mac(secret, text, body);
    if !signatures
        .iter()
        .any(|sig| expected.clone().verify_slice(sig).is_ok())
    {
        return Err(VerifyError::BadSignature);
    }
    if now_s.abs_diff(seconds) > tolerance_s {
        return Err(VerifyError::Stale);
    }
    Ok(())
}

/// A deterministic event id: the first 16 bytes, in hex (32 characters), of the SHA-256 of the
/// fields, each string preceded by its length (8 bytes, big-endian) so that no two field lists
/// encode alike, and the positions as big-endian `seq` (8 bytes) and `index` (4 bytes).
pub fn event_id(kind: &str, doc: &str, first: Position, last: Position) -> String {
    let mut hasher = Sha256::new();
    for field in [kind, doc] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    for position in [first, last] {
        hasher.update(position.seq.to_be_bytes());
        hasher.update(position.index.to_be_bytes());
    }
    let digest = hasher.finalize();
    hex(digest.get(..16).unwrap_or(&digest))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A burst of edits to one document, due to be announced as `document.updated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burst {
    /// The document edited.
    pub doc: DocName,
    /// The smallest position recorded in the burst (the first, as positions grow).
    pub first: Position,
    /// The largest position recorded in the burst (the last).
    pub last: Position,
    /// When the burst's first edit was recorded (ms since the Unix epoch).
    pub first_edit_ms: u64,
    /// When its latest edit was recorded (ms since the Unix epoch, never before `first_edit_ms`).
    pub last_edit_ms: u64,
}

impl Burst {
    fn deadline(&self, quiet: u64, max_wait: u64) -> u64 {
        self.last_edit_ms
            .saturating_add(quiet)
            .min(self.first_edit_ms.saturating_add(max_wait))
    }
}

/// Groups edits per document into bursts: a burst is due `quiet` after its latest edit, or
/// `max_wait` after its first if edits keep coming. Holds one entry per document with edits not
/// yet announced.
#[derive(Debug, Clone)]
pub struct Debouncer {
    quiet: u64,
    max_wait: u64,
    pending: HashMap<DocName, Burst>,
}

impl Default for Debouncer {
    /// Two seconds of quiet, at most ten seconds after a burst's first edit.
    fn default() -> Self {
        Debouncer::new(Duration::from_secs(2), Duration::from_secs(10))
    }
}

impl Debouncer {
    /// A debouncer firing after `quiet` without edits, or `max_wait` after a burst's first edit.
    pub fn new(quiet: Duration, max_wait: Duration) -> Self {
        Debouncer {
            quiet: millis(quiet),
            max_wait: millis(max_wait),
            pending: HashMap::new(),
        }
    }

    /// Records an edit of `doc` reaching `position` at `now_ms`, starting a burst if none is
    /// pending. A clock set back does not move the burst's times backwards.
    pub fn edited(&mut self, doc: &DocName, position: Position, now_ms: u64) {
        match self.pending.get_mut(doc.as_str()) {
            Some(burst) => {
                burst.first = burst.first.min(position);
                burst.last = burst.last.max(position);
                burst.last_edit_ms = burst.last_edit_ms.max(now_ms);
            }
            None => {
                self.pending.insert(
                    doc.clone(),
                    Burst {
                        doc: doc.clone(),
                        first: position,
                        last: position,
                        first_edit_ms: now_ms,
                        last_edit_ms: now_ms,
                    },
                );
            }
        }
    }

    /// Removes and returns the bursts due at `now_ms`, earliest deadline first (then by name).
    pub fn due(&mut self, now_ms: u64) -> Vec<Burst> {
        let (quiet, max_wait) = (self.quiet, self.max_wait);
        let mut due: Vec<Burst> = Vec::new();
        self.pending.retain(|_, burst| {
            if burst.deadline(quiet, max_wait) <= now_ms {
                due.push(burst.clone());
                false
            } else {
                true
            }
        });
        due.sort_by(|a, b| {
            (a.deadline(quiet, max_wait), &a.doc).cmp(&(b.deadline(quiet, max_wait), &b.doc))
        });
        due
    }

    /// The earliest time (ms since the Unix epoch) a burst falls due, if any is pending.
    pub fn next_deadline(&self) -> Option<u64> {
        self.pending
            .values()
            .map(|burst| burst.deadline(self.quiet, self.max_wait))
            .min()
    }

    /// Whether `doc` has edits pending.
    pub fn has(&self, doc: &DocName) -> bool {
        self.pending.contains_key(doc.as_str())
    }

    /// How many documents have edits pending.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no document has edits pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// When to retry a failed delivery: exponential backoff with full jitter, giving up a bounded
/// time after the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The largest delay after the first failed attempt; it doubles per attempt.
    pub first: Duration,
    /// The cap of the largest delay.
    pub max_delay: Duration,
    /// No retry is scheduled once this long has passed since the first attempt.
    pub give_up_after: Duration,
}

impl Default for Retry {
    /// Starting at one second, at most five minutes apart, for a day.
    fn default() -> Self {
        Retry {
            first: Duration::from_secs(1),
            max_delay: Duration::from_secs(5 * 60),
            give_up_after: Duration::from_secs(24 * 3_600),
        }
    }
}

impl Retry {
    /// How long to wait before the next attempt, after attempt number `attempt` (counted from 0)
    /// failed at `now_ms`, the first having been made at `first_attempt_ms`; `None` to give up.
    /// The delay is drawn from `random` uniformly (to the millisecond, up to a negligible
    /// modulo bias) in `[0, min(max_delay, first * 2^attempt)]`.
    pub fn delay(
        &self,
        attempt: u32,
        first_attempt_ms: u64,
        now_ms: u64,
        random: u64,
    ) -> Option<Duration> {
        if now_ms.saturating_sub(first_attempt_ms) >= millis(self.give_up_after) {
            return None;
        }
        let grown = 1u64
            .checked_shl(attempt)
            .map_or(u64::MAX, |factor| millis(self.first).saturating_mul(factor));
        let cap = grown.min(millis(self.max_delay));
        let delay = match cap.checked_add(1) {
            Some(span) => random % span,
            None => random,
        };
        Some(Duration::from_millis(delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"type":"document.updated","doc":"notes"}"#;
    const T: u64 = 1_700_000_000;

    fn pos(seq: u64, index: u32) -> Position {
        Position { seq, index }
    }

    fn doc(name: &str) -> DocName {
        DocName::new(name).expect("valid name")
    }

    #[test]
    fn known_vectors() {
        // python3: hmac.new(b"whsec_test", b"1700000000." + BODY, hashlib.sha256).hexdigest()
        assert_eq!(
            sign(SECRET, T, BODY),
            "t=1700000000,v1=54bfe1c6ffd4ac4635a23ec2ece1e31730f7d0cb926debfd62b2886963692e5c"
        );
        // RFC 4231 test cases 2 and 6 (a key longer than the block is hashed first).
        let tag =
            |key: &[u8], data: &[u8]| hex(&mac(key).chain_update(data).finalize().into_bytes());
        assert_eq!(
            tag(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            tag(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            ),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn round_trip_within_tolerance() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(verify(SECRET, &header, BODY, T, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, T + 300, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, T - 300, 300), Ok(()));
        // Spaces around items, upper-case hex and unknown keys are fine.
        let spaced = header
            .replace(',', " , ")
            .to_uppercase()
            .replace("T=", "t=");
        let spaced = spaced.replace("V1=", "v1=") + ",v0=whatever";
        assert_eq!(verify(SECRET, &spaced, BODY, T, 300), Ok(()));
        // An empty body and an empty secret sign too.
        assert_eq!(verify(b"", &sign(b"", 0, b""), b"", 0, 0), Ok(()));
    }

    #[test]
    fn tampering_and_wrong_secrets_are_refused() {
        let header = sign(SECRET, T, BODY);
        let mut tampered = BODY.to_vec();
        tampered[2] ^= 1;
        assert_eq!(
            verify(SECRET, &header, &tampered, T, 300),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(b"whsec_other", &header, BODY, T, 300),
            Err(VerifyError::BadSignature)
        );
        // The timestamp is signed: moving it breaks the signature.
        let moved = header.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            verify(SECRET, &moved, BODY, T, 300),
            Err(VerifyError::BadSignature)
        );
        // A forged old request reports the forgery, not its age.
        assert_eq!(
            verify(b"whsec_other", &header, BODY, T + 10_000, 300),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(
            verify(SECRET, &header, BODY, T + 301, 300),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify(SECRET, &header, BODY, T - 301, 300),
            Err(VerifyError::Stale)
        );
        let far = sign(SECRET, u64::MAX, BODY);
        assert_eq!(verify(SECRET, &far, BODY, 0, 300), Err(VerifyError::Stale));
        assert_eq!(verify(SECRET, &far, BODY, u64::MAX, 0), Ok(()));
    }

    #[test]
    fn several_signatures_pass_if_any_matches() {
        let good = sign(SECRET, T, BODY);
        let old = sign(b"whsec_old", T, BODY);
        let old_v1 = old.split_once(",").expect("two items").1;
        let good_v1 = good.split_once(",").expect("two items").1;
        let rotated = format!("t={T},{old_v1},{good_v1}");
        assert_eq!(verify(SECRET, &rotated, BODY, T, 300), Ok(()));
        assert_eq!(verify(b"whsec_old", &rotated, BODY, T, 300), Ok(()));
        assert_eq!(
            verify(b"whsec_neither", &rotated, BODY, T, 300),
            Err(VerifyError::BadSignature)
        );
        // At most eight entries are checked.
        let many = format!("t={T}{}", format!(",{old_v1}").repeat(8));
        assert_eq!(
            verify(SECRET, &many, BODY, T, 300),
            Err(VerifyError::BadSignature)
        );
        let too_many = format!("{many},{good_v1}");
        assert_eq!(
            verify(SECRET, &too_many, BODY, T, 300),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = sign(SECRET, T, BODY);
        let v1 = good.split_once(',').expect("two items").1;
        let sig = v1.strip_prefix("v1=").expect("v1 entry");
        let cases = [
            String::new(),
            ",".into(),
            "=".into(),
            "garbage".into(),
            v1.to_string(),
            format!("{v1},{v1}"),
            format!("t=,{v1}"),
            format!("t=abc,{v1}"),
            format!("t=+{T},{v1}"),
            format!("t=-1,{v1}"),
            format!("t=1.5,{v1}"),
            format!("t=99999999999999999999999,{v1}"),
            format!("t={T},t={T},{v1}"),
            format!("t={T}"),
            format!("t={T},"),
            format!("t={T},v1="),
            format!("t={T},v1"),
            format!("t={T},v1={}", &sig[..63]),
            format!("t={T},v1={}0", sig),
            format!("t={T},v1={}", &sig[..62]),
            format!("t={T},v1={}zz", &sig[..62]),
            format!("t={T},v1={}é", &sig[..62]),
            format!("t={T};{v1}"),
            "t=1,v1=\u{0}".into(),
        ];
        for header in &cases {
            assert_eq!(
                verify(SECRET, header, BODY, T, 300),
                Err(VerifyError::Malformed),
                "{header:?}"
            );
        }
        // A non-ASCII character straddling a would-be digit pair does not panic.
        let odd = format!("t={T},v1={}é{}", &sig[..31], &sig[..31]);
        assert_eq!(
            verify(SECRET, &odd, BODY, T, 300),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let id = event_id("document.updated", "notes", pos(1, 0), pos(3, 2));
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(
            id,
            event_id("document.updated", "notes", pos(1, 0), pos(3, 2))
        );
        let others = [
            event_id("document.deleted", "notes", pos(1, 0), pos(3, 2)),
            event_id("document.updated", "notes2", pos(1, 0), pos(3, 2)),
            event_id("document.updated", "notes", pos(1, 1), pos(3, 2)),
            event_id("document.updated", "notes", pos(1, 0), pos(3, 3)),
            event_id("document.updated", "notes", pos(3, 2), pos(1, 0)),
            // Fields do not run into each other.
            event_id("document.updatednotes", "", pos(1, 0), pos(3, 2)),
        ];
        for other in others {
            assert_ne!(id, other);
        }
        // python3: hashlib.sha256(b"".join([len(f).to_bytes(8,"big") + f for f in
        //   (b"document.updated", b"notes")]) + (1).to_bytes(8,"big") + (0).to_bytes(4,"big")
        //   + (3).to_bytes(8,"big") + (2).to_bytes(4,"big")).hexdigest()[:32]
        assert_eq!(id, "c45b3b1c50b3ff5b252f91edd4642fee");
    }

    const QUIET: u64 = 2_000;
    const MAX_WAIT: u64 = 10_000;

    #[test]
    fn fires_after_quiet() {
        let mut debouncer = Debouncer::default();
        let notes = doc("notes");
        let t0 = 1_000_000;
        debouncer.edited(&notes, pos(5, 0), t0);
        debouncer.edited(&notes, pos(5, 1), t0 + 500);
        debouncer.edited(&notes, pos(6, 0), t0 + 1_500);
        assert_eq!(debouncer.next_deadline(), Some(t0 + 1_500 + QUIET));
        assert!(debouncer.due(t0 + 1_500 + QUIET - 1).is_empty());
        assert_eq!(debouncer.len(), 1);
        let fired = debouncer.due(t0 + 1_500 + QUIET);
        assert_eq!(
            fired,
            vec![Burst {
                doc: notes.clone(),
                first: pos(5, 0),
                last: pos(6, 0),
                first_edit_ms: t0,
                last_edit_ms: t0 + 1_500,
            }]
        );
        assert!(debouncer.is_empty());
        assert_eq!(debouncer.next_deadline(), None);
        assert!(debouncer.due(u64::MAX).is_empty());
        // The next edit starts a new burst.
        debouncer.edited(&notes, pos(7, 0), t0 + 60_000);
        let fired = debouncer.due(t0 + 60_000 + QUIET);
        assert_eq!((fired[0].first, fired[0].last), (pos(7, 0), pos(7, 0)));
    }

    #[test]
    fn fires_at_max_wait_during_continuous_edits() {
        let mut debouncer = Debouncer::default();
        let notes = doc("notes");
        let t0 = 1_000_000;
        let mut fired = Vec::new();
        // An edit every second for 25 seconds, polling just before each edit.
        for i in 0..25u64 {
            let now = t0 + i * 1_000;
            fired.extend(debouncer.due(now));
            debouncer.edited(&notes, pos(i + 1, 0), now);
        }
        let times: Vec<(u64, u64)> = fired
            .iter()
            .map(|b| (b.first_edit_ms - t0, b.last_edit_ms - t0))
            .collect();
        // The first burst is cut at 10 s (polled before that second's edit), the second, started
        // by the edit at 10 s, at 20 s.
        assert_eq!(fired.len(), 2, "{times:?}");
        assert_eq!(fired[0].first, pos(1, 0));
        assert_eq!(fired[0].first_edit_ms, t0);
        assert_eq!(fired[0].last_edit_ms, t0 + 9_000);
        assert_eq!(fired[0].last, pos(10, 0));
        assert_eq!(fired[1].first, pos(11, 0));
        assert_eq!(fired[1].first_edit_ms, t0 + 10_000);
        assert_eq!(fired[1].last, pos(20, 0));
        // The burst pending now started at 20 s and is due at 30 s at the latest.
        assert_eq!(debouncer.next_deadline(), Some(t0 + 24_000 + QUIET));
        assert_eq!(debouncer.due(t0 + 24_000 + QUIET)[0].first, pos(21, 0));
    }

    #[test]
    fn max_wait_bounds_the_deadline() {
        let mut debouncer = Debouncer::default();
        let notes = doc("notes");
        debouncer.edited(&notes, pos(1, 0), 0);
        debouncer.edited(&notes, pos(2, 0), 9_500);
        assert_eq!(debouncer.next_deadline(), Some(MAX_WAIT));
        assert!(debouncer.due(MAX_WAIT - 1).is_empty());
        assert_eq!(debouncer.due(MAX_WAIT).len(), 1);
    }

    #[test]
    fn documents_are_independent() {
        let mut debouncer = Debouncer::default();
        let (a, b) = (doc("a"), doc("b"));
        debouncer.edited(&a, pos(1, 0), 0);
        debouncer.edited(&b, pos(7, 3), 1_000);
        debouncer.edited(&a, pos(2, 0), 1_500);
        assert_eq!(debouncer.len(), 2);
        assert_eq!(debouncer.next_deadline(), Some(1_000 + QUIET));
        let first = debouncer.due(3_000);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].doc, b);
        assert_eq!((first[0].first, first[0].last), (pos(7, 3), pos(7, 3)));
        assert_eq!(debouncer.next_deadline(), Some(1_500 + QUIET));
        let second = debouncer.due(3_500);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].doc, a);
        assert_eq!((second[0].first, second[0].last), (pos(1, 0), pos(2, 0)));
        // Several due at once come earliest deadline first.
        debouncer.edited(&b, pos(8, 0), 10_000);
        debouncer.edited(&a, pos(3, 0), 10_100);
        let both: Vec<DocName> = debouncer.due(20_000).into_iter().map(|b| b.doc).collect();
        assert_eq!(both, vec![b, a]);
    }

    #[test]
    fn clock_set_back_and_extreme_times_do_not_panic() {
        let mut debouncer = Debouncer::new(Duration::MAX, Duration::MAX);
        let notes = doc("notes");
        debouncer.edited(&notes, pos(2, 0), u64::MAX - 1);
        debouncer.edited(&notes, pos(1, 0), 5);
        assert_eq!(debouncer.next_deadline(), Some(u64::MAX));
        let fired = debouncer.due(u64::MAX);
        assert_eq!(fired[0].last_edit_ms, u64::MAX - 1);
        assert_eq!((fired[0].first, fired[0].last), (pos(1, 0), pos(2, 0)));
    }

    #[test]
    fn retry_delays_grow_then_cap() {
        let retry = Retry::default();
        // The range is exactly [0, cap]: `random = cap` draws the cap, `cap + 1` wraps to 0.
        let cap = |attempt: u32, expected_ms: u64| {
            assert_eq!(
                retry.delay(attempt, 0, 0, expected_ms),
                Some(Duration::from_millis(expected_ms)),
                "attempt {attempt}"
            );
            assert_eq!(
                retry.delay(attempt, 0, 0, expected_ms + 1),
                Some(Duration::ZERO),
                "attempt {attempt}"
            );
        };
        cap(0, 1_000);
        cap(1, 2_000);
        cap(2, 4_000);
        cap(8, 256_000);
        cap(9, 300_000);
        cap(30, 300_000);
        assert_eq!(retry.delay(0, 0, 0, 1_002), Some(Duration::from_millis(1)));
    }

    #[test]
    fn retry_jitter_stays_in_bounds() {
        let retry = Retry::default();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut seen_low = false;
        let mut seen_high = false;
        for attempt in 0..20 {
            let cap = (1_000u64 << attempt).min(300_000);
            for _ in 0..200 {
                // xorshift64
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let delay = millis(retry.delay(attempt, 0, 1, state).expect("retrying"));
                assert!(delay <= cap, "attempt {attempt}: {delay} > {cap}");
                seen_low |= attempt == 19 && delay < cap / 4;
                seen_high |= attempt == 19 && delay > cap * 3 / 4;
            }
        }
        assert!(seen_low && seen_high, "jitter spreads over the range");
    }

    #[test]
    fn retry_gives_up_after_the_bound() {
        let retry = Retry::default();
        let day = 24 * 3_600_000;
        let start = 1_700_000_000_000;
        assert!(retry.delay(50, start, start + day - 1, 7).is_some());
        assert_eq!(retry.delay(50, start, start + day, 7), None);
        assert_eq!(retry.delay(0, start, u64::MAX, 7), None);
        // A clock set back before the first attempt keeps retrying.
        assert!(retry.delay(3, start, 0, 7).is_some());
    }

    #[test]
    fn huge_attempts_and_durations_do_not_overflow() {
        let retry = Retry::default();
        for attempt in [63, 64, 65, 1_000, u32::MAX] {
            let delay = retry.delay(attempt, 0, 0, u64::MAX - 3).expect("retrying");
            assert!(delay <= retry.max_delay);
        }
        let unbounded = Retry {
            first: Duration::MAX,
            max_delay: Duration::MAX,
            give_up_after: Duration::MAX,
        };
        assert_eq!(
            unbounded.delay(1_000, 0, u64::MAX - 1, 12_345),
            Some(Duration::from_millis(12_345))
        );
        let zero = Retry {
            first: Duration::ZERO,
            max_delay: Duration::ZERO,
            give_up_after: Duration::from_secs(1),
        };
        assert_eq!(zero.delay(1_000, 0, 0, u64::MAX), Some(Duration::ZERO));
    }
}
