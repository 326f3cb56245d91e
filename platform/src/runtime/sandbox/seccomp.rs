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
//! The filter is classic BPF written out here (about 100 instructions, a binary search over the
//! listed calls), not compiled by a library: `seccompiler` was tried first and its 325-instruction
//! program took 0.3 ms to install, a tenth of the sandbox's whole start-up cost.

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

/// What the filter does with a system call it looks at more closely than to allow it.
#[derive(Clone, Copy, PartialEq)]
enum Special {
    Deny,
    /// `clone`: refused if it asks for a new namespace.
    Clone,
    /// `clone3`: its flags are in memory the filter cannot read.
    NoSys,
}

/// A jump's destination while the program is laid out: the next instruction, or a label.
#[derive(Clone, Copy)]
enum To {
    Next,
    Label(usize),
}

/// Classic BPF laid out with labels, then packed with the jumps resolved.
#[derive(Default)]
struct Program {
    code: Vec<(u16, To, u32)>,
    labels: Vec<Option<usize>>,
}

impl Program {
    fn push(&mut self, code: u16, jump_if_true: To, k: u32) {
        self.code.push((code, jump_if_true, k));
    }

    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }

    /// A binary search over the sorted `calls` (jumps on `>=`, then a short run of equality checks),
    /// so that every system call number is settled in about ten instructions.
    fn search(&mut self, calls: &[(u32, Special)], to: &dyn Fn(Special) -> usize) {
        if calls.len() <= 4 {
            for (nr, special) in calls {
                self.push(JEQ_K, To::Label(to(*special)), *nr);
            }
            self.push(RET_K, To::Next, RET_ALLOW);
            return;
        }
        let (low, high) = calls.split_at(calls.len() / 2);
        let upper = self.label();
        self.push(JGE_K, To::Label(upper), high[0].0);
        self.search(low, to);
        self.bind(upper);
        self.search(high, to);
    }

    fn pack(self) -> Vec<u64> {
        self.code
            .iter()
            .enumerate()
            .map(|(i, (code, jump, k))| {
                let jt = match jump {
                    To::Next => 0,
                    To::Label(l) => {
                        let target = self.labels[*l].expect("every label is bound");
                        u8::try_from(target - i - 1).expect("a jump within 255 instructions")
                    }
                };
                pack(*code, jt, 0, *k)
            })
            .collect()
    }
}

/// The filter, packed.
///
/// Laid out as a binary search rather than one comparison per listed call: when a filter is
/// installed, the kernel runs it over every system call number of both ABIs to find those it always
/// allows, with interrupts off. With a list of 50 comparisons, installing took 2.4% of all CPU in a
/// burst of 2,000 small files (perf); with the search, 1.4%: each number is settled in at most 14
/// instructions instead of 55.
pub fn filter() -> Vec<u64> {
    let mut calls: Vec<(u32, Special)> = DENIED.iter().map(|nr| (*nr as u32, Special::Deny)).collect();
    calls.push((libc::SYS_clone as u32, Special::Clone));
    calls.push((libc::SYS_clone3 as u32, Special::NoSys));
    calls.sort_unstable_by_key(|(nr, _)| *nr);
    calls.dedup_by_key(|(nr, _)| *nr);

    let mut p = Program::default();
    let (deny, clone, nosys) = (p.label(), p.label(), p.label());
    // Another ABI's calls: not these numbers at all, so refuse before looking at them.
    let native = p.label();
    p.push(LD_W_ABS, To::Next, ARCH);
    p.push(JEQ_K, To::Label(native), AUDIT_ARCH);
    p.push(RET_K, To::Next, RET_ERRNO | libc::EPERM as u32);
    p.bind(native);
    p.push(LD_W_ABS, To::Next, NR);
    p.push(JGE_K, To::Label(deny), X32_SYSCALL_BIT);
    let to = |special| match special {
        Special::Deny => deny,
        Special::Clone => clone,
        Special::NoSys => nosys,
    };
    p.search(&calls, &to);
    p.bind(clone);
    p.push(LD_W_ABS, To::Next, ARG0_LOW);
    p.push(JSET_K, To::Label(deny), NEW_NAMESPACES);
    p.push(RET_K, To::Next, RET_ALLOW);
    p.bind(deny);
    p.push(RET_K, To::Next, RET_ERRNO | libc::EPERM as u32);
    p.bind(nosys);
    p.push(RET_K, To::Next, RET_ERRNO | libc::ENOSYS as u32);
    p.pack()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter the way the kernel does, on one system call.
    fn verdict(program: &[u64], arch: u32, nr: u32, arg0: u64) -> u32 {
        run(program, arch, nr, arg0).0
    }

    /// The verdict, and how many instructions it took.
    fn run(program: &[u64], arch: u32, nr: u32, arg0: u64) -> (u32, usize) {
        let (mut pc, mut a) = (0usize, 0u32);
        for steps in 1.. {
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
                RET_K => return (k, steps),
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
        unreachable!("the loop returns")
    }

    #[test]
    fn the_filter_refuses_what_it_lists_and_allows_the_rest() {
        let p = filter();
        assert!(p.len() < 150, "{} instructions", p.len());
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

    #[test]
    fn every_call_number_gets_the_listed_verdict_within_a_few_instructions() {
        let p = filter();
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let mut longest = 0;
        for nr in 0..1024u32 {
            let (got, steps) = run(&p, AUDIT_ARCH, nr, 0);
            let want = if DENIED.contains(&(nr as libc::c_long)) {
                eperm
            } else if nr as libc::c_long == libc::SYS_clone3 {
                RET_ERRNO | libc::ENOSYS as u32
            } else {
                RET_ALLOW
            };
            assert_eq!(got, want, "system call {nr}");
            longest = longest.max(steps);
        }
        // What the kernel walks per number when it installs the filter (see `filter`).
        assert!(longest <= 14, "{longest} instructions for one call");
    }
}
