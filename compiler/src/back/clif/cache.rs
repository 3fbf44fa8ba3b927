//! Compiled objectives, kept for the life of the process: compiling the same optimised program
//! for the same machine with the same sslc gives the same code, so it is compiled once (the
//! training loop, the test suite and `sslc bench` build the same objective many times).

use super::Compiled;
use crate::ir::Program;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What identifies compiled code: the optimised program, the target ISA and this compiler.
pub(crate) type Key = [u8; 32];

pub(crate) fn key(program: &Program, isa: &str) -> Key {
    let mut h = Sha256::new();
    // Everything that determines the code; not `names` (only for printing) nor `spans`.
    h.update(format!("{:?}|{:?}|{:?}|{:?}", program.exprs, program.types, program.body, program.outputs));
    h.update(isa.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.finalize().into()
}

fn cache() -> &'static Mutex<HashMap<Key, Arc<Compiled>>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Compiled>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The code for `key`, compiled by `compile` the first time it is asked for.
pub(crate) fn get_or_compile<E>(key: Key, compile: impl FnOnce() -> Result<Compiled, E>) -> Result<Arc<Compiled>, E> {
    if let Some(c) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    // Compiled outside the lock: other objectives need not wait.
    let compiled = Arc::new(compile()?);
    let mut map = cache().lock().unwrap_or_else(|e| e.into_inner());
    Ok(map.entry(key).or_insert(compiled).clone())
}
