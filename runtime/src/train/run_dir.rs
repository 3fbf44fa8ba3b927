//! The run directory has one owner: the run that holds its lock. Everything a run writes
//! there, its `config.toml` included, is written only after the lock is taken and the
//! directory has been found fit for the way the run begins; a refused run changes nothing.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::{nothing_to_resume, TrainError, CHECKPOINT_FILE};
use crate::files::{self, TEMPORARY_MARK};
use crate::report::{self, tensorboard::EVENTS_FILE_PREFIX};

/// The lock file of a run directory: held (an OS lock, which the kernel releases when the
/// process dies) for the whole run, and holding the holder's pid for the error message.
pub const LOCK_FILE: &str = ".sslc.lock";

/// Whether [`super::train`] begins a run or continues one from its directory's checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run; its directory must be empty (or not exist).
    Fresh,
    /// A new run in a directory that may hold an earlier run, whose files it replaces.
    Overwrite,
    Resume,
}

/// Where a run writes, how it begins there, and the record of its settings.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
    pub start: Start,
    /// The text of the run's `config.toml` (everything that defines it, as its front end
    /// wrote it), written once the run holds the directory: by a new run, and by a resumed one
    /// only where the file is missing. `None` writes none.
    pub record: Option<String>,
}

impl RunDir {
    pub fn new(path: &Path, start: Start) -> RunDir {
        RunDir { path: path.to_path_buf(), start, record: None }
    }

    pub fn with_record(self, text: String) -> RunDir {
        RunDir { record: Some(text), ..self }
    }

    /// Rank 0's first act: creates the directory, takes its lock (refusing a live run's
    /// directory) and removes what killed writes left behind. Writes nothing else.
    pub(super) fn take(&self) -> Result<std::fs::File, TrainError> {
        if self.start == Start::Resume && !self.path.is_dir() {
            return Err(nothing_to_resume(&self.path));
        }
        std::fs::create_dir_all(&self.path)
            .map_err(|e| TrainError::Setup(format!("cannot create run directory {}: {e}", self.path.display())))?;
        lock(&self.path)
    }

    /// Under the lock, before the run writes: a fresh run's directory must hold no earlier
    /// run (a lone `config.toml` of a run that never trained is replaced); an overwriting run
    /// removes the earlier run's files, TensorBoard's included, so no result of it survives
    /// beside the new one's.
    pub(super) fn clear(&self) -> Result<(), TrainError> {
        let listed = std::fs::read_dir(&self.path)
            .map_err(|e| TrainError::Setup(format!("cannot list {}: {e}", self.path.display())))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != LOCK_FILE);
        match self.start {
            Start::Resume => Ok(()),
            Start::Fresh => {
                let mut earlier: Vec<String> = listed.filter(|name| name != report::CONFIG_FILE).collect();
                if earlier.is_empty() {
                    return Ok(());
                }
                earlier.sort();
                Err(TrainError::Setup(format!(
                    "{} already holds {}; resume it with --resume, replace it with --overwrite, or choose another --out",
                    self.path.display(),
                    earlier.join(", ")
                )))
            }
            Start::Overwrite => {
                for name in listed.filter(|name| is_run_file(name)) {
                    let path = self.path.join(&name);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(TrainError::Setup(format!("cannot replace {}: {e}", path.display()))),
                    }
                }
                Ok(())
            }
        }
    }

    /// Writes the record (atomically) once the run is known to go ahead: a resumed run keeps
    /// the record it has and gets one only where it lacks it.
    pub(super) fn write_record(&self) -> Result<(), TrainError> {
        let Some(text) = &self.record else { return Ok(()) };
        let path = self.path.join(report::CONFIG_FILE);
        if self.start == Start::Resume && path.exists() {
            return Ok(());
        }
        files::write_atomically(&path, text.as_bytes())
            .map_err(|e| TrainError::Setup(format!("cannot write {}: {e}", path.display())))
    }
}

/// The files a run writes into its directory (by name).
pub fn is_run_file(name: &str) -> bool {
    [CHECKPOINT_FILE, report::METRICS_FILE, report::SUMMARY_FILE, report::PER_CLASS_PLOT_FILE, report::CONFIG_FILE]
        .contains(&name)
        || name.starts_with(EVENTS_FILE_PREFIX)
        || name == LOCK_FILE
}

/// Whether writing `path` would replace a run's own file: any existing file of a run
/// directory (one holding a run's lock or checkpoint), or a checkpoint wherever it lies. Exports and
/// embeddings are refused there, so a typo cannot replace a training checkpoint.
pub fn inside_run(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let is_run = folder.join(LOCK_FILE).exists() || folder.join(CHECKPOINT_FILE).exists();
    ((name == CHECKPOINT_FILE || is_run) && path.exists()).then(|| folder.to_path_buf())
}

/// Takes the run directory's lock, so that two runs never write one directory; then removes
/// the temporary files that writes killed halfway left behind (none can be in progress now).
/// The lock file is opened without following a link, so a link planted in its place cannot
/// make the lock truncate another file.
fn lock(dir: &Path) -> Result<std::fs::File, TrainError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let setup = |what: &str, e: std::io::Error| TrainError::Setup(format!("{what} {}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => TrainError::Setup(format!(
                "{} is a symbolic link, not sslc's lock file; remove it, or give this run another --out",
                path.display()
            )),
            _ => setup("cannot open the run lock", e),
        })?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(TrainError::Setup(format!("{} is not a regular file; remove it", path.display())));
    }
    if let Err(e) = file.try_lock() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() { "another sslc run".to_string() } else { format!("sslc (pid {holder})") };
        return Err(TrainError::Setup(format!(
            "{} is in use by {who} ({e}); wait for it to finish, or give this run another --out",
            dir.display()
        )));
    }
    file.set_len(0).map_err(|e| setup("cannot write the run lock", e))?;
    file.rewind().map_err(|e| setup("cannot write the run lock", e))?;
    write!(file, "{}", std::process::id()).map_err(|e| setup("cannot write the run lock", e))?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(TEMPORARY_MARK) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(file)
}
