//! `.npy` files (NumPy's format, version 1–3): what `sslc eval` reads inputs from and writes
//! results to. Little-endian f32, f64, i32, i64, u8 and bool arrays in C order.

use candle_core::{DType, Device, Tensor};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a .npy file ({why})")]
    Format { path: String, why: String },
    #[error("{path}: unsupported array type `{descr}`; save it as float32 or float64 (e.g. `np.save(path, x.astype(np.float32))`)")]
    Dtype { path: String, descr: String },
    #[error("{path}: Fortran-order arrays are not supported; save with `np.ascontiguousarray(x)`")]
    Fortran { path: String },
    #[error("{path}: the header promises {expected} bytes of data but the file holds {actual}")]
    Truncated { path: String, expected: usize, actual: usize },
    #[error("{path}: {source}")]
    Tensor { path: String, source: candle_core::Error },
}

const MAGIC: &[u8] = b"\x93NUMPY";

pub fn read(path: &Path) -> Result<Tensor, NpyError> {
    let p = path.display().to_string();
    let bytes =
        crate::front::read_regular(path, u64::MAX).map_err(|source| NpyError::Io { path: p.clone(), source })?;
    parse(&bytes, &p)
}

/// Parses the bytes of a `.npy` file; `path` names it in errors.
pub fn parse(bytes: &[u8], path: &str) -> Result<Tensor, NpyError> {
    let format = |why: &str| NpyError::Format { path: path.to_string(), why: why.to_string() };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(format("missing the \\x93NUMPY magic"));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(format("truncated header"));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format(&format!("unknown format version {v}"))),
    };
    let header = bytes.get(start..start + header_len).ok_or_else(|| format("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| format("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| format("header has no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"').to_string();
    let fortran = dict_value(header, "fortran_order").ok_or_else(|| format("header has no 'fortran_order'"))?;
    if fortran.starts_with("True") {
        return Err(NpyError::Fortran { path: path.to_string() });
    }
    let shape_text = dict_value(header, "shape").ok_or_else(|| format("header has no 'shape'"))?;
    let shape: Vec<usize> = shape_text
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format("bad shape")))
        .collect::<Result<_, _>>()?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| format("shape too large"))?;
    let data = &bytes[start + header_len..];
    let width = match descr.as_str() {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        "|u1" | "|b1" => 1,
        _ => return Err(NpyError::Dtype { path: path.to_string(), descr }),
    };
    let expected = count.checked_mul(width).ok_or_else(|| format("shape too large"))?;
    if data.len() < expected {
        return Err(NpyError::Truncated { path: path.to_string(), expected, actual: data.len() });
    }
    let data = &data[..expected];
    let tensor =
        |r: candle_core::Result<Tensor>| r.map_err(|source| NpyError::Tensor { path: path.to_string(), source });
    let chunks = |w: usize| data.chunks_exact(w);
    match descr.as_str() {
        "<f4" => tensor(Tensor::from_vec(
            chunks(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        )),
        "<f8" => tensor(Tensor::from_vec(
            chunks(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        )),
        "<i4" => tensor(Tensor::from_vec(
            chunks(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        )),
        "<i8" => tensor(Tensor::from_vec(
            chunks(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect::<Vec<_>>(),
            shape,
            &Device::Cpu,
        )),
        _ => tensor(Tensor::from_vec(data.to_vec(), shape, &Device::Cpu)),
    }
}

/// The text after `'key':` up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    Some(rest)
}

/// Writes a tensor as `.npy` (f32, f64 or i64; anything else is written as f32), atomically.
pub fn write(path: &Path, t: &Tensor) -> Result<(), NpyError> {
    let p = path.display().to_string();
    let tensor_err = |source| NpyError::Tensor { path: p.clone(), source };
    let flat = t.flatten_all().map_err(tensor_err)?;
    let (descr, data): (&str, Vec<u8>) = match t.dtype() {
        DType::F64 => {
            ("<f8", flat.to_vec1::<f64>().map_err(tensor_err)?.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
        DType::I64 => {
            ("<i8", flat.to_vec1::<i64>().map_err(tensor_err)?.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
        _ => (
            "<f4",
            flat.to_dtype(DType::F32)
                .and_then(|f| f.to_vec1::<f32>())
                .map_err(tensor_err)?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    };
    let shape = match t.dims() {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary, as NumPy does.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    // A fresh temporary beside `path` (random name, created exclusively: nothing planted
    // there is followed), renamed over it once whole.
    let io = |source| NpyError::Io { path: p.clone(), source };
    let folder = path.parent().filter(|f| !f.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temporary = tempfile::Builder::new()
        .prefix(".npy.tmp-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(folder)
        .map_err(io)?;
    std::io::Write::write_all(&mut temporary, &bytes).map_err(io)?;
    temporary.persist(path).map(drop).map_err(|e| io(e.error))
}
