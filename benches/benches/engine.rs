//! The engine's per-update cost on the automerge-paper trace (259,778 keystroke updates):
//! validation alone; validation + decode + apply + relay encoding through a `Room` with a
//! second connection to relay to (the server's inbound path); and, in the same run, bare yrs
//! decoding and applying the same frames to a `Doc`, the floor no server built on yrs can go
//! below. Target: the inbound path at >= 50% of the floor's rate. Per-update work must not grow
//! with the document.
//!
//! After criterion's groups, the two are also timed in alternation (five passes each) and the
//! ratio of the medians printed, so the comparison does not depend on criterion's output.

use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use concord_benches::{TraceUpdates, load_trace};
use concord_core::{Access, Room, SystemClock, decode_frame, validate::validate_frame};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Transact, Update};

/// The server's inbound path for every frame of the trace; returns the room.
fn inbound(trace: &TraceUpdates) -> Room {
    let mut room = Room::new(Arc::new(SystemClock));
    room.join(1, Access::ReadWrite);
    room.join(2, Access::ReadWrite);
    let mut relayed = 0usize;
    for frame in &trace.frames {
        let effects = room.receive(1, decode_frame(frame).expect("valid"));
        relayed += effects.send.len();
    }
    assert_eq!(relayed, trace.frames.len());
    room
}

/// Bare yrs: decode each frame's message and update and apply it, one transaction each.
fn bare_yrs(trace: &TraceUpdates) -> Doc {
    let doc = Doc::new();
    for frame in &trace.frames {
        let Ok(Message::Sync(SyncMessage::Update(update))) = Message::decode_v1(frame) else {
            panic!("trace frames are sync updates");
        };
        let update = Update::decode_v1(&update).expect("valid update");
        doc.transact_mut().apply_update(update).expect("applies");
    }
    doc
}

fn engine(c: &mut Criterion) {
    let trace = load_trace("automerge-paper.json.gz");
    let count = trace.frames.len() as u64;
    let mut group = c.benchmark_group("automerge-paper");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(count));

    group.bench_function("validate_frame", |b| {
        b.iter(|| {
            for frame in &trace.frames {
                validate_frame(frame).expect("valid");
            }
        })
    });

    group.bench_function("receive (validate, decode, apply, relay)", |b| {
        b.iter(|| inbound(&trace))
    });
    group.bench_function("bare yrs (decode, apply): the floor", |b| {
        b.iter(|| bare_yrs(&trace))
    });
    group.finish();

    // The ratio, from passes timed in alternation so both see the same machine state.
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let start = Instant::now();
        drop(inbound(&trace));
        ours.push(start.elapsed());
        let start = Instant::now();
        drop(bare_yrs(&trace));
        floor.push(start.elapsed());
    }
    ours.sort();
    floor.sort();
    let rate = |d: Duration| count as f64 / d.as_secs_f64();
    let (ours, floor) = (rate(ours[2]), rate(floor[2]));
    println!(
        "inbound path {:.0} k updates/s, bare yrs {:.0} k updates/s: {:.0}% of the floor \
         (target >= 50%: {})",
        ours / 1e3,
        floor / 1e3,
        100.0 * ours / floor,
        if ours >= 0.5 * floor {
            "met"
        } else {
            "NOT met"
        }
    );

    // Check once that both really produce the trace's end content.
    let room = inbound(&trace);
    let text = room.doc().get_or_insert_text("text");
    assert_eq!(text.get_string(&room.doc().transact()), trace.end_content);
    let doc = bare_yrs(&trace);
    let text = doc.get_or_insert_text("text");
    assert_eq!(text.get_string(&doc.transact()), trace.end_content);
}

criterion_group!(benches, engine);
criterion_main!(benches);
