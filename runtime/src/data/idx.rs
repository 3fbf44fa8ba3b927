//! The IDX format of MNIST-style datasets: a big-endian magic (`0x0000`, type byte, rank byte),
//! one big-endian `u32` per dimension, then the data. Read gzipped or plain.

use super::{read_file, DataError};
use std::io::Read;
use std::path::Path;

/// An unsigned-byte IDX tensor.
#[derive(Debug, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

const UNSIGNED_BYTE: u8 = 0x08;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads an unsigned-byte IDX file of the given rank (1 for labels, 3 for images).
pub fn read_u8(path: &Path, rank: usize, hint: &str) -> Result<IdxArray, DataError> {
    let raw = read_file(path, hint)?;
    let malformed = |problem: String| DataError::Malformed {
        path: path.to_owned(),
        problem,
        expected: format!(
            "an IDX file of unsigned bytes with {rank} dimension(s) (magic 00 00 08 {rank:02x}), gzipped or not"
        ),
        hint: hint.to_owned(),
    };
    let bytes = if raw.starts_with(&GZIP_MAGIC) {
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut inflated)
            .map_err(|e| malformed(format!("the gzip stream is corrupt: {e}")))?;
        inflated
    } else {
        raw
    };
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(malformed(format!("{} bytes is shorter than the {header}-byte header", bytes.len())));
    }
    if bytes[0..2] != [0, 0] || bytes[2] != UNSIGNED_BYTE || usize::from(bytes[3]) != rank {
        return Err(malformed(format!("magic {:02x} {:02x} {:02x} {:02x}", bytes[0], bytes[1], bytes[2], bytes[3])));
    }
    let dims: Vec<usize> =
        bytes[4..header].chunks_exact(4).map(|d| u32::from_be_bytes(d.try_into().expect("4 bytes")) as usize).collect();
    let size = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if size != Some(bytes.len() - header) {
        return Err(malformed(format!("dimensions {dims:?} do not match the {} data bytes", bytes.len() - header)));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}
