//! Reproduces the one poison input enoki cannot defend against itself: amq-protocol 1.4 (which
//! amiquip parses frames with) recurses once per nesting level of a header value. Parses the
//! basic properties of a header nesting `DEPTH` arrays on a thread with amiquip's I/O thread
//! stack (the 2 MB default).
//!
//!   cargo run --release --example deep_header -- 5000     # aborts: stack overflow
//!   RUST_MIN_STACK=33554432 cargo run --release --example deep_header -- 26000   # parses
use amq_protocol::protocol::basic::parse_properties;

fn main() {
    let depth: usize = std::env::args()
        .nth(1)
        .and_then(|d| d.parse().ok())
        .unwrap_or(5000);
    let mut value = vec![b'V'];
    for _ in 0..depth {
        let mut outer = vec![b'A'];
        outer.extend_from_slice(&u32::try_from(value.len()).expect("fits").to_be_bytes());
        outer.extend_from_slice(&value);
        value = outer;
    }
    let mut table = vec![1, b'k'];
    table.extend_from_slice(&value);
    // Property flags: only `headers` (bit 13).
    let mut properties = vec![0x20, 0];
    properties.extend_from_slice(&u32::try_from(table.len()).expect("fits").to_be_bytes());
    properties.extend_from_slice(&table);
    println!("{depth} levels in a {} byte header", properties.len());
    // Like amiquip's `amiquip-io` thread: no explicit stack size.
    std::thread::spawn(move || {
        let parsed = parse_properties(&properties).is_ok();
        println!("parsed: {parsed}");
    })
    .join()
    .expect("parser thread");
}
