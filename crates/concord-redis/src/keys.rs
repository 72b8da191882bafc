//! Key and channel names. Every key of one document carries the same hash tag (`{...}`), so
//! Redis Cluster puts them in one slot and a script may touch them all; documents spread over
//! every shard by their names.
//!
//! ```text
//! PREFIX:docs                    sorted set: every stored document's name (score: last write, ms)
//! PREFIX:{nodes}:node:NODE       a node's heartbeat (expires); one slot for all of them, so a
//!                                node checks the others' in one pipeline on a cluster too
//! PREFIX:{webhooks}:outbox       hash: webhook outbox key -> delivery (opaque bytes)
//! PREFIX:{webhooks}:marks        hash: document name -> position announced through (SEQ.INDEX)
//! PREFIX:{webhooks}:started      present once the outbox was first written
//! PREFIX:{webhooks}:fresh        set: outbox keys written since the last webhook news (the
//!                                outbox write adds them, removing an entry drops its key,
//!                                the news takes and clears them)
//! PREFIX:{webhooks}:edited       set: names of documents noted edited since the last news
//! PREFIX:{webhooks}:lease        the webhook lease: the holder's id, with an expiry (one node
//!                                at a time announces webhooks); every `{webhooks}` key
//!                                shares a slot, so one script may touch them all
//! PREFIX:{TAG}:log               the document's update log: a stream, entry ids SEQ-0
//! PREFIX:{TAG}:meta              hash: seq (last seq given out), snap_seq, tail_updates,
//!                                tail_bytes, updated (ms), version (last version id given
//!                                out), history_bytes (bytes of the kept versions' snapshots)
//! PREFIX:{TAG}:snap              the latest snapshot (opaque bytes)
//! PREFIX:{TAG}:versions          hash: version id -> its metadata (time, position, size,
//!                                label; see `store.rs`), never its snapshot
//! PREFIX:{TAG}:version-snaps     hash: version id -> its snapshot (opaque bytes)
//! PREFIX:{TAG}:lease             the compaction lease: a fencing token, with an expiry
//! PREFIX:{TAG}:fence             the last fencing token given out
//! PREFIX:{TAG}:awareness         the document's pub/sub channel (sharded on a cluster): its
//!                                awareness, fast-path updates, queries, deletions and (on a
//!                                cluster) the doorbell of each stored entry
//! ```
//!
//! `TAG` is the document name with `%`, `{` and `}` percent-encoded, so that no name can end
//! the tag early or collide with another's.

use concord_core::DocName;

/// Names the keys of one deployment (all under one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// The keys of one document.
#[derive(Debug, Clone)]
pub(crate) struct DocKeys {
    pub(crate) log: String,
    pub(crate) meta: String,
    pub(crate) snap: String,
    pub(crate) versions: String,
    pub(crate) version_snaps: String,
    pub(crate) lease: String,
    pub(crate) fence: String,
}

/// The webhooks' keys: all under the `{webhooks}` hash tag, so one script may touch any of them
/// on a cluster too.
#[derive(Debug, Clone)]
pub(crate) struct WebhookKeys {
    /// Hash: outbox key -> delivery.
    pub(crate) outbox: String,
    /// Hash: document name -> announced-through mark.
    pub(crate) marks: String,
    /// Present once the outbox was first written.
    pub(crate) started: String,
    /// Set: outbox keys written since the last news.
    pub(crate) fresh: String,
    /// Set: documents noted edited since the last news.
    pub(crate) edited: String,
    /// The lease: the holder's id, with an expiry.
    pub(crate) lease: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn tagged(&self, doc: &DocName) -> String {
        let mut key = String::with_capacity(self.prefix.len() + doc.as_str().len() + 4);
        key.push_str(&self.prefix);
        key.push_str(":{");
        for c in doc.as_str().chars() {
            match c {
                '%' => key.push_str("%25"),
                '{' => key.push_str("%7B"),
                '}' => key.push_str("%7D"),
                c => key.push(c),
            }
        }
        key.push('}');
        key
    }

    pub(crate) fn doc(&self, doc: &DocName) -> DocKeys {
        let base = self.tagged(doc);
        DocKeys {
            log: format!("{base}:log"),
            meta: format!("{base}:meta"),
            snap: format!("{base}:snap"),
            versions: format!("{base}:versions"),
            version_snaps: format!("{base}:version-snaps"),
            lease: format!("{base}:lease"),
            fence: format!("{base}:fence"),
        }
    }

    /// The pub/sub channel of `doc` (see the module documentation for what it carries).
    pub(crate) fn channel(&self, doc: &DocName) -> String {
        format!("{}:awareness", self.tagged(doc))
    }

    /// The set of stored documents.
    pub(crate) fn index(&self) -> String {
        format!("{}:docs", self.prefix)
    }

    /// The webhooks' keys (one hash tag).
    pub(crate) fn webhooks(&self) -> WebhookKeys {
        let base = format!("{}:{{webhooks}}", self.prefix);
        WebhookKeys {
            outbox: format!("{base}:outbox"),
            marks: format!("{base}:marks"),
            started: format!("{base}:started"),
            fresh: format!("{base}:fresh"),
            edited: format!("{base}:edited"),
            lease: format!("{base}:lease"),
        }
    }

    /// A node's heartbeat key.
    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}:{{nodes}}:node:{node}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DocName {
        DocName::new(s).unwrap()
    }

    #[test]
    fn every_key_of_a_document_has_one_hash_tag() {
        let keys = Keys::new("concord");
        let k = keys.doc(&name("notes/a b"));
        assert_eq!(k.log, "concord:{notes/a b}:log");
        assert_eq!(k.snap, "concord:{notes/a b}:snap");
        assert_eq!(k.versions, "concord:{notes/a b}:versions");
        assert_eq!(k.version_snaps, "concord:{notes/a b}:version-snaps");
        assert_eq!(keys.channel(&name("x")), "concord:{x}:awareness");
        assert_eq!(keys.node("ab"), "concord:{nodes}:node:ab");
        let w = keys.webhooks();
        assert_eq!(
            [w.outbox, w.marks, w.started, w.fresh, w.edited, w.lease],
            [
                "concord:{webhooks}:outbox",
                "concord:{webhooks}:marks",
                "concord:{webhooks}:started",
                "concord:{webhooks}:fresh",
                "concord:{webhooks}:edited",
                "concord:{webhooks}:lease",
            ]
        );
    }

    #[test]
    fn braces_and_percents_cannot_end_the_tag_or_collide() {
        let keys = Keys::new("p");
        assert_eq!(keys.doc(&name("a}b{c")).log, "p:{a%7Db%7Bc}:log");
        assert_ne!(keys.doc(&name("%7D")).log, keys.doc(&name("}")).log);
    }
}
