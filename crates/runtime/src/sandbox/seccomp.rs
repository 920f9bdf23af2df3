//! The sandbox's seccomp filter: a deny-list on top of the namespaces, rlimits and dropped
//! capabilities. Denied calls fail with `EPERM` (programs see an ordinary error and can report it);
//! `clone3` fails with `ENOSYS` so the C library falls back to `clone`, whose flags the filter can see;
//! a call made for another architecture (or through the x32 ABI) kills the process.
//!
//! Installing the filter sets `no_new_privs` first (seccompiler does that), so it needs no privilege.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Syscalls refused outright.
const DENIED: &[(&str, i64)] = &[
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("personality", libc::SYS_personality),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("fanotify_init", libc::SYS_fanotify_init),
];

/// The namespace flags `clone` may not be given.
const CLONE_NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// Terminal ioctls that push input into another process's terminal.
const DENIED_IOCTLS: &[u64] = &[libc::TIOCSTI, libc::TIOCLINUX];

/// The names of the denied calls, for `skygate sandbox check` and the docs.
pub fn denied_names() -> impl Iterator<Item = &'static str> {
    DENIED
        .iter()
        .map(|(n, _)| *n)
        .chain(["clone (namespace flags)", "clone3", "ioctl TIOCSTI"])
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// The compiled programs, in the order they are installed.
pub fn programs() -> Result<Vec<BpfProgram>, String> {
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let bit = |arg: u8, mask: u64| -> Result<SeccompRule, String> {
        let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(mask), mask)
            .map_err(|e| e.to_string())?;
        SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
    };
    rules.insert(
        libc::SYS_clone,
        CLONE_NS_FLAGS
            .iter()
            .map(|f| bit(0, *f))
            .collect::<Result<_, _>>()?,
    );
    let ioctl_rules = DENIED_IOCTLS
        .iter()
        .map(|req| {
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *req)
                .map_err(|e| e.to_string())?;
            SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
        })
        .collect::<Result<_, String>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, eperm, ARCH).map_err(|e| e.to_string())?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .map_err(|e| e.to_string())?;
    let mut out = vec![x32_guard()];
    for f in [deny, clone3] {
        out.push(BpfProgram::try_from(f).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Kills a process that makes a call through the x32 ABI (numbers with bit 30 set), which a
/// deny-list keyed on x86-64 numbers would otherwise not see. Elsewhere: allows everything.
fn x32_guard() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    if cfg!(target_arch = "x86_64") {
        vec![
            // seccomp_data.nr
            ins(LD_W_ABS, 0, 0, 0),
            ins(JGE_K, 0, 1, 0x4000_0000),
            ins(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
            ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ]
    } else {
        vec![ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW)]
    }
}

/// Installs every program on the calling thread (sets `no_new_privs` first).
pub fn install() -> Result<(), String> {
    for p in programs()? {
        seccompiler::apply_filter(&p).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_programs_compile_and_check_the_architecture() {
        let progs = programs().unwrap();
        assert_eq!(progs.len(), 3);
        // seccompiler's programs start with the architecture check, which kills on a mismatch.
        for p in &progs[1..] {
            assert_eq!(p[0].k, 4, "loads seccomp_data.arch first");
            assert!(p.iter().any(|i| i.k == libc::SECCOMP_RET_KILL_PROCESS));
        }
        assert!(denied_names().any(|n| n == "ptrace"));
    }
}
