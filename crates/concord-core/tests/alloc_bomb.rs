//! Allocation-bomb regression test: proves yrs really pre-allocates for hostile counts and that
//! `validate_frame` rejects every such frame without allocating.
//!
//! This binary installs a counting global allocator, so it holds a single test that takes its
//! measurements one after another: tests in one binary run on parallel threads and would
//! pollute the process-wide counters.

// The counting allocator comes from the `peak_alloc` dev-dependency (it wraps `System` and
// tracks current and peak bytes in atomics) instead of being written here: a `GlobalAlloc` impl
// is necessarily `unsafe`, and the workspace's `unsafe_code = "forbid"` cannot be lifted by an
// inner `#![allow(unsafe_code)]` (forbid rejects the override with E0453).
use concord_core::validate::{InvalidMessage, validate_frame};
use peak_alloc::PeakAlloc;
use yrs::encoding::read::Error as ReadError;
use yrs::sync::{Awareness, AwarenessUpdate, DefaultProtocol, Protocol};
use yrs::updates::decoder::Decode;
use yrs::{Doc, StateVector, Update};

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

const MB: usize = 1 << 20;

/// Runs `f` and returns its result with the peak number of bytes it had allocated at once
/// beyond what was live when it started.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let out = f();
    (out, ALLOCATOR.peak_usage().saturating_sub(base))
}

/// yrs asked for a huge reservation: either it got it (the peak shows it), or the system
/// refused and `try_reserve` surfaced `NotEnoughMemory` (a machine without overcommit room),
/// which `peak_alloc` cannot see because it only counts successful allocations.
fn reserved_hugely(peak: usize, err: Option<&ReadError>) -> bool {
    peak > 100 * MB || matches!(err, Some(ReadError::NotEnoughMemory(_)))
}

/// The count that reaches yrs: 0x7f | 0x7f << 7 | 0x7f << 14 | 122 << 21 = 257_949_695.
const BOMB: [u8; 4] = [255, 255, 255, 122];
/// The frame seen in the field: sync / update / 4-byte payload `BOMB`.
const FRAME: [u8; 7] = [0, 2, 4, 255, 255, 255, 122];

fn var(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Wraps an update payload into a sync/update message.
fn update_frame(update: &[u8]) -> Vec<u8> {
    let mut f = vec![0, 2];
    var(&mut f, update.len() as u64);
    f.extend_from_slice(update);
    f
}

/// One item under root "a" whose content (ref `content_ref`) starts with `content`.
fn item(content_ref: u8, content: &[u8]) -> Vec<u8> {
    let mut u = vec![1, 1, 1, 0, content_ref, 1, 1, b'a'];
    u.extend_from_slice(content);
    u
}

fn with_bomb(prefix: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend(BOMB);
    v
}

/// Every count or length field a frame can carry, set to the bomb value.
fn bomb_frames() -> Vec<(&'static str, Vec<u8>)> {
    // Awareness message whose single entry (client 1, clock 0) declares a huge state length.
    let mut awareness_entry = vec![1, 7, 1, 1, 0];
    awareness_entry.extend(BOMB);
    vec![
        ("update client count (the field frame)", FRAME.to_vec()),
        ("sync step 2 client count", with_bomb(&[0, 1, 4])),
        ("state vector count", with_bomb(&[0, 0, 4])),
        ("awareness count", with_bomb(&[1, 4])),
        ("awareness state length", awareness_entry),
        ("message payload length", with_bomb(&[0, 2])),
        ("auth reason length", with_bomb(&[2, 0])),
        ("struct count", update_frame(&with_bomb(&[1]))),
        ("delete set client count", update_frame(&with_bomb(&[0]))),
        ("delete range count", update_frame(&with_bomb(&[0, 1, 1]))),
        ("any content count", update_frame(&item(8, &BOMB))),
        (
            "any array length",
            update_frame(&item(8, &with_bomb(&[1, 117]))),
        ),
        (
            "any map size",
            update_frame(&item(8, &with_bomb(&[1, 118]))),
        ),
        (
            "any string length",
            update_frame(&item(8, &with_bomb(&[1, 119]))),
        ),
        (
            "any buffer length",
            update_frame(&item(8, &with_bomb(&[1, 116]))),
        ),
        ("json content count", update_frame(&item(2, &BOMB))),
        ("string content length", update_frame(&item(4, &BOMB))),
        ("binary content length", update_frame(&item(3, &BOMB))),
        (
            "parent name length",
            update_frame(&with_bomb(&[1, 1, 1, 0, 4, 1])),
        ),
        ("subdoc guid length", update_frame(&item(9, &BOMB))),
        (
            "subdoc options map",
            update_frame(&item(9, &with_bomb(&[1, b'g', 118]))),
        ),
    ]
}

#[test]
fn yrs_allocates_for_bombs_and_the_validator_does_not() {
    // 1. Control: the measurement can fail. yrs 0.28.1 trusts the count and reserves for it
    //    up front (`HashMap::try_reserve(257_949_695)` in `Update::decode`). Measured on a
    //    24 GB Linux box with overcommit: ~22 GB reserved for the update (hashbrown writes its
    //    ~512 MiB of control bytes), ~9.1 GB for the state vector and ~17.7 GB for the
    //    awareness update. The latter two frames are even accepted by `DefaultProtocol::handle`:
    //    `MessageReader` treats the EndOfBuffer of a truncated inner payload as the end of the
    //    frame and returns Ok.
    let (result, peak) = measure(|| Update::decode_v1(&BOMB).err());
    eprintln!("yrs Update::decode_v1(bomb): peak {peak} bytes, {result:?}");
    assert!(result.is_some(), "yrs must reject the bomb eventually");
    assert!(reserved_hugely(peak, result.as_ref()), "peak {peak}");

    let mut awareness = Awareness::new(Doc::new());
    let (result, peak) = measure(|| DefaultProtocol.handle(&mut awareness, &FRAME).err());
    eprintln!("yrs DefaultProtocol::handle(frame): peak {peak} bytes, {result:?}");
    let inner = match &result {
        Some(yrs::sync::Error::DecodingError(e)) => Some(e),
        _ => None,
    };
    assert!(
        result.is_some(),
        "yrs must reject the bomb frame eventually"
    );
    assert!(reserved_hugely(peak, inner), "peak {peak}");

    let (result, peak) = measure(|| StateVector::decode_v1(&BOMB).err());
    eprintln!("yrs StateVector::decode_v1(bomb): peak {peak} bytes, {result:?}");
    assert!(reserved_hugely(peak, result.as_ref()), "peak {peak}");

    let (result, peak) = measure(|| AwarenessUpdate::decode_v1(&BOMB).err());
    eprintln!("yrs AwarenessUpdate::decode_v1(bomb): peak {peak} bytes, {result:?}");
    assert!(reserved_hugely(peak, result.as_ref()), "peak {peak}");

    // 2. The validator rejects the bomb and every relative without allocating anything
    //    proportional to the declared count.
    for (what, frame) in bomb_frames() {
        let (result, peak) = measure(|| validate_frame(&frame));
        let err: InvalidMessage = match result {
            Err(e) => e,
            Ok(()) => panic!("{what}: bomb {frame:?} accepted"),
        };
        eprintln!("validate_frame({what}): peak {peak} bytes, {err}");
        assert!(peak < MB, "{what}: validator peak {peak} bytes");
    }
}
