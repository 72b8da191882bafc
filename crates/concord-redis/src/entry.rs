//! The value of one log entry: the updates one group commit wrote for one document.
//!
//! A version byte (1), then each update as a little-endian u32 length and its bytes. Decoding
//! checks every length against the bytes that remain, so a damaged entry is reported, never
//! trusted.

/// The current entry format.
const VERSION: u8 = 1;

/// Encodes the updates of one entry.
pub(crate) fn encode<'a>(updates: impl Iterator<Item = &'a [u8]> + Clone) -> Vec<u8> {
    let size: usize = updates.clone().map(|u| u.len() + 4).sum();
    let mut out = Vec::with_capacity(1 + size);
    out.push(VERSION);
    for update in updates {
        // Updates are bounded by the server's frame limit (far below 4 GiB).
        out.extend_from_slice(
            &u32::try_from(update.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out.extend_from_slice(update);
    }
    out
}

/// Decodes an entry, or says why it cannot be read.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let Some((&version, mut rest)) = bytes.split_first() else {
        return Err("empty entry".into());
    };
    if version != VERSION {
        return Err(format!(
            "entry format {version} is not one this server reads"
        ));
    }
    let mut updates = Vec::new();
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err("truncated length".into());
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err(format!("an update of {len} bytes with {} left", tail.len()));
        }
        let (update, tail) = tail.split_at(len);
        updates.push(update.to_vec());
        rest = tail;
    }
    Ok(updates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_reported() {
        let updates: Vec<Vec<u8>> = vec![vec![1, 2, 3], vec![], vec![9; 300]];
        let bytes = encode(updates.iter().map(Vec::as_slice));
        assert_eq!(decode(&bytes).unwrap(), updates);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[]).is_err());
        assert!(decode(&[2]).is_err());
        assert!(decode(&[1, 255, 255, 255, 255]).is_err());
        assert_eq!(decode(&[1]).unwrap(), Vec::<Vec<u8>>::new());
    }
}
