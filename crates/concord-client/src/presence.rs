//! The awareness state a provider publishes for its user: who, where their cursor is, whether
//! they are around, whether they are typing. Serialized as the JSON other Yjs clients read
//! (`{"user": {"name", "color"}, "cursor", "status", "typing"}`); fields of other apps are kept
//! in `extra`.

use serde::{Deserialize, Serialize};

/// Who a client is, as editors show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Display name.
    pub name: String,
    /// CSS color of the cursor and the name tag, e.g. `#d33682`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
}

/// Whether a user is around.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnlineStatus {
    /// Here and active.
    #[default]
    Online,
    /// Here, but not active.
    Away,
    /// Here, not to be disturbed.
    Busy,
}

/// A client's awareness state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// Where the cursor or selection is, in whatever form the editor uses (Yjs editors use
    /// `{"anchor": relative position, "head": relative position}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<serde_json::Value>,
    /// Around or not.
    #[serde(default)]
    pub status: OnlineStatus,
    /// Typing right now; [`crate::Provider::typing`] sets it and clears it after the typing
    /// timeout.
    #[serde(default)]
    pub typing: bool,
    /// Other fields, kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_reads_and_writes_the_json_yjs_apps_use() {
        let presence = Presence {
            user: Some(User {
                name: "Ada".into(),
                color: Some("#d33682".into()),
            }),
            status: OnlineStatus::Away,
            typing: true,
            ..Presence::default()
        };
        let json = serde_json::to_value(&presence).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "user": {"name": "Ada", "color": "#d33682"},
                "status": "away",
                "typing": true
            })
        );
        let read: Presence =
            serde_json::from_str(r#"{"user":{"name":"Bo"},"cursor":{"anchor":1},"theme":"dark"}"#)
                .unwrap();
        assert_eq!(read.user.unwrap().name, "Bo");
        assert_eq!(read.cursor.unwrap()["anchor"], 1);
        assert_eq!(read.status, OnlineStatus::Online);
        assert_eq!(read.extra["theme"], "dark");
    }
}
