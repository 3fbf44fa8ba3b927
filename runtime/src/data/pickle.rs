//! A reader for the subset of Python's pickle format that the CIFAR "python version" files
//! use: protocol 2 (as cPickle wrote them) and later protocols' byte strings, dicts, lists,
//! tuples, ints, and numpy arrays in the `numpy.core.multiarray._reconstruct` + `BUILD` form.
//! Anything else is refused with the opcode and byte offset, never guessed at.

use std::rc::Rc;

#[derive(Debug, thiserror::Error)]
#[error("pickle byte {offset}: {message}")]
pub struct PickleError {
    pub offset: usize,
    pub message: String,
}

/// An n-dimensional numpy array in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct NdArray {
    pub shape: Vec<usize>,
    /// numpy's type string with byte order, e.g. `|u1`, `<i8`.
    pub dtype: String,
    pub data: Rc<[u8]>,
}

impl NdArray {
    /// The elements as integers, for any 1-, 2-, 4- or 8-byte integer dtype.
    pub fn to_integers(&self) -> Option<Vec<i64>> {
        let (order, kind, size) = split_dtype(&self.dtype)?;
        if kind != 'i' && kind != 'u' || (order == '>' && size > 1) {
            return None;
        }
        let values = self.data.chunks_exact(size).map(|bytes| {
            let mut raw = [0u8; 8];
            raw[..size].copy_from_slice(bytes);
            let unsigned = u64::from_le_bytes(raw);
            if kind == 'i' && size < 8 && unsigned >> (8 * size - 1) & 1 == 1 {
                (unsigned | (u64::MAX << (8 * size))) as i64
            } else {
                unsigned as i64
            }
        });
        Some(values.collect())
    }
}

fn split_dtype(dtype: &str) -> Option<(char, char, usize)> {
    let mut chars = dtype.chars();
    let order = chars.next()?;
    let kind = chars.next()?;
    let size: usize = chars.as_str().parse().ok()?;
    matches!(size, 1 | 2 | 4 | 8).then_some((order, kind, size))
}

#[derive(Clone, Debug, PartialEq)]
pub enum PickleValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Python 2 `str` and Python 3 `bytes`, as `pickle.load(..., encoding="bytes")` gives them.
    Bytes(Rc<[u8]>),
    Str(String),
    List(Vec<PickleValue>),
    Tuple(Vec<PickleValue>),
    Dict(Vec<(PickleValue, PickleValue)>),
    Array(NdArray),
    Global {
        module: String,
        name: String,
    },
    /// `numpy.dtype(...)` before its `BUILD` sets the byte order.
    Dtype(String),
    /// `_reconstruct(ndarray, (0,), b'b')` before its `BUILD` fills it.
    EmptyArray,
}

impl PickleValue {
    /// The text of a `str`, or of ASCII `bytes` (Python 2 pickles store text as bytes).
    pub fn as_text(&self) -> Option<&str> {
        match self {
            PickleValue::Str(text) => Some(text),
            PickleValue::Bytes(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    /// A dict's value for a key given as text, matching `str` and `bytes` keys alike.
    pub fn get(&self, key: &str) -> Option<&PickleValue> {
        match self {
            PickleValue::Dict(entries) => entries.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A list of ints or an integer numpy array as integers.
    pub fn to_integers(&self) -> Option<Vec<i64>> {
        match self {
            PickleValue::List(items) => {
                items.iter().map(|v| if let PickleValue::Int(i) = v { Some(*i) } else { None }).collect()
            }
            PickleValue::Array(array) => array.to_integers(),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            PickleValue::None => "None",
            PickleValue::Bool(_) => "bool",
            PickleValue::Int(_) => "int",
            PickleValue::Float(_) => "float",
            PickleValue::Bytes(_) => "bytes",
            PickleValue::Str(_) => "str",
            PickleValue::List(_) => "list",
            PickleValue::Tuple(_) => "tuple",
            PickleValue::Dict(_) => "dict",
            PickleValue::Array(_) => "numpy array",
            PickleValue::Global { .. } => "global",
            PickleValue::Dtype(_) => "numpy dtype",
            PickleValue::EmptyArray => "unfilled numpy array",
        }
    }
}

/// What the memo holds. Lists and dicts are mutated after being memoised, so a copy would be
/// stale: a later reference to one is refused (CIFAR files never make one).
#[derive(Clone)]
enum MemoEntry {
    Value(PickleValue),
    MutableContainer,
}

/// Parses one pickle.
pub fn parse(bytes: &[u8]) -> Result<PickleValue, PickleError> {
    Parser { bytes, position: 0, stack: Vec::new(), marks: Vec::new(), memo: std::collections::HashMap::new() }.run()
}

struct Parser<'a> {
    bytes: &'a [u8],
    position: usize,
    stack: Vec<PickleValue>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u32, MemoEntry>,
}

impl<'a> Parser<'a> {
    fn error<T>(&self, message: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError { offset: self.position, message: message.into() })
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], PickleError> {
        if self.bytes.len() - self.position < count {
            return self.error(format!(
                "truncated: needs {count} more bytes, the file has {}",
                self.bytes.len() - self.position
            ));
        }
        let slice = &self.bytes[self.position..self.position + count];
        self.position += count;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    /// The length before a string: one byte for the short forms, eight for protocol 4's
    /// long forms, four otherwise.
    fn length_prefix(&mut self, opcode: u8) -> Result<usize, PickleError> {
        match opcode {
            b'U' | b'C' | 0x8c => Ok(usize::from(self.u8()?)),
            0x8e | 0x8d => {
                let length = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
                usize::try_from(length).or_else(|_| self.error(format!("length {length} does not fit in memory")))
            }
            _ => Ok(self.u32()? as usize),
        }
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.position..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return self.error("unterminated text argument");
        };
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.position += end + 1;
        Ok(text)
    }

    fn text(&mut self, length: usize) -> Result<String, PickleError> {
        let raw = self.take(length)?;
        match std::str::from_utf8(raw) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => self.error("a unicode string is not valid UTF-8"),
        }
    }

    fn pop(&mut self) -> Result<PickleValue, PickleError> {
        match self.stack.pop() {
            Some(value) => Ok(value),
            None => self.error("stack underflow"),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<PickleValue>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return self.error("no MARK to pop to");
        };
        if mark > self.stack.len() {
            return self.error("MARK above the stack top");
        }
        Ok(self.stack.split_off(mark))
    }

    /// Adds `items` to the list (APPEND) or key-value pairs to the dict (SETITEM) on the
    /// stack top.
    fn extend_top(&mut self, items: Vec<PickleValue>) -> Result<(), PickleError> {
        let position = self.position;
        let refuse = |message: String| Err(PickleError { offset: position, message });
        match self.stack.last_mut() {
            Some(PickleValue::List(list)) => list.extend(items),
            Some(PickleValue::Dict(dict)) => {
                if !items.len().is_multiple_of(2) {
                    return refuse("SETITEMS with an odd number of keys and values".into());
                }
                let mut items = items.into_iter();
                while let (Some(key), Some(value)) = (items.next(), items.next()) {
                    dict.push((key, value));
                }
            }
            Some(other) => return refuse(format!("adding items to a {}, expected a list or dict", other.kind())),
            None => return refuse("stack underflow".into()),
        }
        Ok(())
    }

    fn memoize(&mut self, key: u32) -> Result<(), PickleError> {
        let entry = match self.stack.last() {
            Some(PickleValue::List(_) | PickleValue::Dict(_)) => MemoEntry::MutableContainer,
            Some(value) => MemoEntry::Value(value.clone()),
            None => return self.error("memoising an empty stack"),
        };
        self.memo.insert(key, entry);
        Ok(())
    }

    fn recall(&mut self, key: u32) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(MemoEntry::Value(value)) => {
                let value = value.clone();
                self.stack.push(value);
                Ok(())
            }
            Some(MemoEntry::MutableContainer) => {
                self.error(format!("memo {key} refers back to a list or dict; shared references are not supported"))
            }
            None => self.error(format!("memo {key} was never stored")),
        }
    }

    fn reduce(&mut self) -> Result<(), PickleError> {
        let args = self.pop()?;
        let callable = self.pop()?;
        let PickleValue::Tuple(args) = args else {
            return self.error(format!("REDUCE arguments are a {}, expected a tuple", args.kind()));
        };
        let PickleValue::Global { module, name } = &callable else {
            return self.error(format!("REDUCE of a {}, expected a global", callable.kind()));
        };
        let value = match (module.as_str(), name.as_str(), args.as_slice()) {
            (
                "numpy.core.multiarray" | "numpy._core.multiarray",
                "_reconstruct",
                [PickleValue::Global { name: class, .. }, ..],
            ) if class == "ndarray" => PickleValue::EmptyArray,
            ("numpy", "dtype", [type_name, ..]) => match type_name.as_text() {
                Some(text) => PickleValue::Dtype(text.to_owned()),
                None => return self.error("numpy.dtype with a non-text type name"),
            },
            // Python 3 writes `bytes` at protocol 2 as `_codecs.encode(text, "latin1")`.
            ("_codecs", "encode", [PickleValue::Str(text), encoding])
                if matches!(encoding.as_text(), Some("latin1" | "latin-1")) =>
            {
                let mut bytes = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match u8::try_from(u32::from(c)) {
                        Ok(byte) => bytes.push(byte),
                        Err(_) => return self.error("_codecs.encode: a character outside latin-1"),
                    }
                }
                PickleValue::Bytes(bytes.into())
            }
            _ => {
                return self.error(format!(
                    "unsupported call {module}.{name}; only numpy arrays, dtypes and byte strings are understood"
                ))
            }
        };
        self.stack.push(value);
        Ok(())
    }

    fn build(&mut self) -> Result<(), PickleError> {
        let state = self.pop()?;
        let object = self.pop()?;
        let built = match (object, state) {
            (PickleValue::Dtype(type_name), PickleValue::Tuple(state)) => {
                let byte_order = state.get(1).and_then(PickleValue::as_text).unwrap_or("|");
                let bare = type_name.trim_start_matches(['<', '>', '|', '=']);
                let order = if byte_order == "=" { "<" } else { byte_order };
                PickleValue::Dtype(format!("{order}{bare}"))
            }
            (PickleValue::EmptyArray, PickleValue::Tuple(state)) => self.array_from_state(state)?,
            (object, state) => {
                return self.error(format!(
                    "BUILD of a {} with a {} state is not supported",
                    object.kind(),
                    state.kind()
                ))
            }
        };
        self.stack.push(built);
        Ok(())
    }

    /// numpy's `ndarray.__setstate__((version, shape, dtype, is_fortran, raw_bytes))`.
    fn array_from_state(&self, state: Vec<PickleValue>) -> Result<PickleValue, PickleError> {
        let [_, PickleValue::Tuple(shape), PickleValue::Dtype(dtype), fortran, PickleValue::Bytes(data)] =
            state.as_slice()
        else {
            return self.error("numpy array state is not (version, shape, dtype, fortran, raw bytes)");
        };
        if matches!(fortran, PickleValue::Bool(true) | PickleValue::Int(1)) {
            return self.error("Fortran-ordered numpy arrays are not supported");
        }
        let mut dims = Vec::with_capacity(shape.len());
        for dim in shape {
            match dim {
                PickleValue::Int(n) if *n >= 0 => dims.push(*n as usize),
                _ => return self.error("numpy array shape holds a non-integer"),
            }
        }
        let Some((_, _, item_size)) = split_dtype(dtype) else {
            return self.error(format!("numpy dtype `{dtype}` is not supported"));
        };
        let expected = dims.iter().product::<usize>() * item_size;
        if data.len() != expected {
            return self.error(format!(
                "numpy array of shape {dims:?} and dtype {dtype} needs {expected} bytes, the pickle holds {}",
                data.len()
            ));
        }
        Ok(PickleValue::Array(NdArray { shape: dims, dtype: dtype.clone(), data: data.clone() }))
    }

    fn run(mut self) -> Result<PickleValue, PickleError> {
        loop {
            let opcode = self.u8()?;
            match opcode {
                0x80 => {
                    let protocol = self.u8()?;
                    if protocol > 5 {
                        return self.error(format!("pickle protocol {protocol} is newer than 5"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(PickleValue::Dict(Vec::new())),
                b']' => self.stack.push(PickleValue::List(Vec::new())),
                b')' => self.stack.push(PickleValue::Tuple(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(PickleValue::Dict(Vec::new()));
                    self.extend_top(items)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(PickleValue::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(PickleValue::Tuple(items));
                }
                0x85..=0x87 => {
                    let count = usize::from(opcode - 0x84);
                    if self.stack.len() < count {
                        return self.error("stack underflow building a tuple");
                    }
                    let items = self.stack.split_off(self.stack.len() - count);
                    self.stack.push(PickleValue::Tuple(items));
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_top(vec![item])?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_top(vec![key, value])?;
                }
                b'e' | b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items)?;
                }
                b'J' => {
                    let value = self.u32()? as i32;
                    self.stack.push(PickleValue::Int(i64::from(value)));
                }
                b'K' => {
                    let value = self.u8()?;
                    self.stack.push(PickleValue::Int(i64::from(value)));
                }
                b'M' => {
                    let value = self.u16()?;
                    self.stack.push(PickleValue::Int(i64::from(value)));
                }
                0x8a => {
                    let length = usize::from(self.u8()?);
                    if length > 8 {
                        return self.error(format!("a {length}-byte integer does not fit in 64 bits"));
                    }
                    let raw = self.take(length)?;
                    let mut bytes = [0u8; 8];
                    bytes[..length].copy_from_slice(raw);
                    let negative = length > 0 && raw[length - 1] & 0x80 != 0;
                    if negative {
                        bytes[length..].fill(0xff);
                    }
                    self.stack.push(PickleValue::Int(i64::from_le_bytes(bytes)));
                }
                b'G' => {
                    let raw = self.take(8)?;
                    self.stack.push(PickleValue::Float(f64::from_be_bytes(raw.try_into().expect("8 bytes"))));
                }
                b'N' => self.stack.push(PickleValue::None),
                0x88 => self.stack.push(PickleValue::Bool(true)),
                0x89 => self.stack.push(PickleValue::Bool(false)),
                b'T' | b'B' | b'U' | b'C' | 0x8e => {
                    let length = self.length_prefix(opcode)?;
                    let raw = self.take(length)?;
                    self.stack.push(PickleValue::Bytes(raw.into()));
                }
                b'X' | 0x8c | 0x8d => {
                    let length = self.length_prefix(opcode)?;
                    let text = self.text(length)?;
                    self.stack.push(PickleValue::Str(text));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(PickleValue::Global { module, name });
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(module), Some(name)) = (module.as_text(), name.as_text()) else {
                        return self.error("STACK_GLOBAL needs two strings");
                    };
                    let global = PickleValue::Global { module: module.to_owned(), name: name.to_owned() };
                    self.stack.push(global);
                }
                b'R' => self.reduce()?,
                b'b' => self.build()?,
                b'q' => {
                    let key = u32::from(self.u8()?);
                    self.memoize(key)?;
                }
                b'r' => {
                    let key = self.u32()?;
                    self.memoize(key)?;
                }
                0x94 => {
                    let key = self.memo.len() as u32;
                    self.memoize(key)?;
                }
                b'h' => {
                    let key = u32::from(self.u8()?);
                    self.recall(key)?;
                }
                b'j' => {
                    let key = self.u32()?;
                    self.recall(key)?;
                }
                other => {
                    self.position -= 1;
                    return self.error(format!("unsupported opcode 0x{other:02x} ({:?})", char::from(other)));
                }
            }
        }
    }
}
