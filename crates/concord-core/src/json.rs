//! A document's root types as JSON, for the HTTP API's `?format=json` and the `concord` CLI.

use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Out, Transact, Update, WriteTxn};

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

/// The JSON of `doc`'s root types. Roots named in `types` are read as that kind; other roots
/// whose kind the document cannot tell (every root only a remote client created) are read as
/// maps when they hold no sequence, else as arrays (name text roots in `types` to get their
/// string). Reading declares the kinds in `doc`: use a copy when that matters.
pub fn doc_json(doc: &Doc, types: &[(String, RootKind)]) -> serde_json::Value {
    let mut txn = doc.transact_mut();
    let mut out = serde_json::Map::new();
    for (name, kind) in types {
        let value = match kind {
            RootKind::Text => {
                yrs::Any::from(txn.get_or_insert_text(name.as_str()).get_string(&txn))
            }
            RootKind::Map => txn.get_or_insert_map(name.as_str()).to_json(&txn),
            RootKind::Array => txn.get_or_insert_array(name.as_str()).to_json(&txn),
            RootKind::Xml => yrs::Any::from(
                txn.get_or_insert_xml_fragment(name.as_str())
                    .get_string(&txn),
            ),
        };
        out.insert(name.clone(), any_to_json(&value));
    }
    let others: Vec<(String, bool)> = yrs::ReadTxn::root_refs(&txn)
        .filter(|(name, _)| !types.iter().any(|(hinted, _)| hinted == name))
        .map(|(name, value)| {
            let sequence = match &value {
                Out::UndefinedRef(branch) => branch.len() > 0,
                _ => false,
            };
            (name.to_owned(), sequence)
        })
        .collect();
    for (name, sequence) in others {
        let current = yrs::ReadTxn::root_refs(&txn)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v);
        let value = match current {
            Some(Out::UndefinedRef(_)) if sequence => {
                txn.get_or_insert_array(name.as_str()).to_json(&txn)
            }
            Some(Out::UndefinedRef(_)) => txn.get_or_insert_map(name.as_str()).to_json(&txn),
            Some(value) => value.to_json(&txn),
            None => continue,
        };
        out.insert(name, any_to_json(&value));
    }
    serde_json::Value::Object(out)
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
    use yrs::{Map, ReadTxn, StateVector, Text};

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

    #[test]
    fn roots_become_json_with_and_without_hints() {
        let source = Doc::new();
        {
            let mut txn = source.transact_mut();
            txn.get_or_insert_text("content").insert(&mut txn, 0, "hi");
            txn.get_or_insert_map("meta").insert(&mut txn, "n", 1);
        }
        let state = source
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let hinted = state_json(&state, &parse_types("text:content").unwrap()).unwrap();
        assert_eq!(hinted["content"], "hi");
        assert_eq!(hinted["meta"]["n"], 1.0);
        // Without the hint the text root is a sequence of unknown kind: read as an array.
        let guessed = state_json(&state, &[]).unwrap();
        assert!(guessed["content"].is_array(), "{guessed}");
    }
}
