//! A document's root types as JSON, for the HTTP API's `?format=json` and the `concord` CLI.

use yrs::branch::BranchPtr;
use yrs::types::ToJson;
use yrs::types::text::YChange;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Out, Text, TextRef, Transact, Update, WriteTxn};

/// The kind of a root type, as a `types` hint names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    /// `Y.Text`: its string.
    Text,
    /// `Y.Map`: an object.
    Map,
    /// `Y.Array`: an array.
    Array,
    /// `Y.XmlFragment`: its XML as a string.
    Xml,
}

/// Why a `types` hint could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("types: {0}")]
pub struct InvalidTypes(String);

/// Reads a `types` hint such as `text:content,map:meta` into root names and kinds.
pub fn parse_types(types: &str) -> Result<Vec<(String, RootKind)>, InvalidTypes> {
    types
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (kind, name) = part
                .split_once(':')
                .ok_or_else(|| InvalidTypes(format!("{part:?} is not KIND:NAME")))?;
            let kind = match kind {
                "text" => RootKind::Text,
                "map" => RootKind::Map,
                "array" => RootKind::Array,
                "xml" => RootKind::Xml,
                other => {
                    return Err(InvalidTypes(format!(
                        "{other:?} is not text, map, array or xml"
                    )));
                }
            };
            Ok((name.to_owned(), kind))
        })
        .collect()
}

/// The JSON of a document's root types, from its state as a v1 update: see [`doc_json`].
pub fn state_json(
    state: &[u8],
    types: &[(String, RootKind)],
) -> Result<serde_json::Value, yrs::encoding::read::Error> {
    let doc = Doc::new();
    let update = Update::decode_v1(state)?;
    // An update yrs refuses part-way still shows what it integrated.
    let _ = doc.transact_mut().apply_update(update);
    Ok(doc_json(&doc, types))
}

/// The JSON of `doc`'s root types.
///
/// Roots named in `types` are read as that kind, whatever they hold. A root that only remote
/// clients created has no kind in the document (an update does not carry it): unless named in
/// `types`, its kind is inferred from what it holds, through yrs's public views of it:
///
/// - [`Text`](RootKind::Text), its string: when its text diff (`TextRef::diff`) shows any
///   string, embed or formatting. The diff shows the items only a `Y.Text` holds (strings,
///   embeds, formatting marks) and nested types; it skips the plain values of a `Y.Array`
///   (`ContentAny`, also binary, subdocuments and legacy JSON), so an array of strings is not
///   taken for a text.
/// - [`Xml`](RootKind::Xml), its XML string: when it holds a sequence whose elements are all
///   `XmlElement`s or `XmlText`s (a `Y.XmlFragment`, as ProseMirror/Tiptap bindings write).
/// - [`Array`](RootKind::Array): any other sequence (plain values, nested types).
/// - [`Map`](RootKind::Map): no sequence (keyed entries only, or nothing: `{}`).
///
/// Limits: a root that holds only nested types reads as an array (or as XML when they are all
/// XML nodes) even when it is a `Y.Text` with embedded types, or a `Y.Array` of XML nodes; a
/// root with no live elements (every character deleted, or only formatting marks left) reads as
/// `{}`. Name such roots in `types`.
///
/// Reading declares the kinds in `doc`: use a copy when that matters.
pub fn doc_json(doc: &Doc, types: &[(String, RootKind)]) -> serde_json::Value {
    let mut txn = doc.transact_mut();
    let mut out = serde_json::Map::new();
    for (name, kind) in types {
        let value = read_as(&mut txn, name, *kind);
        out.insert(name.clone(), any_to_json(&value));
    }
    let others: Vec<(String, Result<RootKind, yrs::Any>)> = yrs::ReadTxn::root_refs(&txn)
        .filter(|(name, _)| !types.iter().any(|(hinted, _)| hinted == name))
        .map(|(name, value)| {
            let kind = match &value {
                Out::UndefinedRef(branch) => Ok(infer_kind(&txn, *branch)),
                declared => Err(declared.to_json(&txn)),
            };
            (name.to_owned(), kind)
        })
        .collect();
    for (name, kind) in others {
        let value = match kind {
            Ok(kind) => read_as(&mut txn, &name, kind),
            Err(value) => value,
        };
        out.insert(name, any_to_json(&value));
    }
    serde_json::Value::Object(out)
}

/// Root `name` of `txn`'s document read as `kind` (declaring it so, creating it if missing).
fn read_as(txn: &mut yrs::TransactionMut, name: &str, kind: RootKind) -> yrs::Any {
    match kind {
        RootKind::Text => yrs::Any::from(txn.get_or_insert_text(name).get_string(txn)),
        RootKind::Map => txn.get_or_insert_map(name).to_json(txn),
        RootKind::Array => txn.get_or_insert_array(name).to_json(txn),
        RootKind::Xml => yrs::Any::from(txn.get_or_insert_xml_fragment(name).get_string(txn)),
    }
}

/// The kind of root `name` in `txn`'s document: as declared, or inferred from what it holds
/// (see [`doc_json`]). `None` when there is no such root, or it is undeclared and holds
/// nothing (no live element, no keyed entry): any kind fits it.
pub fn root_kind<T: yrs::ReadTxn>(txn: &T, name: &str) -> Option<RootKind> {
    let (_, root) = txn.root_refs().find(|(n, _)| *n == name)?;
    match root {
        Out::YText(_) | Out::YXmlText(_) => Some(RootKind::Text),
        Out::YArray(_) => Some(RootKind::Array),
        Out::YMap(_) => Some(RootKind::Map),
        Out::YXmlFragment(_) | Out::YXmlElement(_) => Some(RootKind::Xml),
        Out::UndefinedRef(branch) => {
            let empty = branch.len() == 0 && yrs::Map::len(&yrs::MapRef::from(branch), txn) == 0;
            (!empty).then(|| infer_kind(txn, branch))
        }
        _ => None,
    }
}

/// The kind of a root of undefined type, from what it holds: see [`doc_json`].
fn infer_kind<T: yrs::ReadTxn>(txn: &T, branch: BranchPtr) -> RootKind {
    // Live countable elements of the sequence: characters (UTF-16 units), embeds, values, nested
    // types. Formatting marks and keyed entries are not counted.
    if branch.len() == 0 {
        return RootKind::Map;
    }
    let diff = TextRef::from(branch).diff(txn, YChange::identity);
    // Only strings and embeds show as `Out::Any`: a `Y.Array`'s plain values are skipped.
    if diff
        .iter()
        .any(|chunk| matches!(chunk.insert, Out::Any(_)) || chunk.attributes.is_some())
    {
        return RootKind::Text;
    }
    // What is left in the diff are nested types, one chunk each; any other element is a plain
    // value the diff skipped.
    let all_nested = diff.len() == branch.len() as usize;
    let all_xml = diff
        .iter()
        .all(|chunk| matches!(chunk.insert, Out::YXmlElement(_) | Out::YXmlText(_)));
    if all_nested && all_xml {
        RootKind::Xml
    } else {
        RootKind::Array
    }
}

/// A yrs value as JSON (`undefined` and binary become `null`).
pub fn any_to_json(any: &yrs::Any) -> serde_json::Value {
    let mut text = String::new();
    any.to_json(&mut text);
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::Arc;
    use yrs::types::Attrs;
    use yrs::{
        Any, Array, ArrayPrelim, Map, MapPrelim, ReadTxn, StateVector, TextPrelim,
        XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    #[test]
    fn types_hints_parse() {
        assert_eq!(
            parse_types("text:content,map:meta").unwrap(),
            vec![
                ("content".to_owned(), RootKind::Text),
                ("meta".to_owned(), RootKind::Map)
            ]
        );
        assert!(parse_types("nope").is_err());
        assert!(parse_types("blob:x").is_err());
        assert_eq!(parse_types("").unwrap(), vec![]);
    }

    /// The state of a document `write` fills, read back as JSON with `types`, as a remote
    /// client's update (no root has a kind).
    fn json_of(write: impl FnOnce(&mut yrs::TransactionMut), types: &str) -> serde_json::Value {
        let source = Doc::new();
        write(&mut source.transact_mut());
        let state = source
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        state_json(&state, &parse_types(types).unwrap()).unwrap()
    }

    #[test]
    fn roots_become_json_with_and_without_hints() {
        let write = |txn: &mut yrs::TransactionMut| {
            txn.get_or_insert_text("content").insert(txn, 0, "hi");
            txn.get_or_insert_map("meta").insert(txn, "n", 1);
        };
        let hinted = json_of(write, "text:content");
        assert_eq!(hinted["content"], "hi");
        assert_eq!(hinted["meta"]["n"], 1.0);
        // Without the hint the text root's kind is inferred from its content.
        let inferred = json_of(write, "");
        assert_eq!(inferred, json!({"content": "hi", "meta": {"n": 1}}));
    }

    #[test]
    fn text_roots_are_inferred_as_strings() {
        let plain = json_of(
            |txn| {
                txn.get_or_insert_text("content")
                    .insert(txn, 0, "written-by-js");
            },
            "",
        );
        assert_eq!(plain, json!({"content": "written-by-js"}));

        let formatted = json_of(
            |txn| {
                let text = txn.get_or_insert_text("content");
                text.insert(txn, 0, "hello ");
                let bold = Attrs::from([(Arc::from("bold"), Any::Bool(true))]);
                text.insert_with_attributes(txn, 6, "world", bold);
                text.insert(txn, 11, "!");
            },
            "",
        );
        assert_eq!(formatted, json!({"content": "hello world!"}));

        // Embeds are not part of the string (as `get_string` reads it).
        let embed = || Any::from(HashMap::from([("image".to_owned(), Any::from("x.png"))]));
        let embedded = json_of(
            |txn| {
                let text = txn.get_or_insert_text("content");
                text.insert(txn, 0, "ac");
                text.insert_embed(txn, 1, embed());
            },
            "",
        );
        assert_eq!(embedded, json!({"content": "ac"}));
        let only_embed = json_of(
            |txn| {
                txn.get_or_insert_text("content")
                    .insert_embed(txn, 0, embed());
            },
            "",
        );
        assert_eq!(only_embed, json!({"content": ""}));
    }

    #[test]
    fn array_roots_stay_arrays() {
        let strings = json_of(
            |txn| {
                let array = txn.get_or_insert_array("list");
                array.push_back(txn, "a");
                array.push_back(txn, "b");
                array.insert(txn, 0, "first");
            },
            "",
        );
        assert_eq!(strings, json!({"list": ["first", "a", "b"]}));

        let mixed = json_of(
            |txn| {
                let array = txn.get_or_insert_array("list");
                array.push_back(txn, 1);
                array.push_back(
                    txn,
                    Any::from(HashMap::from([("k".to_owned(), Any::from(2))])),
                );
                array.push_back(txn, MapPrelim::from([("m", Any::from("v"))]));
                array.push_back(txn, ArrayPrelim::from(["x"]));
            },
            "",
        );
        assert_eq!(mixed, json!({"list": [1, {"k": 2}, {"m": "v"}, ["x"]]}));

        // Nested types only, none XML.
        let maps = json_of(
            |txn| {
                let array = txn.get_or_insert_array("list");
                array.push_back(txn, MapPrelim::from([("m", Any::from(1))]));
                array.push_back(txn, TextPrelim::new("t"));
            },
            "",
        );
        assert_eq!(maps, json!({"list": [{"m": 1}, "t"]}));
    }

    #[test]
    fn map_roots_are_objects() {
        let nested = json_of(
            |txn| {
                let map = txn.get_or_insert_map("meta");
                map.insert(txn, "title", "notes");
                map.insert(txn, "tags", ArrayPrelim::from(["a", "b"]));
                map.insert(txn, "inner", MapPrelim::from([("n", Any::from(1))]));
            },
            "",
        );
        assert_eq!(
            nested,
            json!({"meta": {"title": "notes", "tags": ["a", "b"], "inner": {"n": 1}}})
        );
    }

    #[test]
    fn xml_fragment_roots_are_xml_strings() {
        let xml = json_of(
            |txn| {
                let fragment = txn.get_or_insert_xml_fragment("prosemirror");
                fragment.push_back(
                    txn,
                    XmlElementPrelim::new("paragraph", [XmlTextPrelim::new("hello").into()]),
                );
                fragment.push_back(txn, XmlElementPrelim::empty("horizontalRule"));
            },
            "",
        );
        assert_eq!(
            xml,
            json!({"prosemirror": "<paragraph>hello</paragraph><horizontalRule></horizontalRule>"})
        );
    }

    #[test]
    fn empty_roots_are_empty_objects() {
        let emptied = json_of(
            |txn| {
                let text = txn.get_or_insert_text("content");
                text.insert(txn, 0, "gone");
                text.remove_range(txn, 0, 4);
                let map = txn.get_or_insert_map("meta");
                map.insert(txn, "k", 1);
                map.remove(txn, "k");
            },
            "",
        );
        assert_eq!(emptied, json!({"content": {}, "meta": {}}));
    }

    #[test]
    fn hints_override_inference() {
        let write = |txn: &mut yrs::TransactionMut| {
            txn.get_or_insert_text("content").insert(txn, 0, "hi");
            txn.get_or_insert_array("list").push_back(txn, "a");
        };
        assert_eq!(
            json_of(write, "array:content"),
            json!({"content": ["h", "i"], "list": ["a"]})
        );
        assert_eq!(
            json_of(write, "text:list,map:missing"),
            json!({"content": "hi", "list": "", "missing": {}})
        );
    }
}
