//! A syntax-only JSON checker for the strings a frame carries as JSON (awareness states,
//! embeds, format values): accepts exactly what the parser on the other end accepts, without
//! building the value.
//!
//! It checks and nothing more: no allocation, no recursion, so a hostile string costs time in
//! proportion to its length and nothing else. Reading a document's state *as* JSON is another
//! job, done in `json.rs`.

/// Deepest nesting of JSON arrays/objects accepted, matching serde_json: its recursion budget
/// of 128 is spent before a container is entered and fails when it reaches zero, so 127 nested
/// containers parse and 128 do not. yrs parses embeds and format values with serde_json.
const MAX_JSON_DEPTH: u32 = 127;

/// Which parser a JSON string has to satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JsonFlavor {
    /// Relayed to peers that `JSON.parse` it (awareness states): RFC 8259 syntax only. Lone
    /// surrogate escapes and out-of-range numbers are accepted, as `JSON.parse` accepts them;
    /// a browser's `JSON.stringify` emits `"\ud83d"` for a name cut inside an emoji, and
    /// refusing that would lock such a client out.
    Relayed,
    /// `yrs::Any::from_json` (embeds, format values), i.e. serde_json into yrs's visitor:
    /// surrogates must pair, numbers must fit an f64, and positive integers above i64::MAX
    /// that still fit a u64 are refused by the visitor.
    YrsAny,
}

/// Why a JSON string failed [`check_json`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JsonError {
    /// Not JSON the flavor's parser accepts.
    Invalid,
    /// Containers nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep,
}

/// Accepts exactly the documents the flavor's parser accepts, without building them: RFC 8259
/// syntax with at most [`MAX_JSON_DEPTH`] nested containers, plus, for [`JsonFlavor::YrsAny`],
/// serde_json's checks on `\u` surrogates and number ranges. Iterative and allocation-free (a
/// u128 records which open containers are objects).
pub(super) fn check_json(s: &str, flavor: JsonFlavor) -> Result<(), JsonError> {
    use JsonError::Invalid;
    let b = s.as_bytes();
    let mut i = 0usize;
    let mut depth = 0u32;
    let mut objects: u128 = 0;
    loop {
        // A value is expected at `i`.
        i = skip_ws(b, i);
        match b.get(i) {
            Some(&open @ (b'{' | b'[')) => {
                if depth == MAX_JSON_DEPTH {
                    return Err(JsonError::TooDeep);
                }
                let is_obj = open == b'{';
                i = skip_ws(b, i + 1);
                let close = if is_obj { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    if is_obj {
                        objects |= 1 << depth;
                        i = json_key(b, i, flavor)?;
                    } else {
                        objects &= !(1 << depth);
                    }
                    depth += 1;
                    continue;
                }
            }
            Some(b'"') => i = json_string_end(b, i + 1, flavor)?,
            Some(b't') => i = json_literal(b, i, b"true")?,
            Some(b'f') => i = json_literal(b, i, b"false")?,
            Some(b'n') => i = json_literal(b, i, b"null")?,
            Some(b'-' | b'0'..=b'9') => i = json_number(s, i, flavor)?,
            _ => return Err(Invalid),
        }
        // A value just ended: close containers until a separator asks for the next value.
        loop {
            i = skip_ws(b, i);
            if depth == 0 {
                return if i == b.len() { Ok(()) } else { Err(Invalid) };
            }
            let in_obj = objects >> (depth - 1) & 1 == 1;
            match (b.get(i), in_obj) {
                (Some(b','), true) => {
                    i = json_key(b, skip_ws(b, i + 1), flavor)?;
                    break;
                }
                (Some(b','), false) => {
                    i += 1;
                    break;
                }
                (Some(b'}'), true) | (Some(b']'), false) => {
                    i += 1;
                    depth -= 1;
                }
                _ => return Err(Invalid),
            }
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// An object key at `i` followed by `:`; returns the index after the colon.
fn json_key(b: &[u8], i: usize, flavor: JsonFlavor) -> Result<usize, JsonError> {
    if b.get(i) != Some(&b'"') {
        return Err(JsonError::Invalid);
    }
    let i = skip_ws(b, json_string_end(b, i + 1, flavor)?);
    if b.get(i) != Some(&b':') {
        return Err(JsonError::Invalid);
    }
    Ok(i + 1)
}

fn json_literal(b: &[u8], i: usize, lit: &[u8]) -> Result<usize, JsonError> {
    if b.get(i..i + lit.len()) == Some(lit) {
        Ok(i + lit.len())
    } else {
        Err(JsonError::Invalid)
    }
}

/// The rest of a string whose opening quote precedes `i`; returns the index after the closing
/// quote. The input is already valid UTF-8, so only escapes and control characters matter.
fn json_string_end(b: &[u8], mut i: usize, flavor: JsonFlavor) -> Result<usize, JsonError> {
    loop {
        match *b.get(i).ok_or(JsonError::Invalid)? {
            b'"' => return Ok(i + 1),
            b'\\' => match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let unit = hex4(b, i + 2)?;
                    i += 6;
                    if flavor == JsonFlavor::Relayed {
                        continue;
                    }
                    match unit {
                        // serde_json refuses unpaired surrogates when producing a str.
                        0xdc00..=0xdfff => return Err(JsonError::Invalid),
                        0xd800..=0xdbff => {
                            if b.get(i..i + 2) != Some(b"\\u") {
                                return Err(JsonError::Invalid);
                            }
                            if !(0xdc00..=0xdfff).contains(&hex4(b, i + 2)?) {
                                return Err(JsonError::Invalid);
                            }
                            i += 6;
                        }
                        _ => {}
                    }
                }
                _ => return Err(JsonError::Invalid),
            },
            0x00..=0x1f => return Err(JsonError::Invalid),
            _ => i += 1,
        }
    }
}

fn hex4(b: &[u8], i: usize) -> Result<u16, JsonError> {
    let digits = b.get(i..i + 4).ok_or(JsonError::Invalid)?;
    let mut v = 0u16;
    for &d in digits {
        let n = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(JsonError::Invalid),
        };
        v = v << 4 | u16::from(n);
    }
    Ok(v)
}

/// A number token at `start`; returns the index after it.
fn json_number(s: &str, start: usize, flavor: JsonFlavor) -> Result<usize, JsonError> {
    use JsonError::Invalid;
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while let Some(b'0'..=b'9') = b.get(i) {
            i += 1;
        }
        i
    };
    let mut i = start;
    let negative = b.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let int_start = i;
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i + 1),
        _ => return Err(Invalid),
    }
    let int_len = i - int_start;
    let mut is_integer = true;
    if b.get(i) == Some(&b'.') {
        is_integer = false;
        let after = digits(i + 1);
        if after == i + 1 {
            return Err(Invalid);
        }
        i = after;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        is_integer = false;
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let after = digits(i);
        if after == i {
            return Err(Invalid);
        }
        i = after;
    }
    // serde_json forbids a leading zero followed by more digits ("01").
    if b.get(int_start) == Some(&b'0') && matches!(b.get(int_start + 1), Some(b'0'..=b'9')) {
        return Err(Invalid);
    }
    if flavor == JsonFlavor::Relayed {
        // JSON.parse maps any syntactically valid number to a double (possibly Infinity).
        return Ok(i);
    }
    let token = &s[start..i];
    if is_integer && int_len <= 18 {
        // Fits i64 outright: always accepted.
        return Ok(i);
    }
    if is_integer && !negative && flavor == JsonFlavor::YrsAny {
        // serde_json hands integers in (i64::MAX, u64::MAX] to visit_u64, which yrs refuses;
        // larger ones become f64 and pass.
        if token.parse::<u64>().is_ok_and(|v| v > i64::MAX as u64) {
            return Err(Invalid);
        }
    }
    // Let serde_json decide whether the literal is representable (it refuses values that
    // overflow f64); this parses a scalar and allocates nothing.
    match serde_json::from_str::<f64>(token) {
        Ok(_) => Ok(i),
        Err(_) => Err(Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Rng;
    use yrs::Any;

    /// Random JSON-ish text: mostly well-formed with sprinkled defects, so both sides of every
    /// rule get exercised.
    fn random_json(rng: &mut Rng, out: &mut String, depth: u32) {
        const NUMBERS: &[&str] = &[
            "0",
            "-0",
            "1",
            "-12",
            "01",
            "1.",
            ".5",
            "1.5",
            "1e5",
            "1E-5",
            "1e",
            "-",
            "2.5e+10",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "1e308",
            "1e309",
            "-1e400",
            "0e99999999999999999999",
            "123456789012345678901234567890",
            "1e-400",
        ];
        const STRINGS: &[&str] = &[
            "\"\"",
            "\"abc\"",
            "\"\\n\\t\\\"\\\\\\/\"",
            "\"\\u00e9\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud83d\"",
            "\"\\ude00\"",
            "\"\\ud83d\\u0041\"",
            "\"\\x\"",
            "\"\u{1}\"",
            "\"\\u12\"",
            "\"unterminated",
            "\"é😀\"",
            "\"\\uD834\\uDD1E\"",
        ];
        if rng.chance(2) {
            out.push(['x', ',', ':', ']', '}', ' '][rng.below(6) as usize]);
        }
        match rng.below(if depth > 6 { 5 } else { 8 }) {
            0 => out.push_str(NUMBERS[rng.below(NUMBERS.len() as u64) as usize]),
            1 => out.push_str(STRINGS[rng.below(STRINGS.len() as u64) as usize]),
            2 => out.push_str(["true", "false", "null", "tru", "nulll"][rng.below(5) as usize]),
            3 => out.push_str(&(rng.next() as i64 >> rng.below(64)).to_string()),
            4 => out.push_str(&format!("{:e}", f64::from_bits(rng.next()))),
            5 | 6 => {
                out.push('[');
                for i in 0..rng.below(4) {
                    if i > 0 || rng.chance(3) {
                        out.push(',');
                    }
                    out.push_str([" ", "", "\n", "\t"][rng.below(4) as usize]);
                    random_json(rng, out, depth + 1);
                }
                if rng.chance(3) {
                    out.push(',');
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for i in 0..rng.below(4) {
                    if i > 0 || rng.chance(3) {
                        out.push(',');
                    }
                    out.push_str(STRINGS[rng.below(5) as usize]);
                    if !rng.chance(3) {
                        out.push(':');
                    }
                    random_json(rng, out, depth + 1);
                }
                out.push('}');
            }
        }
        if rng.chance(2) {
            out.push(['x', ',', ' ', '\r'][rng.below(4) as usize]);
        }
    }

    /// Deepest bracket nesting outside strings; exact for syntactically valid JSON.
    fn nesting(s: &str) -> usize {
        let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0, false, false);
        for c in s.chars() {
            match (in_str, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (true, false, '"') => in_str = false,
                (false, _, '"') => in_str = true,
                (false, _, '[' | '{') => {
                    depth += 1;
                    max = max.max(depth);
                }
                (false, _, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        max
    }

    #[test]
    fn json_check_agrees_with_serde_json_and_yrs() {
        let mut rng = Rng(7);
        let (mut valid_relayed, mut valid_any) = (0, 0);
        for i in 0..40_000 {
            let mut s = String::new();
            random_json(&mut rng, &mut s, 0);
            if i % 500 == 0 {
                // Depth around the serde_json limit.
                let d = 120 + rng.below(15) as usize;
                s = format!("{}{}{}", "[".repeat(d), s, "]".repeat(d));
            }
            // What JSON.parse accepts: serde_json's syntax-only path (no surrogate or range
            // checks, no recursion limit) plus our depth cap.
            let relayed_ok = serde_json::from_str::<serde::de::IgnoredAny>(&s).is_ok()
                && nesting(&s) <= MAX_JSON_DEPTH as usize;
            let any_ok = Any::from_json(&s).is_ok();
            assert_eq!(
                check_json(&s, JsonFlavor::Relayed).is_ok(),
                relayed_ok,
                "Relayed: {s:?}"
            );
            assert_eq!(
                check_json(&s, JsonFlavor::YrsAny).is_ok(),
                any_ok,
                "Any: {s:?}"
            );
            valid_relayed += usize::from(relayed_ok);
            valid_any += usize::from(any_ok);
        }
        // Both accepting and rejecting paths were exercised.
        assert!(
            valid_relayed > 4_000 && valid_relayed < 36_000,
            "{valid_relayed}"
        );
        assert!(valid_any > 4_000, "{valid_any}");
    }
}
