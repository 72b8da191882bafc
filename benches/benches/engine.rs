//! The engine's per-update cost on the automerge-paper trace (259,778 keystroke updates):
//! validation alone, and validation + decode + apply + relay encoding through a `Room` with a
//! second connection to relay to. Per-update work must not grow with the document.

use std::sync::Arc;
use std::time::Duration;

use concord_benches::load_trace;
use concord_core::{Access, Room, SystemClock, decode_frame, validate::validate_frame};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use yrs::{GetString, Transact};

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
        b.iter(|| {
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
        })
    });
    group.finish();

    // Check once that the room really converged on the trace's end content.
    let mut room = Room::new(Arc::new(SystemClock));
    room.join(1, Access::ReadWrite);
    for frame in &trace.frames {
        room.receive(1, decode_frame(frame).expect("valid"));
    }
    let text = room.doc().get_or_insert_text("text");
    assert_eq!(text.get_string(&room.doc().transact()), trace.end_content);
}

criterion_group!(benches, engine);
criterion_main!(benches);
