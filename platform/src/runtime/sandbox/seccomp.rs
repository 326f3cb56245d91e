//! The system calls no ingestion app needs, refused inside the sandbox.
//!
//! A deny list, not an allow list: tenants bring programs in any language and runtime, and an allow
//! list would break the next JVM or Python release for no gain the other layers do not already give
//! (no capabilities, no new privileges, a uid of its own). What is refused here is the kernel surface
//! that those layers leave open and that attacks on the kernel go through: new namespaces (a new user
//! namespace would hand back capabilities), mounts, ptrace and cross-process memory access, BPF,
//! keyrings, io_uring, module and kexec loading, perf events, userfaultfd. They fail with EPERM, as if
//! the kernel did not allow them, so careful programs carry on; `clone3` fails with ENOSYS, which makes
//! the C library fall back to `clone`, whose flags the filter can read (Docker's default profile does
//! the same). System calls of another ABI (x32, i386 on x86_64) are refused altogether.
//!
//! The filter is classic BPF written out here (about 70 instructions), not compiled by a library:
//! `seccompiler` was tried first and its 325-instruction program took 0.3 ms to install, a tenth of
//! the sandbox's whole start-up cost; this one is a single pass of comparisons.

/// Refused outright (EPERM).
#[rustfmt::skip]
const DENIED: &[libc::c_long] = &[
    libc::SYS_mount, libc::SYS_umount2, libc::SYS_pivot_root, libc::SYS_chroot,
    libc::SYS_mount_setattr, libc::SYS_move_mount, libc::SYS_open_tree, libc::SYS_fsopen,
    libc::SYS_fsconfig, libc::SYS_fsmount, libc::SYS_fspick,
    libc::SYS_unshare, libc::SYS_setns,
    libc::SYS_ptrace, libc::SYS_process_vm_readv, libc::SYS_process_vm_writev, libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_bpf, libc::SYS_perf_event_open, libc::SYS_userfaultfd,
    libc::SYS_keyctl, libc::SYS_add_key, libc::SYS_request_key,
    libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register,
    libc::SYS_kexec_load, libc::SYS_kexec_file_load,
    libc::SYS_init_module, libc::SYS_finit_module, libc::SYS_delete_module,
    libc::SYS_reboot, libc::SYS_swapon, libc::SYS_swapoff, libc::SYS_acct, libc::SYS_quotactl,
    libc::SYS_syslog, libc::SYS_settimeofday, libc::SYS_clock_settime, libc::SYS_clock_adjtime,
    libc::SYS_adjtimex, libc::SYS_open_by_handle_at, libc::SYS_name_to_handle_at,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")] libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")] libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")] libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")] libc::SYS_lookup_dcookie,
];

/// `clone` flags that make a new namespace.
const NEW_NAMESPACES: u32 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWCGROUP) as u32;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// x86_64's x32 ABI marks its system call numbers with this bit.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes and seccomp return values (linux/filter.h, linux/seccomp.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

// Offsets in `struct seccomp_data`: nr, arch, instruction pointer, args[6] (the low word of args[0]).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;

/// One classic BPF instruction packed as `code << 48 | jt << 40 | jf << 32 | k` (how the spec
/// carries it to the sandbox's init).
pub fn pack(code: u16, jt: u8, jf: u8, k: u32) -> u64 {
    (code as u64) << 48 | (jt as u64) << 40 | (jf as u64) << 32 | k as u64
}

pub fn unpack(i: u64) -> (u16, u8, u8, u32) {
    ((i >> 48) as u16, (i >> 40) as u8, (i >> 32) as u8, i as u32)
}

/// The filter, packed.
pub fn filter() -> Vec<u64> {
    enum Jump {
        None,
        Deny,
        Clone,
        NoSys,
    }
    let mut body: Vec<(u16, Jump, u32)> = vec![(LD_W_ABS, Jump::None, ARCH)];
    // Another ABI's calls: not these numbers at all, so refuse before looking at them.
    body.push((JEQ_K, Jump::None, AUDIT_ARCH)); // true: skip the refusal below
    body.push((RET_K, Jump::None, RET_ERRNO | libc::EPERM as u32));
    body.push((LD_W_ABS, Jump::None, NR));
    body.push((JGE_K, Jump::Deny, X32_SYSCALL_BIT));
    body.extend(DENIED.iter().map(|nr| (JEQ_K, Jump::Deny, *nr as u32)));
    body.push((JEQ_K, Jump::Clone, libc::SYS_clone as u32));
    body.push((JEQ_K, Jump::NoSys, libc::SYS_clone3 as u32));
    body.push((RET_K, Jump::None, RET_ALLOW));
    let clone = body.len();
    body.push((LD_W_ABS, Jump::None, ARG0_LOW));
    body.push((JSET_K, Jump::Deny, NEW_NAMESPACES));
    body.push((RET_K, Jump::None, RET_ALLOW));
    let deny = body.len();
    body.push((RET_K, Jump::None, RET_ERRNO | libc::EPERM as u32));
    let nosys = body.len();
    body.push((RET_K, Jump::None, RET_ERRNO | libc::ENOSYS as u32));
    body.iter()
        .enumerate()
        .map(|(i, (code, jump, k))| {
            let to = |target: usize| u8::try_from(target - i - 1).expect("a jump within 255 instructions");
            let jt = match (code, jump) {
                (&JEQ_K, Jump::None) => 1, // the architecture check: skip the refusal
                (_, Jump::Deny) => to(deny),
                (_, Jump::Clone) => to(clone),
                (_, Jump::NoSys) => to(nosys),
                _ => 0,
            };
            pack(*code, jt, 0, *k)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter the way the kernel does, on one system call.
    fn verdict(program: &[u64], arch: u32, nr: u32, arg0: u64) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let (code, jt, jf, k) = unpack(program[pc]);
            pc += 1;
            match code {
                LD_W_ABS => {
                    a = match k {
                        NR => nr,
                        ARCH => arch,
                        ARG0_LOW => arg0 as u32,
                        other => panic!("load of offset {other}"),
                    }
                }
                RET_K => return k,
                JEQ_K | JGE_K | JSET_K => {
                    let taken = match code {
                        JEQ_K => a == k,
                        JGE_K => a >= k,
                        _ => a & k != 0,
                    };
                    pc += if taken { jt } else { jf } as usize;
                }
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_filter_refuses_what_it_lists_and_allows_the_rest() {
        let p = filter();
        assert!(p.len() < 100, "{} instructions", p.len());
        let eperm = RET_ERRNO | libc::EPERM as u32;
        for nr in [libc::SYS_mount, libc::SYS_ptrace, libc::SYS_bpf, libc::SYS_unshare, libc::SYS_io_uring_setup] {
            assert_eq!(verdict(&p, AUDIT_ARCH, nr as u32, 0), eperm, "{nr}");
        }
        for nr in [libc::SYS_read, libc::SYS_openat, libc::SYS_execve, libc::SYS_futex, libc::SYS_exit_group] {
            assert_eq!(verdict(&p, AUDIT_ARCH, nr as u32, 0), RET_ALLOW, "{nr}");
        }
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(verdict(&p, AUDIT_ARCH, libc::SYS_clone as u32, thread), RET_ALLOW, "threads and forks");
        let userns = (libc::SIGCHLD | libc::CLONE_NEWUSER) as u64;
        assert_eq!(verdict(&p, AUDIT_ARCH, libc::SYS_clone as u32, userns), eperm);
        assert_eq!(verdict(&p, AUDIT_ARCH, libc::SYS_clone3 as u32, 0), RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(verdict(&p, 0x4000_0003, libc::SYS_read as u32, 0), eperm, "another ABI");
        assert_eq!(verdict(&p, AUDIT_ARCH, X32_SYSCALL_BIT | 1, 0), eperm, "x32 numbers");
    }
}
