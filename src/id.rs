//! Fresh UUIDs for call ids and correlation ids without a system call per id.

use std::cell::Cell;
use uuid::Uuid;

thread_local! {
    // xoshiro128-style state is overkill here: a 64-bit splitmix stream per thread, seeded once
    // from the OS, gives ids that never repeat within a thread and are independent across threads.
    static STATE: Cell<(u64, u64)> = Cell::new(seed());
}

fn seed() -> (u64, u64) {
    let bytes = *Uuid::new_v4().as_bytes();
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    b.copy_from_slice(&bytes[8..]);
    (u64::from_le_bytes(a), u64::from_le_bytes(b) | 1)
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random (version 4) UUID.
pub(crate) fn uuid4() -> Uuid {
    STATE.with(|state| {
        let (counter, key) = state.get();
        let counter = counter.wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set((counter, key));
        let hi = splitmix(counter ^ key);
        let lo = splitmix(counter.rotate_left(32) ^ key.wrapping_mul(3));
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&hi.to_le_bytes());
        bytes[8..].copy_from_slice(&lo.to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    })
}

/// A random UUID in its hyphenated text form, as Python's `str(uuid4())`.
pub(crate) fn uuid4_string() -> String {
    with_uuid4(str::to_owned)
}

/// Runs `f` on a fresh random UUID in its hyphenated text form, without allocating it.
pub(crate) fn with_uuid4<T>(f: impl FnOnce(&str) -> T) -> T {
    let mut buf = Uuid::encode_buffer();
    f(uuid4().hyphenated().encode_lower(&mut buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_v4_and_distinct() {
        let ids: HashSet<String> = (0..10_000).map(|_| uuid4_string()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            let parsed = Uuid::parse_str(id).expect("valid uuid");
            assert_eq!(parsed.get_version_num(), 4);
            assert_eq!(id.len(), 36);
        }
    }
}
