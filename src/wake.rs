//! Waking a thread on time on a busy machine: its scheduler time slice and its timer slack.
//!
//! Two per-thread settings, both open to any thread without privileges, decide how late a
//! sleeping thread starts running again after its deadline:
//!
//! - **The time slice.** Linux's EEVDF scheduler (6.12 and later) lets a thread of the normal
//!   policy (`SCHED_OTHER`) ask for a shorter slice with `sched_setattr` (`sched_runtime`, 100 µs
//!   to 100 ms). Its CPU share does not change (that is the nice value's business); its virtual
//!   deadline, `vruntime + slice`, does: a thread waking with a short slice is picked before the
//!   threads that run with the default slice (0.7 ms × (1 + log2 CPUs)) and preempts the one on
//!   the CPU at once, where otherwise it waits for that thread's slice to run out, which the
//!   scheduler notices at its next tick (4 ms at HZ=250). Measured on Linux 6.18 (2 cores, 4 or
//!   8 spinning threads in the same process, a thread sleeping 20 ms at a time): woken about
//!   4 ms late at p50 with the default slice, 70–90 µs late with 100 µs.
//! - **The timer slack**, by how much the kernel may defer a sleeper's timer to batch it with
//!   others: 50 µs by default, added to every wake-up.
//!
//! Anything else (another OS, an older kernel, which ignores the slice, a thread under another
//! policy, a refusal) leaves the thread as it was: these are latency hints, never requirements.

/// The slice asked for: the shortest the kernel accepts.
const SHORT_SLICE_NS: u64 = 100_000;

/// The timer slack while waiting for a due time. 0 would mean "the default" to the kernel.
const MIN_SLACK_NS: u64 = 1;

/// Gives the calling thread the short slice for good; for a thread that only waits and hands
/// work over, whose few microseconds of work should start as soon as it is woken.
pub(crate) fn short_slice_for_good() {
    if let Some(attr) = imp::attributes() {
        imp::set_slice(&attr, SHORT_SLICE_NS);
    }
}

/// While it lives, the calling thread wakes promptly: short slice, minimal timer slack. Both
/// are put back as they were when it is dropped.
pub(crate) struct Prompt {
    attributes: Option<imp::Attributes>,
    slack: Option<u64>,
}

impl Prompt {
    /// Applies the settings the platform allows to the calling thread.
    pub(crate) fn enter() -> Prompt {
        let attributes = imp::attributes().filter(|attr| imp::set_slice(attr, SHORT_SLICE_NS));
        let slack = imp::slack().filter(|_| imp::set_slack(MIN_SLACK_NS));
        Prompt { attributes, slack }
    }
}

impl Drop for Prompt {
    fn drop(&mut self) {
        if let Some(slack) = self.slack {
            imp::set_slack(slack);
        }
        if let Some(before) = &self.attributes {
            imp::restore(before);
        }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // system calls the standard library does not wrap; see each block
mod imp {
    use std::mem::size_of;

    /// A thread's scheduling attributes.
    pub(super) type Attributes = libc::sched_attr;

    /// `SCHED_OTHER`, the only policy whose slice this module touches.
    const SCHED_OTHER: u32 = 0;

    /// The calling thread's attributes, if it runs under `SCHED_OTHER`.
    pub(super) fn attributes() -> Option<Attributes> {
        // SAFETY: `sched_attr` is plain integers, for which all zeroes is a valid value.
        let mut attr: Attributes = unsafe { std::mem::zeroed() };
        // SAFETY: sched_getattr(pid 0 = the calling thread, attr, size, flags 0) writes at most
        // `size` bytes to `attr`, exactly the size of this live, exclusively borrowed struct,
        // and keeps no pointer after returning.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0 as libc::c_long,
                &mut attr as *mut Attributes,
                size_of::<Attributes>() as libc::c_long,
                0 as libc::c_long,
            )
        };
        (rc == 0 && attr.sched_policy == SCHED_OTHER).then_some(attr)
    }

    /// Gives the calling thread a slice of `slice_ns`, keeping its policy and nice value.
    pub(super) fn set_slice(current: &Attributes, slice_ns: u64) -> bool {
        let mut attr = *current;
        attr.sched_runtime = slice_ns;
        apply(attr)
    }

    /// Puts back attributes read by [`attributes`].
    pub(super) fn restore(before: &Attributes) {
        apply(*before);
    }

    fn apply(mut attr: Attributes) -> bool {
        attr.size = size_of::<Attributes>() as u32;
        // Only reset-on-fork is a setting; sched_getattr may report other flags that would ask
        // sched_setattr for fields this struct does not have.
        attr.sched_flags &= libc::SCHED_FLAG_RESET_ON_FORK as u64;
        // SAFETY: sched_setattr(pid 0 = the calling thread, attr, flags 0) reads `attr.size`
        // bytes, the size of this live struct, and keeps no pointer after returning. A failure
        // (ENOSYS, EINVAL, EPERM) is reported by the return value and changes nothing.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                0 as libc::c_long,
                &attr as *const Attributes,
                0 as libc::c_long,
            )
        };
        rc == 0
    }

    /// The calling thread's timer slack, in ns.
    pub(super) fn slack() -> Option<u64> {
        // SAFETY: PR_GET_TIMERSLACK takes no further argument and only returns a value.
        let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK) };
        u64::try_from(slack).ok()
    }

    /// Sets the calling thread's timer slack to `ns` (0 would restore the default).
    pub(super) fn set_slack(ns: u64) -> bool {
        // SAFETY: PR_SET_TIMERSLACK reads its second argument as an unsigned long, passed as
        // one, and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong) };
        rc == 0
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) type Attributes = ();

    pub(super) fn attributes() -> Option<Attributes> {
        None
    }

    pub(super) fn set_slice(_: &Attributes, _: u64) -> bool {
        false
    }

    pub(super) fn restore(_: &Attributes) {}

    pub(super) fn slack() -> Option<u64> {
        None
    }

    pub(super) fn set_slack(_: u64) -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// On a kernel with custom slices (6.12+) the slice is granted and put back; on any other,
    /// nothing changes. The timer slack is put back in every case.
    #[test]
    fn prompt_puts_the_thread_back_as_it_was() {
        std::thread::spawn(|| {
            let before = imp::attributes().expect("a normal thread reports its attributes");
            let slack = imp::slack().expect("the timer slack is readable");
            {
                let _prompt = Prompt::enter();
                assert_eq!(imp::slack(), Some(MIN_SLACK_NS));
                let during = imp::attributes().expect("still SCHED_OTHER");
                assert_eq!(during.sched_nice, before.sched_nice);
                if before.sched_runtime != 0 {
                    assert_eq!(during.sched_runtime, SHORT_SLICE_NS);
                }
            }
            let after = imp::attributes().expect("still SCHED_OTHER");
            assert_eq!(after.sched_runtime, before.sched_runtime);
            assert_eq!(after.sched_nice, before.sched_nice);
            assert_eq!(imp::slack(), Some(slack));
        })
        .join()
        .expect("the test thread panicked");
    }
}
