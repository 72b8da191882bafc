//! Document names: what a room may be called, checked before any connection is accepted.

use std::fmt;
use std::sync::Arc;

/// The longest document name accepted, in bytes of UTF-8.
pub const MAX_DOC_NAME_BYTES: usize = 512;

/// A validated document name: non-empty, at most [`MAX_DOC_NAME_BYTES`] bytes, no control
/// characters. Cheap to clone (the string is shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocName(Arc<str>);

/// Why a document name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDocName {
    /// The name is empty.
    #[error("document name is empty")]
    Empty,
    /// The name is longer than [`MAX_DOC_NAME_BYTES`].
    #[error("document name is {0} bytes, more than the {MAX_DOC_NAME_BYTES} allowed")]
    TooLong(usize),
    /// The name contains a control character (U+0000..U+001F, U+007F..U+009F).
    #[error("document name contains a control character")]
    ControlCharacter,
}

impl DocName {
    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, InvalidDocName> {
        if name.is_empty() {
            return Err(InvalidDocName::Empty);
        }
        if name.len() > MAX_DOC_NAME_BYTES {
            return Err(InvalidDocName::TooLong(name.len()));
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidDocName::ControlCharacter);
        }
        Ok(DocName(name.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` honours width and alignment (`{:<40}` in listings).
        f.pad(&self.0)
    }
}

impl fmt::Debug for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for DocName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for DocName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_with_slashes_and_unicode() {
        for name in [
            "my-doc",
            "team/a/notes",
            "héllo wörld",
            "a",
            &"x".repeat(512),
        ] {
            assert_eq!(DocName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn display_honours_width() {
        assert_eq!(format!("[{:<6}]", DocName::new("ab").unwrap()), "[ab    ]");
    }

    #[test]
    fn refuses_empty_long_and_control_names() {
        assert_eq!(DocName::new(""), Err(InvalidDocName::Empty));
        assert_eq!(
            DocName::new(&"x".repeat(513)),
            Err(InvalidDocName::TooLong(513))
        );
        for name in ["a\nb", "tab\there", "nul\0", "del\u{7f}", "c1\u{85}"] {
            assert_eq!(
                DocName::new(name),
                Err(InvalidDocName::ControlCharacter),
                "{name:?}"
            );
        }
    }
}
