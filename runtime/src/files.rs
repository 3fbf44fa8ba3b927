//! Files users can trust: every file sslc writes appears whole or not at all, no write follows a
//! link planted beforehand, and every file sslc reads is a regular file (a FIFO or a device
//! would block or never end). The run directory's own rules build on these (`train::run_dir`).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The part of a temporary file's name that marks it as one: `.NAME.tmp-RANDOM`. Taking a run
/// directory removes leftovers of killed writes by this mark.
pub const TEMPORARY_MARK: &str = ".tmp-";

/// The folder `path` lives in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// A new temporary file beside `path`, under a random name, created exclusively (`O_EXCL`:
/// a file or link planted under that name fails the creation instead of being followed).
fn temporary_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"))?;
    // 0666 less the umask, as any file the user creates (tempfile's default, 0600, would
    // hide results from the user's group).
    tempfile::Builder::new()
        .prefix(&format!(".{}{TEMPORARY_MARK}", name.to_string_lossy()))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(parent_of(path))
}

/// Writes `path` atomically through `fill`: into a fresh temporary file beside it, synced, then
/// renamed over it (a rename replaces a link at `path` rather than writing through it) and the
/// folder synced, so readers see the old file or the new one, never a torn one.
pub fn write_atomically_with(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut temporary = temporary_beside(path)?;
    fill(temporary.as_file_mut())?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|e| e.error)?;
    fs::File::open(parent_of(path))?.sync_all()
}

/// [`write_atomically_with`] for bytes in memory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically_with(path, |file| file.write_all(bytes))
}

/// Opens `path` for reading only if it is a regular file. The open itself does not block on a
/// FIFO (`O_NONBLOCK`), and the check is on the opened file, so nothing swapped in between
/// the check and the read can make a read hang.
pub fn open_regular(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() { "a directory" } else { "not a regular file (a pipe, socket or device)" };
        return Err(std::io::Error::other(format!("{what}; sslc reads only regular files")));
    }
    Ok(file)
}

/// The whole of a regular file (see [`open_regular`]).
pub fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_to_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_regular(path)?).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A set of files published together as the folder `dest`: they are written into a fresh
/// temporary folder beside it, which then takes `dest`'s place in one atomic exchange, so a
/// reader (or a kill) never sees files of two different sets side by side.
pub struct FolderSet {
    staging: tempfile::TempDir,
    dest: PathBuf,
}

impl FolderSet {
    /// Begins a set for `dest`. An existing `dest` may only hold files named in `owned` (an
    /// earlier set of the same kind), since publishing replaces the whole folder.
    pub fn begin(dest: &Path, owned: &[&str]) -> std::io::Result<FolderSet> {
        if let Ok(entries) = fs::read_dir(dest) {
            let mut foreign: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !owned.contains(&name.as_str()))
                .collect();
            if !foreign.is_empty() {
                foreign.sort();
                return Err(std::io::Error::other(format!(
                    "{} also holds {}, which writing this set would replace; give an empty or new folder",
                    dest.display(),
                    foreign.join(", ")
                )));
            }
        } else if dest.exists() {
            return Err(std::io::Error::other(format!("{} exists and is not a folder", dest.display())));
        }
        let name = dest.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
        fs::create_dir_all(parent_of(dest))?;
        let staging =
            tempfile::Builder::new().prefix(&format!(".{name}{TEMPORARY_MARK}")).tempdir_in(parent_of(dest))?;
        Ok(FolderSet { staging, dest: dest.to_path_buf() })
    }

    /// Where to write the set's file `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.staging.path().join(name)
    }

    /// Makes the staged folder `dest`, in one step.
    pub fn publish(self) -> std::io::Result<()> {
        let staged = self.staging.keep();
        fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let result = match fs::symlink_metadata(&self.dest) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::rename(&staged, &self.dest),
            Err(e) => Err(e),
            Ok(_) => exchange(&staged, &self.dest).and_then(|()| fs::remove_dir_all(&staged)),
        };
        if result.is_err() {
            let _ = fs::remove_dir_all(&staged);
        }
        result.and_then(|()| fs::File::open(parent_of(&self.dest))?.sync_all())
    }
}

/// Swaps two paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both arguments are valid NUL-terminated paths that outlive the call; AT_FDCWD
    // resolves them as `rename` would.
    let status =
        unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    match status {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_a_planted_link_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let target = dir.path().join("out.bin");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomically(&target, b"new").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        assert!(!fs::symlink_metadata(&target).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let error = read_regular(&fifo).unwrap_err().to_string();
        assert!(error.contains("not a regular file"), "{error}");
    }

    #[test]
    fn a_folder_set_replaces_the_old_set_whole_and_refuses_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("emb");
        for round in ["one", "two"] {
            let set = FolderSet::begin(&dest, &["a", "b"]).unwrap();
            fs::write(set.path("a"), round).unwrap();
            fs::write(set.path("b"), round).unwrap();
            set.publish().unwrap();
            assert_eq!(fs::read_to_string(dest.join("a")).unwrap(), round);
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no staging folder is left behind");
        fs::write(dest.join("mine.txt"), "keep").unwrap();
        let error = FolderSet::begin(&dest, &["a", "b"]).err().unwrap().to_string();
        assert!(error.contains("mine.txt"), "{error}");
    }
}
