//! `sslc run --gpus N`: one process per GPU on one machine, without MPI. The parent makes the
//! NCCL unique id, starts N copies of itself with the id, rank and world size in environment
//! variables, and supervises them: NCCL calls block without a timeout, so a rank that dies
//! would leave the others waiting forever; the parent notices the death instead, kills the
//! others and names the lost rank.
//!
//! Nothing here needs a GPU: the supervision is tested with plain shell commands as ranks.

use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use super::DistError;

/// The NCCL unique id, as hex, in a process started by `--gpus`.
pub const ID_VARIABLE: &str = "SSLC_NCCL_ID";
/// The rank of a process started by `--gpus`; its GPU is `cuda:<rank>`.
pub const RANK_VARIABLE: &str = "SSLC_NCCL_RANK";
/// The number of ranks `--gpus` started.
pub const WORLD_VARIABLE: &str = "SSLC_NCCL_WORLD";
/// The parent's start time, so every rank names a default run directory alike.
pub const STAMP_VARIABLE: &str = "SSLC_RUN_STAMP";

/// How often the parent looks at its ranks.
const POLL: Duration = Duration::from_millis(100);

/// What a process started by `--gpus` was told by its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuRank {
    pub rank: usize,
    pub world: usize,
    pub id: Vec<u8>,
}

impl GpuRank {
    /// The rank this process is, if a `--gpus` parent started it.
    pub fn from_environment() -> Result<Option<GpuRank>, DistError> {
        let Some(rank) = std::env::var_os(RANK_VARIABLE) else {
            return Ok(None);
        };
        let broken = |what: &str| {
            DistError::Setup(format!(
                "{RANK_VARIABLE} is set, so this process is one rank of `sslc run --gpus`, but {what}; these variables \
                 are for the processes `--gpus` starts: unset {RANK_VARIABLE}, {WORLD_VARIABLE} and {ID_VARIABLE}"
            ))
        };
        let number = |value: Option<OsString>, name: &str| {
            value
                .and_then(|v| v.to_str().and_then(|v| v.trim().parse::<usize>().ok()))
                .ok_or_else(|| broken(&format!("{name} is not a number")))
        };
        let rank = number(Some(rank), RANK_VARIABLE)?;
        let world = number(std::env::var_os(WORLD_VARIABLE), WORLD_VARIABLE)?;
        let id = std::env::var(ID_VARIABLE)
            .ok()
            .and_then(|hex| from_hex(&hex))
            .ok_or_else(|| broken(&format!("{ID_VARIABLE} is not an id in hex")))?;
        if rank >= world {
            return Err(broken(&format!("rank {rank} is not below the world size {world}")));
        }
        Ok(Some(GpuRank { rank, world, id }))
    }
}

/// The offset of this process's GPU among the machine's: its rank under `--gpus`, its local
/// rank under a launcher that starts several ranks per machine (`mpirun`, `srun`), else 0.
pub fn local_rank(gpu: Option<&GpuRank>) -> usize {
    if let Some(gpu) = gpu {
        return gpu.rank;
    }
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
        .iter()
        .find_map(|name| std::env::var(name).ok().and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

/// Starts `world` ranks, each from `command(rank)` with the rank, world size, id and `stamp`
/// in its environment. Each rank is killed if the parent dies (Linux), so none is left
/// waiting in NCCL for a parent that is gone; the kernel ties that to the calling thread, so
/// call this from one that outlives the ranks (the CLI's main thread). On failure the ranks
/// already started are killed.
pub fn spawn_ranks(
    world: usize,
    id: &[u8],
    stamp: &str,
    mut command: impl FnMut(usize) -> Command,
) -> Result<Vec<Child>, DistError> {
    let mut children: Vec<Child> = Vec::with_capacity(world);
    for rank in 0..world {
        let mut rank_command = command(rank);
        rank_command
            .env(RANK_VARIABLE, rank.to_string())
            .env(WORLD_VARIABLE, world.to_string())
            .env(ID_VARIABLE, to_hex(id))
            .env(STAMP_VARIABLE, stamp);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the child between fork and exec, where only async-signal-safe
            // calls are allowed; prctl is a plain system call that allocates nothing.
            unsafe {
                rank_command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        match rank_command.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                stop(&mut children);
                return Err(DistError::Setup(format!("cannot start rank {rank}: {e}")));
            }
        }
    }
    Ok(children)
}

fn stop(children: &mut [Child]) {
    for child in children.iter_mut() {
        let _ = child.kill();
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
}

/// How a rank ended, in words: `exited with status 3`, `was killed by signal 9 (SIGKILL)`.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => {
            let name = match signal {
                libc::SIGKILL => " (SIGKILL: killed, often by the out-of-memory killer)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                _ => "",
            };
            format!("was killed by signal {signal}{name}")
        }
        _ => format!("ended with {status}"),
    }
}

/// Waits for every rank. When one ends in failure, the others are killed at once (they would
/// otherwise block in their next collective call) and the error names the lost rank; ranks
/// that finish successfully are left to the others (only rank 0 evaluates, so the others end
/// first).
pub fn supervise(mut children: Vec<Child>) -> Result<(), DistError> {
    let mut running: Vec<bool> = vec![true; children.len()];
    while running.iter().any(|&r| r) {
        for rank in 0..children.len() {
            if !running[rank] {
                continue;
            }
            let status = match children[rank].try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => status,
                Err(e) => {
                    stop(&mut children);
                    return Err(DistError::Setup(format!("cannot watch rank {rank}: {e}")));
                }
            };
            running[rank] = false;
            if !status.success() {
                let others = running.iter().filter(|&&r| r).count();
                stop(&mut children);
                return Err(DistError::Setup(format!(
                    "rank {rank} of {} {}; stopped the {others} rank(s) still running (rank {rank}'s own message, if \
                     any, is above; `--resume` continues from the last complete epoch)",
                    children.len(),
                    describe_exit(status)
                )));
            }
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn shell(script: &'static str) -> impl FnMut(usize) -> Command {
        move |_| {
            let mut command = Command::new("sh");
            command.args(["-c", script]);
            command
        }
    }

    #[test]
    fn ids_travel_as_hex() {
        let id: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&id)), Some(id));
        for bad in ["abc", "zz", "é0"] {
            assert_eq!(from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn ranks_that_all_succeed_are_waited_for() {
        let script = "[ \"$SSLC_NCCL_WORLD\" = 3 ] && [ \"$SSLC_NCCL_ID\" = 00ff ] && [ \"$SSLC_RUN_STAMP\" = s ]";
        let children = spawn_ranks(3, &[0, 255], "s", shell(script)).unwrap();
        supervise(children).unwrap();
    }

    /// A failing rank stops the others, which would otherwise wait (here: sleep) for a minute,
    /// and the error names it and how it ended.
    #[test]
    fn a_lost_rank_stops_the_others_and_is_named() {
        let started = Instant::now();
        let script = "if [ \"$SSLC_NCCL_RANK\" = 1 ]; then sleep 0.3; exit 3; fi; sleep 60";
        let error = supervise(spawn_ranks(3, &[1], "s", shell(script)).unwrap()).unwrap_err().to_string();
        assert!(error.contains("rank 1 of 3 exited with status 3") && error.contains("stopped the 2 rank"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());

        let script = "if [ \"$SSLC_NCCL_RANK\" = 0 ]; then kill -9 $$; fi; sleep 60";
        let error = supervise(spawn_ranks(2, &[1], "s", shell(script)).unwrap()).unwrap_err().to_string();
        assert!(error.contains("rank 0 of 2 was killed by signal 9"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
    }

    #[test]
    fn a_rank_that_cannot_start_is_named() {
        let error = spawn_ranks(2, &[1], "s", |_| Command::new("/nonexistent/sslc")).unwrap_err().to_string();
        assert!(error.contains("cannot start rank 0"), "{error}");
    }
}
