//! NVRTC: a translation unit → a CUBIN for one GPU architecture, with ptxas's per-kernel
//! register, spill and shared-memory counts (`-Xptxas=-v`). Results are cached on disk keyed by
//! (source hash, architecture, NVRTC version), so a binary compiles each objective once per
//! machine. libnvrtc (.so.12 or .so.13) is opened on first use; without it every entry point
//! returns [`CudaError::NoNvrtc`].

use super::CudaError;
use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::path::PathBuf;

/// A compiled translation unit.
#[derive(Clone, Debug)]
pub struct Cubin {
    pub arch: u32,
    pub image: Vec<u8>,
    pub kernels: Vec<KernelStats>,
}

/// What ptxas reports for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u64,
    pub spill_loads: u64,
    pub shared_bytes: u64,
}

/// Whether libnvrtc can be opened.
pub fn available() -> bool {
    library_present(Library::Nvrtc)
}

/// A CUDA library cudarc may need at run time.
pub enum Library {
    Driver,
    Nvrtc,
}

/// Whether `library` can be used: cudarc's loader tries to open it.
#[cfg(not(feature = "linked-cuda"))]
pub fn library_present(library: Library) -> bool {
    // SAFETY: each only tries to open its library.
    match library {
        Library::Driver => unsafe { cudarc::driver::sys::is_culib_present() },
        Library::Nvrtc => unsafe { sys::is_culib_present() },
    }
}

/// Built with `linked-cuda` (the `--features cuda` binary, where cudarc links the libraries),
/// every library is present: the binary would not have started otherwise.
#[cfg(feature = "linked-cuda")]
pub fn library_present(_library: Library) -> bool {
    true
}

/// The library's version, `(major, minor)`.
pub fn version() -> Result<(i32, i32), CudaError> {
    if !available() {
        return Err(CudaError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the call writes two ints.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::Driver(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// Compiles `source` for `sm_<arch>`, or reads the result of an earlier identical compilation.
pub fn compile(source: &str, arch: u32) -> Result<Cubin, CudaError> {
    let version = version()?;
    let cache = cache_path(source, arch, version);
    if let Some(cubin) = cache.as_ref().and_then(|path| read_cache(path, arch)) {
        return Ok(cubin);
    }
    let (image, log) = compile_uncached(source, arch)?;
    if let Some(path) = &cache {
        // A cache that cannot be written only costs a recompilation next time.
        let _ = std::fs::create_dir_all(path.parent().expect("cache files live in a folder"))
            .and_then(|()| std::fs::write(path.with_extension("log"), &log))
            .and_then(|()| std::fs::write(path, &image));
    }
    Ok(Cubin { arch, image, kernels: parse_ptxas_log(&log) })
}

/// NVRTC's options: the architecture, C++17 for the prelude's lambdas, ptxas statistics.
fn options(arch: u32) -> Vec<String> {
    vec![format!("--gpu-architecture=sm_{arch}"), "--std=c++17".into(), "-Xptxas=-v".into()]
}

fn compile_uncached(source: &str, arch: u32) -> Result<(Vec<u8>, String), CudaError> {
    let text = CString::new(source).map_err(|_| CudaError::Unsupported("a NUL byte in generated source".into()))?;
    let prog = result::create_program(&text, Some(c"sslc.cu"))
        .map_err(|e| CudaError::Driver(format!("nvrtcCreateProgram: {e:?}")))?;
    // SAFETY: `prog` is a live program created above and destroyed once below.
    let outcome = unsafe { result::compile_program(prog, &options(arch)) };
    let log = unsafe { result::get_program_log(prog) }
        .map(|chars| {
            let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .unwrap_or_default();
    let image =
        outcome.map_err(|_| CudaError::Compile { arch, log: log.clone(), text: source.to_string() }).and_then(|()| {
            let mut size = 0usize;
            // SAFETY: the program compiled; NVRTC writes `size` bytes into a buffer of that size.
            unsafe {
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| CudaError::Driver(format!("nvrtcGetCUBINSize: {e:?}")))?;
                let mut image = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, image.as_mut_ptr().cast())
                    .result()
                    .map_err(|e| CudaError::Driver(format!("nvrtcGetCUBIN: {e:?}")))?;
                Ok(image)
            }
        });
    // SAFETY: destroyed exactly once.
    let _ = unsafe { result::destroy_program(prog) };
    Ok((image?, log))
}

/// Per-kernel statistics from ptxas's verbose output:
/// `Compiling entry function 'k' for 'sm_90'`, then `N bytes spill stores, M bytes spill loads`
/// and `Used R registers, ..., S bytes smem`.
pub fn parse_ptxas_log(log: &str) -> Vec<KernelStats> {
    let mut kernels: Vec<KernelStats> = Vec::new();
    let number_before = |line: &str, unit: &str| -> Option<u64> {
        let end = line.find(unit)?;
        line[..end].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            kernels.push(KernelStats { name, ..KernelStats::default() });
        } else if let Some(k) = kernels.last_mut() {
            if let Some(v) = number_before(line, "bytes spill stores") {
                k.spill_stores = v;
            }
            if let Some(v) = number_before(line, "bytes spill loads") {
                k.spill_loads = v;
            }
            if let Some(v) = number_before(line, "registers") {
                k.registers = v as u32;
            }
            if let Some(v) = number_before(line, "bytes smem") {
                k.shared_bytes = v;
            }
        }
    }
    kernels.sort_by(|a, b| a.name.cmp(&b.name));
    kernels
}

/// `$SSLC_CACHE_DIR`, else `$XDG_CACHE_HOME/sslc`, else `~/.cache/sslc`; `None` when none is set.
fn cache_dir() -> Option<PathBuf> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("SSLC_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("sslc")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("sslc")))
}

fn cache_path(source: &str, arch: u32, (major, minor): (i32, i32)) -> Option<PathBuf> {
    let digest = Sha256::digest(source.as_bytes());
    let hash: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    Some(cache_dir()?.join("cuda").join(format!("{hash}-sm_{arch}-nvrtc{major}.{minor}.cubin")))
}

fn read_cache(path: &std::path::Path, arch: u32) -> Option<Cubin> {
    let image = std::fs::read(path).ok()?;
    let log = std::fs::read_to_string(path.with_extension("log")).ok()?;
    Some(Cubin { arch, image, kernels: parse_ptxas_log(&log) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_statistics_are_read_per_kernel() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'k01_map' for 'sm_90'\n\
ptxas info    : Function properties for k01_map\n\
ptxas         .     0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 30 registers, used 1 barriers, 35840 bytes smem, 400 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'k00_reduce' for 'sm_90'\n\
ptxas info    : Used 27 registers, used 0 barriers\n";
        let stats = parse_ptxas_log(log);
        assert_eq!(
            stats,
            vec![
                KernelStats { name: "k00_reduce".into(), registers: 27, ..KernelStats::default() },
                KernelStats {
                    name: "k01_map".into(),
                    registers: 30,
                    spill_stores: 8,
                    spill_loads: 12,
                    shared_bytes: 35840
                },
            ]
        );
    }
}
