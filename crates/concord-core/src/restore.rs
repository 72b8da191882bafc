//! Restoring a version: the one update that turns a document's current state into an earlier
//! one, so a restore is stored, relayed and acknowledged like any edit.
//!
//! A CRDT cannot rewind: what was deleted stays deleted. So [`restore_update`] edits a copy of
//! the current state, under a client id of its own, until every root equals the version's, and
//! returns that edit. Per sequence (text, array, XML children) a Myers diff finds what changed
//! (for a text: of its lines, then of the characters of the changed lines), and only that is
//! rewritten, so a restore that undoes a typo touches that typo, and content clients are
//! editing elsewhere keeps its identity (their cursors stay where they were):
//!
//! - text: runs of characters and embeds with their formatting (attributes no longer present
//!   are cleared, so the formatting ends equal too);
//! - arrays: elements compared deeply; a changed map, array, text or XML element in place is
//!   restored in place, other elements are replaced by deep copies;
//! - maps: keys set to the version's value (nested shared types restored in place when their
//!   kind is unchanged) or removed;
//! - XML fragments (what Tiptap and ProseMirror keep): children compared deeply, elements with
//!   the same tag restored in place (attributes and children), others copied with their
//!   attributes' values as they are (numbers stay numbers).
//!
//! Roots the version lacks are emptied; a root's kind comes from its content (see
//! [`crate::json::root_kind`]). Subdocuments are compared by guid and not copied into.

use std::collections::BTreeSet;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use yrs::types::text::YChange;
use yrs::types::{AsPrelim, Attrs, ToJson};
use yrs::{
    Any, Array, ArrayRef, Doc, Map, MapRef, OffsetKind, Options, Out, ReadTxn, StateVector, Text,
    Transact, TransactionMut, Update, WriteTxn, Xml, XmlElementPrelim, XmlElementRef, XmlFragment,
    XmlTextPrelim, XmlTextRef,
};

use crate::json::{RootKind, root_kind};

/// Why a restore update could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The current state or the version does not apply to an empty document.
    #[error("{which} does not apply: {reason}")]
    Unreadable {
        /// `"the current state"` or `"the version"`.
        which: &'static str,
        /// What yrs said.
        reason: String,
    },
    /// yrs failed (panicked) while editing the copy.
    #[error("the restore could not be computed (yrs failed on this document)")]
    Failed,
}

/// The update that makes a document whose state is `current` equal `version` in every root,
/// or `None` when it already does. Both are whole-document states. Pure computation: apply the
/// result like any client's update.
pub fn restore_update(current: Update, version: Update) -> Result<Option<Vec<u8>>, RestoreError> {
    let target = Doc::new();
    target
        .transact_mut()
        .apply_update(version)
        .map_err(|e| RestoreError::Unreadable {
            which: "the version",
            reason: e.to_string(),
        })?;
    let work = Doc::with_options(Options {
        // JavaScript's string offsets, so lengths are counted the way Yjs clients count them.
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    });
    work.transact_mut()
        .apply_update(current)
        .map_err(|e| RestoreError::Unreadable {
            which: "the current state",
            reason: e.to_string(),
        })?;
    // The copy edits under its own client id; a random one that some client already used would
    // make the edit collide with that client's history.
    let work = if work
        .transact()
        .state_vector()
        .contains_client(&work.client_id())
    {
        let update = work
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let fresh = Doc::with_options(Options {
            offset_kind: OffsetKind::Utf16,
            ..Options::default()
        });
        let decoded = yrs::updates::decoder::Decode::decode_v1(&update).map_err(
            |e: yrs::encoding::read::Error| RestoreError::Unreadable {
                which: "the current state",
                reason: e.to_string(),
            },
        )?;
        fresh
            .transact_mut()
            .apply_update(decoded)
            .map_err(|e| RestoreError::Unreadable {
                which: "the current state",
                reason: e.to_string(),
            })?;
        fresh
    } else {
        work
    };
    catch_unwind(AssertUnwindSafe(|| rewrite(&work, &target))).map_err(|_| RestoreError::Failed)
}

/// Edits `work` until its roots equal `target`'s and returns the edit.
fn rewrite(work: &Doc, target: &Doc) -> Option<Vec<u8>> {
    let mut tt = target.transact_mut();
    let mut wt = work.transact_mut();
    let names: BTreeSet<String> = tt
        .root_refs()
        .map(|(name, _)| name.to_owned())
        .chain(wt.root_refs().map(|(name, _)| name.to_owned()))
        .collect();
    for name in names {
        let kind = root_kind(&tt, &name).or_else(|| root_kind(&wt, &name));
        match kind {
            Some(RootKind::Text) => {
                let t = tt.get_or_insert_text(name.as_str());
                let w = wt.get_or_insert_text(name.as_str());
                restore_text(&mut wt, &w, &tt, &t);
            }
            Some(RootKind::Array) => {
                let t = tt.get_or_insert_array(name.as_str());
                let w = wt.get_or_insert_array(name.as_str());
                restore_array(&mut wt, &w, &tt, &t);
            }
            Some(RootKind::Map) => {
                let t = tt.get_or_insert_map(name.as_str());
                let w = wt.get_or_insert_map(name.as_str());
                restore_map(&mut wt, &w, &tt, &t);
            }
            Some(RootKind::Xml) => {
                let t = tt.get_or_insert_xml_fragment(name.as_str());
                let w = wt.get_or_insert_xml_fragment(name.as_str());
                restore_children(&mut wt, &w, &tt, &t);
            }
            // Empty in both.
            None => {}
        }
    }
    // What this transaction inserted and deleted, nothing else.
    let changed = !wt.delete_set().is_empty() || wt.before_state() != wt.after_state();
    changed.then(|| wt.encode_update_v1())
}

/// One unit of a text: a character or an embed, with the formatting of its run.
#[derive(Clone)]
struct Unit {
    piece: Piece,
    attrs: Option<Arc<Attrs>>,
    /// The unit's content and formatting, exactly: equal keys, equal units.
    key: String,
}

#[derive(Clone)]
enum Piece {
    Char(char),
    Embed(Any),
}

impl Piece {
    /// Length in UTF-16 code units, the copy's offsets.
    fn len(&self) -> u32 {
        match self {
            Piece::Char(c) => c.len_utf16() as u32,
            Piece::Embed(_) => 1,
        }
    }
}

/// The units of a text, formatting shared per run.
fn units<T: ReadTxn>(text: &impl Text, txn: &T) -> Vec<Unit> {
    let mut units = Vec::new();
    for chunk in text.diff(txn, YChange::identity) {
        let attrs = chunk
            .attributes
            .filter(|attrs| !attrs.is_empty())
            .map(|attrs| Arc::new(*attrs));
        let formatting = attrs.as_deref().map(attrs_key).unwrap_or_default();
        match chunk.insert {
            Out::Any(Any::String(s)) => units.extend(s.chars().map(|c| Unit {
                piece: Piece::Char(c),
                attrs: attrs.clone(),
                key: format!("c{c}{formatting}"),
            })),
            // Embedded shared types (which no editor we know of writes) are kept as their JSON.
            other => {
                let value = match other {
                    Out::Any(any) => any,
                    shared => shared.to_json(txn),
                };
                units.push(Unit {
                    key: format!("e{value}{formatting}"),
                    piece: Piece::Embed(value),
                    attrs,
                })
            }
        }
    }
    units
}

/// Formatting attributes as a canonical string (sorted keys, JSON values).
fn attrs_key(attrs: &Attrs) -> String {
    let mut pairs: Vec<(&str, String)> = attrs
        .iter()
        .map(|(k, v)| (k.as_ref(), v.to_string()))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("\u{1}{k}\u{2}{v}"))
        .collect()
}

/// Most units two changed blocks of lines may hold together for a character diff; larger
/// blocks are replaced whole (Myers' diff is quadratic in the worst case).
const CHAR_DIFF_UNITS: usize = 2048;

/// Fewest unchanged characters kept between two changed spans of a line; shorter runs are
/// rewritten with their neighbours (a character diff of much-changed prose matches stray
/// letters, and keeping each would cut the restore into thousands of tiny edits).
const MIN_KEPT_CHARS: usize = 8;

/// Joins consecutive changes separated by fewer than `min_kept` unchanged elements. The run
/// between two changes is unchanged, so it has the same length on both sides.
fn coalesce(
    spans: impl IntoIterator<Item = (Range<usize>, Range<usize>)>,
    min_kept: usize,
) -> Vec<(Range<usize>, Range<usize>)> {
    let mut joined: Vec<(Range<usize>, Range<usize>)> = Vec::new();
    for (old, new) in spans {
        if let Some((last_old, last_new)) = joined.last_mut()
            && old.start - last_old.end < min_kept
        {
            last_old.end = old.end;
            last_new.end = new.end;
            continue;
        }
        joined.push((old, new));
    }
    joined
}

/// The spans of `a` to replace by spans of `b` to turn `a` into `b` (Myers' diff of the keys),
/// in order, never overlapping.
fn changes(a: &[&str], b: &[&str]) -> Vec<(Range<usize>, Range<usize>)> {
    use similar::DiffOp;
    // Positions come from the ops' lengths alone: similar 2.7 can report an insertion that
    // follows an equal run at the old index from before that run.
    let (mut old, mut new) = (0, 0);
    let mut spans = Vec::new();
    for op in similar::capture_diff_slices(similar::Algorithm::Myers, a, b) {
        let (removed, added) = match op {
            DiffOp::Equal { len, .. } => {
                old += len;
                new += len;
                continue;
            }
            DiffOp::Delete { old_len, .. } => (old_len, 0),
            DiffOp::Insert { new_len, .. } => (0, new_len),
            DiffOp::Replace {
                old_len, new_len, ..
            } => (old_len, new_len),
        };
        spans.push((old..old + removed, new..new + added));
        old += removed;
        new += added;
    }
    debug_assert_eq!((old, new), (a.len(), b.len()));
    spans
}

/// The spans of units to replace to turn `w` into `t`: a diff of their lines, then of the
/// characters of each changed block of lines.
fn text_changes(w: &[Unit], t: &[Unit]) -> Vec<(Range<usize>, Range<usize>)> {
    let lines = |units: &[Unit]| -> (Vec<String>, Vec<usize>) {
        // Line keys, and where each line starts (a line ends after its newline).
        let (mut keys, mut starts, mut key) = (Vec::new(), vec![0], String::new());
        for (i, unit) in units.iter().enumerate() {
            key.push_str(&unit.key);
            if matches!(unit.piece, Piece::Char('\n')) {
                keys.push(std::mem::take(&mut key));
                starts.push(i + 1);
            }
        }
        if starts.last() != Some(&units.len()) {
            keys.push(key);
            starts.push(units.len());
        }
        (keys, starts)
    };
    let ((wl, ws), (tl, ts)) = (lines(w), lines(t));
    let (wk, tk): (Vec<&str>, Vec<&str>) = (
        wl.iter().map(String::as_str).collect(),
        tl.iter().map(String::as_str).collect(),
    );
    let mut spans = Vec::new();
    for (old, new) in changes(&wk, &tk) {
        let old = ws[old.start]..ws[old.end];
        let new = ts[new.start]..ts[new.end];
        if old.len() + new.len() > CHAR_DIFF_UNITS {
            spans.push((old, new));
            continue;
        }
        let a: Vec<&str> = w[old.clone()].iter().map(|u| u.key.as_str()).collect();
        let b: Vec<&str> = t[new.clone()].iter().map(|u| u.key.as_str()).collect();
        let within = changes(&a, &b).into_iter().map(|(o, n)| {
            (
                old.start + o.start..old.start + o.end,
                new.start + n.start..new.start + n.end,
            )
        });
        spans.extend(coalesce(within, MIN_KEPT_CHARS));
    }
    spans
}

/// Makes text `w` (in the copy) equal text `t` (in the version).
fn restore_text<T: ReadTxn>(wt: &mut TransactionMut, w: &impl Text, tt: &T, t: &impl Text) {
    let wu = units(w, wt);
    let tu = units(t, tt);
    // Every attribute either side uses: a run without one clears it, so the text around the
    // insertion point lends it no formatting.
    let keys: BTreeSet<Arc<str>> = wu
        .iter()
        .chain(&tu)
        .filter_map(|u| u.attrs.as_deref())
        .flat_map(|attrs| attrs.keys().cloned())
        .collect();
    let formatting = |attrs: Option<&Attrs>| -> Attrs {
        keys.iter()
            .map(|key| {
                let value = attrs.and_then(|a| a.get(key)).cloned();
                (key.clone(), value.unwrap_or(Any::Null))
            })
            .collect()
    };
    // Offsets of the units in the copy, before any change.
    let mut offsets = Vec::with_capacity(wu.len() + 1);
    let mut at = 0;
    offsets.push(0);
    for unit in &wu {
        at += unit.piece.len();
        offsets.push(at);
    }
    // Last change first, so the offsets of the earlier ones still hold.
    for (old, new) in text_changes(&wu, &tu).into_iter().rev() {
        let start = offsets[old.start];
        let removed = offsets[old.end] - start;
        if removed > 0 {
            w.remove_range(wt, start, removed);
        }
        insert_units(wt, w, start, &tu[new], &formatting);
    }
}

/// Inserts `units` at `at`, a run of characters with the same formatting at a time.
fn insert_units(
    wt: &mut TransactionMut,
    w: &impl Text,
    mut at: u32,
    units: &[Unit],
    formatting: &impl Fn(Option<&Attrs>) -> Attrs,
) {
    let mut i = 0;
    while i < units.len() {
        let attrs = units[i].attrs.as_deref();
        match &units[i].piece {
            Piece::Char(_) => {
                let mut run = String::new();
                while let Some(Unit {
                    piece: Piece::Char(c),
                    attrs: a,
                    ..
                }) = units.get(i)
                {
                    if a.as_deref() != attrs {
                        break;
                    }
                    run.push(*c);
                    i += 1;
                }
                let len: u32 = run.chars().map(|c| c.len_utf16() as u32).sum();
                w.insert_with_attributes(wt, at, &run, formatting(attrs));
                at += len;
            }
            Piece::Embed(value) => {
                w.insert_embed_with_attributes(wt, at, value.clone(), formatting(attrs));
                at += 1;
                i += 1;
            }
        }
    }
}

/// Makes a sequence (array or XML children) whose elements are `wi` equal one of `ti`: each
/// span a diff finds changed is restored in place element by element when it keeps its length
/// (elements of the same kind and tag; others are replaced one by one), else replaced whole
/// (`replace` removes a span and inserts copies).
fn restore_sequence<T: ReadTxn>(
    wt: &mut TransactionMut,
    wi: &[Out],
    tt: &T,
    ti: &[Out],
    mut replace: impl FnMut(&mut TransactionMut, Range<usize>, &[Out]),
) {
    let wk: Vec<String> = wi.iter().map(|o| fingerprint(o, wt)).collect();
    let tk: Vec<String> = ti.iter().map(|o| fingerprint(o, tt)).collect();
    let (a, b): (Vec<&str>, Vec<&str>) = (
        wk.iter().map(String::as_str).collect(),
        tk.iter().map(String::as_str).collect(),
    );
    for (old, new) in changes(&a, &b).into_iter().rev() {
        if old.len() == new.len() {
            for (i, j) in old.clone().zip(new.clone()).rev() {
                if !restore_value(wt, &wi[i], tt, &ti[j]) {
                    replace(wt, i..i + 1, &ti[j..j + 1]);
                }
            }
        } else {
            replace(wt, old, &ti[new]);
        }
    }
}

/// Makes array `w` equal array `t`.
fn restore_array<T: ReadTxn>(wt: &mut TransactionMut, w: &ArrayRef, tt: &T, t: &ArrayRef) {
    let wi: Vec<Out> = w.iter(wt).collect();
    let ti: Vec<Out> = t.iter(tt).collect();
    restore_sequence(wt, &wi, tt, &ti, |wt, old, values| {
        if !old.is_empty() {
            w.remove_range(wt, old.start as u32, old.len() as u32);
        }
        for (offset, value) in values.iter().enumerate() {
            w.insert(wt, (old.start + offset) as u32, value.as_prelim(tt));
        }
    });
}

/// Makes map `w` equal map `t`.
fn restore_map<T: ReadTxn>(wt: &mut TransactionMut, w: &MapRef, tt: &T, t: &MapRef) {
    let entries: Vec<(String, Out)> = t.iter(tt).map(|(k, v)| (k.to_owned(), v)).collect();
    let stale: Vec<String> = w
        .keys(wt)
        .filter(|k| t.get(tt, k).is_none())
        .map(str::to_owned)
        .collect();
    for key in stale {
        w.remove(wt, &key);
    }
    for (key, value) in entries {
        match w.get(wt, &key) {
            Some(current) if fingerprint(&current, wt) == fingerprint(&value, tt) => {}
            Some(current) if restore_value(wt, &current, tt, &value) => {}
            _ => {
                w.insert(wt, key, value.as_prelim(tt));
            }
        }
    }
}

/// Restores `w` to `t` in place when both are shared types of the same kind (and tag); false
/// when `w` must be replaced instead.
fn restore_value<T: ReadTxn>(wt: &mut TransactionMut, w: &Out, tt: &T, t: &Out) -> bool {
    match (w, t) {
        (Out::YText(a), Out::YText(b)) => restore_text(wt, a, tt, b),
        (Out::YArray(a), Out::YArray(b)) => restore_array(wt, a, tt, b),
        (Out::YMap(a), Out::YMap(b)) => restore_map(wt, a, tt, b),
        (Out::YXmlElement(a), Out::YXmlElement(b)) if a.tag() == b.tag() => {
            restore_attributes(wt, a, tt, b);
            restore_children(wt, a, tt, b);
        }
        (Out::YXmlText(a), Out::YXmlText(b)) => {
            restore_attributes(wt, a, tt, b);
            restore_text(wt, a, tt, b);
        }
        (Out::YXmlFragment(a), Out::YXmlFragment(b)) => restore_children(wt, a, tt, b),
        _ => return false,
    }
    true
}

/// Makes the attributes of XML node `w` equal those of `t`.
fn restore_attributes<T: ReadTxn>(wt: &mut TransactionMut, w: &impl Xml, tt: &T, t: &impl Xml) {
    let wanted: Vec<(String, Out)> = t.attributes(tt).map(|(k, v)| (k.to_owned(), v)).collect();
    let stale: Vec<String> = w
        .attributes(wt)
        .filter(|(k, _)| !wanted.iter().any(|(key, _)| key == k))
        .map(|(k, _)| k.to_owned())
        .collect();
    for key in stale {
        w.remove_attribute(wt, &key);
    }
    for (key, value) in wanted {
        let unchanged = w
            .get_attribute(wt, &key)
            .is_some_and(|current| fingerprint(&current, wt) == fingerprint(&value, tt));
        if !unchanged {
            w.insert_attribute(wt, key, value.as_prelim(tt));
        }
    }
}

/// Makes the children of XML node `w` equal those of `t`.
fn restore_children<T: ReadTxn>(
    wt: &mut TransactionMut,
    w: &impl XmlFragment,
    tt: &T,
    t: &impl XmlFragment,
) {
    let wc: Vec<Out> = w.children(wt).map(Out::from).collect();
    let tc: Vec<Out> = t.children(tt).map(Out::from).collect();
    restore_sequence(wt, &wc, tt, &tc, |wt, old, nodes| {
        if !old.is_empty() {
            w.remove_range(wt, old.start as u32, old.len() as u32);
        }
        for (offset, node) in nodes.iter().enumerate() {
            copy_xml(wt, w, (old.start + offset) as u32, tt, node);
        }
    });
}

/// Inserts a deep copy of XML node `node` as child `index` of `w`.
fn copy_xml<T: ReadTxn>(
    wt: &mut TransactionMut,
    w: &impl XmlFragment,
    index: u32,
    tt: &T,
    node: &Out,
) {
    match node {
        Out::YXmlElement(element) => {
            let copy: XmlElementRef =
                w.insert(wt, index, XmlElementPrelim::empty(element.tag().clone()));
            restore_attributes(wt, &copy, tt, element);
            restore_children(wt, &copy, tt, element);
        }
        Out::YXmlText(text) => {
            let copy: XmlTextRef = w.insert(wt, index, XmlTextPrelim::new(""));
            restore_attributes(wt, &copy, tt, text);
            restore_text(wt, &copy, tt, text);
        }
        Out::YXmlFragment(fragment) => {
            w.insert(
                wt,
                index,
                yrs::types::xml::XmlIn::Fragment(fragment.as_prelim(tt)),
            );
        }
        // Not an XML node: nothing else can be a child.
        _ => {}
    }
}

/// A value's content as a string, exactly: equal fingerprints, equal content (kinds, values,
/// text formatting, XML tags and attributes, nested all the way down). Subdocuments by guid.
fn fingerprint<T: ReadTxn>(value: &Out, txn: &T) -> String {
    let mut out = String::new();
    write_fingerprint(&mut out, value, txn);
    out
}

fn write_fingerprint<T: ReadTxn>(out: &mut String, value: &Out, txn: &T) {
    use std::fmt::Write;
    let text = |out: &mut String, units: Vec<Unit>| {
        for unit in units {
            out.push_str(&unit.key);
        }
    };
    let attributes = |out: &mut String, node: &dyn Fn() -> Vec<(String, Out)>| {
        let mut pairs = node();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in pairs {
            let _ = write!(out, "\u{1}{key}\u{2}");
            write_fingerprint(out, &value, txn);
        }
    };
    match value {
        Out::Any(any) => {
            let _ = write!(out, "A{any}");
        }
        Out::YText(t) => {
            out.push('T');
            text(out, units(t, txn));
        }
        Out::YArray(a) => {
            out.push_str("R[");
            for item in a.iter(txn) {
                write_fingerprint(out, &item, txn);
                out.push('\u{3}');
            }
            out.push(']');
        }
        Out::YMap(m) => {
            out.push_str("M{");
            let mut entries: Vec<(String, Out)> =
                m.iter(txn).map(|(k, v)| (k.to_owned(), v)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, value) in entries {
                let _ = write!(out, "\u{1}{key}\u{2}");
                write_fingerprint(out, &value, txn);
            }
            out.push('}');
        }
        Out::YXmlElement(e) => {
            let _ = write!(out, "E<{}", e.tag());
            attributes(out, &|| {
                e.attributes(txn).map(|(k, v)| (k.to_owned(), v)).collect()
            });
            out.push('>');
            for child in e.children(txn) {
                write_fingerprint(out, &Out::from(child), txn);
                out.push('\u{3}');
            }
            out.push_str("</>");
        }
        Out::YXmlText(x) => {
            out.push_str("X<");
            attributes(out, &|| {
                x.attributes(txn).map(|(k, v)| (k.to_owned(), v)).collect()
            });
            out.push('>');
            text(out, units(x, txn));
        }
        Out::YXmlFragment(f) => {
            out.push_str("F[");
            for child in f.children(txn) {
                write_fingerprint(out, &Out::from(child), txn);
                out.push('\u{3}');
            }
            out.push(']');
        }
        Out::YDoc(d) => {
            let _ = write!(out, "D{}", d.guid());
        }
        other => {
            let _ = write!(out, "?{}", other.to_json(txn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, MapPrelim, XmlFragmentRef, XmlOut};

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn update(bytes: &[u8]) -> Update {
        Update::decode_v1(bytes).unwrap()
    }

    /// Restores `doc` (a client's document, edited since) to `version` the way the server does
    /// (from encoded states, every root of unknown kind) and applies the restore to `doc`.
    fn restore(doc: &Doc, version: &[u8]) -> Option<Vec<u8>> {
        let restore = restore_update(update(&state(doc)), update(version)).unwrap();
        if let Some(bytes) = &restore {
            doc.transact_mut().apply_update(update(bytes)).unwrap();
        }
        restore
    }

    /// A document with the version's state, roots declared like a client declares them.
    fn at(version: &[u8]) -> Doc {
        let doc = Doc::new();
        doc.transact_mut().apply_update(update(version)).unwrap();
        doc
    }

    /// A text's runs, adjacent runs of equal formatting merged (formatting marks left behind
    /// may split a run in two without changing what any editor shows).
    fn text_diff(doc: &Doc, name: &str) -> Vec<(String, Option<Attrs>)> {
        let text = doc.get_or_insert_text(name);
        let txn = doc.transact();
        let mut runs: Vec<(String, Option<Attrs>)> = Vec::new();
        for chunk in text.diff(&txn, |_| ()) {
            let Out::Any(Any::String(s)) = chunk.insert else {
                panic!("only strings in this text")
            };
            let attrs = chunk.attributes.map(|a| *a).filter(|a| !a.is_empty());
            match runs.last_mut() {
                Some((run, a)) if *a == attrs => run.push_str(&s),
                _ => runs.push((s.to_string(), attrs)),
            }
        }
        runs
    }

    fn map_json(doc: &Doc, name: &str) -> Any {
        let map = doc.get_or_insert_map(name);
        map.to_json(&doc.transact())
    }

    fn array_json(doc: &Doc, name: &str) -> Any {
        let array = doc.get_or_insert_array(name);
        array.to_json(&doc.transact())
    }

    fn xml_string(doc: &Doc, name: &str) -> String {
        let xml = doc.get_or_insert_xml_fragment(name);
        xml.get_string(&doc.transact())
    }

    fn bold() -> Attrs {
        Attrs::from([("bold".into(), true.into())])
    }

    #[test]
    fn formatted_text_comes_back_with_its_formatting() {
        // Offsets as a JavaScript client counts them.
        let doc = Doc::with_options(Options {
            offset_kind: OffsetKind::Utf16,
            ..Options::default()
        });
        let text = doc.get_or_insert_text("content");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello ");
            text.insert_with_attributes(&mut txn, 6, "world 🌍", bold());
            text.insert(&mut txn, 14, " and more");
        }
        let version = state(&doc);
        let expected = text_diff(&at(&version), "content");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "😀 oh, ");
            text.format(&mut txn, 0, 4, bold());
            text.remove_range(&mut txn, 12, 4);
            text.insert_with_attributes(
                &mut txn,
                14,
                "new",
                Attrs::from([("italic".into(), true.into())]),
            );
            text.format(&mut txn, 20, 3, Attrs::from([("bold".into(), Any::Null)]));
        }
        assert_ne!(text_diff(&doc, "content"), expected);
        assert!(restore(&doc, &version).is_some());
        assert_eq!(text_diff(&doc, "content"), expected);
        assert_eq!(text.get_string(&doc.transact()), "hello world 🌍 and more");
    }

    #[test]
    fn maps_and_arrays_come_back_nested_and_all() {
        let doc = Doc::new();
        let meta = doc.get_or_insert_map("meta");
        let items = doc.get_or_insert_array("items");
        {
            let mut txn = doc.transact_mut();
            meta.insert(&mut txn, "title", "Plan");
            meta.insert(&mut txn, "count", 3);
            let nested = meta.insert(&mut txn, "owner", MapPrelim::default());
            nested.insert(&mut txn, "name", "ada");
            items.push_back(&mut txn, "a");
            let inner = items.push_back(&mut txn, MapPrelim::default());
            inner.insert(&mut txn, "done", false);
            items.push_back(&mut txn, 7);
            items.push_back(&mut txn, "z");
        }
        let version = state(&doc);
        let (meta_then, items_then) = (
            map_json(&at(&version), "meta"),
            array_json(&at(&version), "items"),
        );
        {
            let mut txn = doc.transact_mut();
            meta.remove(&mut txn, "count");
            meta.insert(&mut txn, "extra", "x");
            meta.insert(&mut txn, "title", "Plan B");
            let Some(Out::YMap(owner)) = meta.get(&txn, "owner") else {
                panic!("owner is a map")
            };
            owner.insert(&mut txn, "name", "grace");
            let Some(Out::YMap(inner)) = items.get(&txn, 1) else {
                panic!("item 1 is a map")
            };
            inner.insert(&mut txn, "done", true);
            items.remove(&mut txn, 2);
            items.insert(&mut txn, 0, "first");
            items.push_back(&mut txn, vec![1, 2]);
        }
        assert!(restore(&doc, &version).is_some());
        assert_eq!(map_json(&doc, "meta"), meta_then);
        assert_eq!(array_json(&doc, "items"), items_then);
    }

    /// A ProseMirror document as y-prosemirror keeps it: paragraph and heading elements (a
    /// numeric attribute) holding formatted XML text.
    fn prosemirror(doc: &Doc) -> XmlFragmentRef {
        let fragment = doc.get_or_insert_xml_fragment("default");
        let mut txn = doc.transact_mut();
        let heading = fragment.push_back(&mut txn, XmlElementPrelim::empty("heading"));
        heading.insert_attribute(&mut txn, "level", 1);
        let title = heading.push_back(&mut txn, XmlTextPrelim::new("Title"));
        title.format(&mut txn, 0, 5, bold());
        for words in ["first paragraph", "second paragraph", "third paragraph"] {
            let p = fragment.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
            p.push_back(&mut txn, XmlTextPrelim::new(words));
        }
        fragment
    }

    #[test]
    fn an_xml_fragment_comes_back_with_elements_attributes_and_marks() {
        let doc = Doc::new();
        let fragment = prosemirror(&doc);
        let version = state(&doc);
        let expected = xml_string(&at(&version), "default");
        {
            let mut txn = doc.transact_mut();
            let Some(XmlOut::Element(second)) = fragment.get(&txn, 2) else {
                panic!("a paragraph")
            };
            let Some(XmlOut::Text(words)) = second.get(&txn, 0) else {
                panic!("its text")
            };
            words.insert(&mut txn, 0, "edited ");
            words.format(
                &mut txn,
                0,
                6,
                Attrs::from([("italic".into(), true.into())]),
            );
            fragment.remove_range(&mut txn, 3, 1);
            let Some(XmlOut::Element(heading)) = fragment.get(&txn, 0) else {
                panic!("the heading")
            };
            heading.insert_attribute(&mut txn, "level", 2);
            let added = fragment.push_back(&mut txn, XmlElementPrelim::empty("blockquote"));
            added.push_back(&mut txn, XmlTextPrelim::new("quoted"));
        }
        assert_ne!(xml_string(&doc, "default"), expected);
        assert!(restore(&doc, &version).is_some());
        assert_eq!(xml_string(&doc, "default"), expected);
        let txn = doc.transact();
        let Some(XmlOut::Element(heading)) = fragment.get(&txn, 0) else {
            panic!("the heading")
        };
        // Numbers stay numbers (Tiptap compares heading levels as numbers).
        assert_eq!(
            heading.get_attribute(&txn, "level"),
            Some(Out::Any(Any::from(1)))
        );
    }

    #[test]
    fn a_deleted_paragraph_comes_back_as_a_copy() {
        let doc = Doc::new();
        let fragment = prosemirror(&doc);
        let version = state(&doc);
        fragment.remove_range(&mut doc.transact_mut(), 1, 3);
        assert!(restore(&doc, &version).is_some());
        assert_eq!(
            xml_string(&doc, "default"),
            xml_string(&at(&version), "default")
        );
    }

    #[test]
    fn a_restore_can_be_restored_away() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("content");
        text.insert(&mut doc.transact_mut(), 0, "version one");
        let one = state(&doc);
        text.insert(&mut doc.transact_mut(), 11, ", then two");
        doc.get_or_insert_map("meta")
            .insert(&mut doc.transact_mut(), "k", "v");
        let two = state(&doc);
        assert!(restore(&doc, &one).is_some());
        assert_eq!(text.get_string(&doc.transact()), "version one");
        assert_eq!(map_json(&doc, "meta"), map_json(&Doc::new(), "meta"));
        // The state before the restore is a version like any other.
        assert!(restore(&doc, &two).is_some());
        assert_eq!(text.get_string(&doc.transact()), "version one, then two");
        assert_eq!(map_json(&doc, "meta"), map_json(&at(&two), "meta"));
    }

    #[test]
    fn roots_the_version_lacks_or_had_emptied_are_emptied() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "gone soon");
        text.remove_range(&mut doc.transact_mut(), 0, 9);
        doc.get_or_insert_map("m")
            .insert(&mut doc.transact_mut(), "k", "v");
        let version = state(&doc);
        text.insert(&mut doc.transact_mut(), 0, "back");
        let items = doc.get_or_insert_array("new");
        items.push_back(&mut doc.transact_mut(), "x");
        fragment_with_paragraph(&doc);
        assert!(restore(&doc, &version).is_some());
        assert_eq!(text.get_string(&doc.transact()), "");
        assert_eq!(array_json(&doc, "new"), Any::Array(Vec::new().into()));
        assert_eq!(xml_string(&doc, "xml"), "");
        assert_eq!(map_json(&doc, "m"), map_json(&at(&version), "m"));
    }

    fn fragment_with_paragraph(doc: &Doc) {
        let fragment = doc.get_or_insert_xml_fragment("xml");
        let mut txn = doc.transact_mut();
        let p = fragment.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
        p.push_back(&mut txn, XmlTextPrelim::new("words"));
    }

    #[test]
    fn edits_far_apart_are_undone_without_rewriting_what_lies_between() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let middle: String = (0..400)
            .map(|i| format!("line {i} stays as it is\n"))
            .collect();
        text.insert(&mut doc.transact_mut(), 0, &format!("start\n{middle}end\n"));
        let version = state(&doc);
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "new first line\n");
            text.insert(&mut txn, 3_000, "typo");
            let len = text.len(&txn);
            text.insert(&mut txn, len, "new last line\n");
        }
        let restore = restore(&doc, &version).expect("a change");
        assert_eq!(
            text.get_string(&doc.transact()),
            format!("start\n{middle}end\n")
        );
        // Three deletions, nothing re-inserted: a few dozen bytes, not the 10 KB between.
        assert!(restore.len() < 100, "{} bytes", restore.len());
    }

    /// Random edits (inserts and deletes of a few characters, newlines among them; of array
    /// elements), then a restore to a state from half way: both must come back exactly, many
    /// times over.
    #[test]
    fn random_edits_are_undone_exactly() {
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n.max(1)
        };
        for round in 0..200 {
            let doc = Doc::with_options(Options {
                offset_kind: OffsetKind::Utf16,
                ..Options::default()
            });
            let text = doc.get_or_insert_text("t");
            let items = doc.get_or_insert_array("a");
            let mut version = None;
            for step in 0..60 {
                let mut txn = doc.transact_mut();
                let n = items.len(&txn) as u64;
                if n > 0 && next(3) == 0 {
                    items.remove(&mut txn, next(n) as u32);
                } else {
                    items.insert(&mut txn, next(n + 1) as u32, next(4) as i64);
                }
                let len = text.len(&txn) as u64;
                if len > 0 && next(3) == 0 {
                    let at = next(len);
                    let n = 1 + next((len - at).min(5));
                    text.remove_range(&mut txn, at as u32, n as u32);
                } else {
                    let pieces = ["a", "bc", "\n", "def\n", "x"];
                    let piece = pieces[next(pieces.len() as u64) as usize];
                    text.insert(&mut txn, next(len + 1) as u32, piece);
                }
                drop(txn);
                if step == 30 {
                    let string = text.get_string(&doc.transact());
                    version = Some((state(&doc), string, array_json(&doc, "a")));
                }
            }
            let (version, wanted, wanted_items) = version.unwrap();
            restore(&doc, &version);
            assert_eq!(text.get_string(&doc.transact()), wanted, "round {round}");
            assert_eq!(array_json(&doc, "a"), wanted_items, "round {round}");
        }
    }

    #[test]
    fn restoring_the_current_state_changes_nothing() {
        let doc = Doc::new();
        prosemirror(&doc);
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "x");
        let now = state(&doc);
        assert_eq!(restore(&doc, &now), None);
    }

    #[test]
    fn every_peer_converges_on_a_restore_made_while_one_of_them_edits() {
        let a = Doc::new();
        let text = a.get_or_insert_text("t");
        text.insert(&mut a.transact_mut(), 0, "base text");
        let version = state(&a);
        text.insert(&mut a.transact_mut(), 9, " grew");
        let b = at(&state(&a));
        // b edits while the restore (computed from a's state) is on its way.
        b.get_or_insert_text("t")
            .insert(&mut b.transact_mut(), 0, ">> ");
        let restore = restore_update(update(&state(&a)), update(&version))
            .unwrap()
            .unwrap();
        a.transact_mut().apply_update(update(&restore)).unwrap();
        b.transact_mut().apply_update(update(&restore)).unwrap();
        let from_b = state(&b);
        a.transact_mut().apply_update(update(&from_b)).unwrap();
        let from_a = state(&a);
        b.transact_mut().apply_update(update(&from_a)).unwrap();
        let a_text = text.get_string(&a.transact());
        assert_eq!(a_text, b.get_or_insert_text("t").get_string(&b.transact()));
        assert_eq!(a_text, ">> base text");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let doc = Doc::new();
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "x");
        let good = state(&doc);
        assert!(
            restore_update(update(&good), Update::new())
                .unwrap()
                .is_some()
        );
        assert_eq!(restore_update(Update::new(), Update::new()).unwrap(), None);
    }
}
