//! How much work the kernel's verifier did to accept each of oxd's programs.
//!
//! The verifier explores every path through a program; the number of instructions it processed
//! (`bpf_prog_info.verified_insns`, reported since Linux 5.16) is what grows when a hook gets
//! harder to verify, and what hits the verifier's limit first. [`verifier_stats`] loads every
//! program (without attaching any) and reads that number back, so changes to the kernel code
//! can be compared on each kernel.

use std::collections::HashSet;

use aya::programs::{loaded_programs, ProgramError};

use crate::enforcer::{Enforcer, EnforcerError, LoadOptions};

/// The name the kernel keeps for a program: at most `BPF_OBJ_NAME_LEN - 1` (15) bytes of it.
fn kernel_name(name: &str) -> &str {
    name.get(..15).unwrap_or(name)
}

/// What the kernel reports about one loaded program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    /// The program's name in the object (and in the kernel).
    pub name: &'static str,
    /// The kernel's id of the loaded program.
    pub id: u32,
    /// Instructions the verifier processed (`verified_insns`); `None` on kernels before 5.16.
    pub verified_insns: Option<u32>,
    /// Instructions of the program after the verifier's rewrites (`xlated_prog_len / 8`).
    pub xlated_insns: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProgStatsError {
    #[error("cannot load oxd's programs")]
    Load(#[from] EnforcerError),
    #[error("cannot list the kernel's loaded programs")]
    List(#[source] ProgramError),
    #[error("the kernel lists no loaded program named {0} after oxd loaded it")]
    NotFound(&'static str),
}

fn loaded_ids() -> Result<HashSet<u32>, ProgStatsError> {
    loaded_programs()
        .map(|info| info.map(|i| i.id()).map_err(ProgStatsError::List))
        .collect()
}

/// Loads every program of oxd's object (the BPF-LSM ones too, so this needs a kernel with
/// BPF-LSM), attaches none, and returns what the kernel reports for each, in [`Enforcer::program_names`]
/// order. The programs are unloaded again when this returns.
///
/// Programs are found in the kernel's list by name among those that appeared while loading. If
/// another process loads oxd's object at the same moment, a program of the same name may be
/// its copy; it was built from the same object for the same kernel, so its counts are the same.
pub fn verifier_stats() -> Result<Vec<ProgramStats>, ProgStatsError> {
    let before = loaded_ids()?;
    let mut enforcer = Enforcer::open(&LoadOptions {
        lsm: true,
        ..LoadOptions::default()
    })?;
    enforcer.load_lsm()?;
    enforcer.load_cgroup_programs()?;
    let programs = enforcer.program_names();
    let mut found: Vec<Option<ProgramStats>> = vec![None; programs.len()];
    for info in loaded_programs() {
        let info = info.map_err(ProgStatsError::List)?;
        if before.contains(&info.id()) {
            continue;
        }
        let Some(index) = programs
            .iter()
            .position(|name| info.name_as_str() == Some(kernel_name(name)))
        else {
            continue;
        };
        // The first one loaded after `before` (lowest id) is ours unless another process
        // raced us, see above.
        if found[index].as_ref().is_some_and(|f| f.id < info.id()) {
            continue;
        }
        found[index] = Some(ProgramStats {
            name: programs[index],
            id: info.id(),
            verified_insns: info.verified_instruction_count(),
            xlated_insns: info.size_translated().map(|bytes| bytes / 8),
        });
    }
    drop(enforcer);
    found
        .into_iter()
        .zip(programs)
        .map(|(stats, name)| stats.ok_or(ProgStatsError::NotFound(name)))
        .collect()
}
