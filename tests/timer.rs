//! Timers on a real container: Nameko's schedule (anchored, no overlap, catch-up), eager,
//! a fresh call id stack per tick, errors that do not stop the timer, and graceful stop with a
//! tick running.

mod support;

use enoki::{Container, RemoteError, Service, Timer};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{eventually, unique};

const WAIT: Duration = Duration::from_secs(10);

fn start(service: Service) -> Container {
    let mut container = Container::new(service, support::config());
    container.start().expect("container starts");
    container
}

/// (start, end) of each tick.
type Spans = Arc<Mutex<Vec<(Instant, Instant)>>>;

#[test]
fn slow_ticks_never_overlap_and_missed_slots_catch_up() {
    let spans: Spans = Arc::new(Mutex::new(Vec::new()));
    let sink = spans.clone();
    let interval = Duration::from_millis(100);
    let before = Instant::now();
    let mut container = start(
        Service::new(unique("overlap")).timer(interval, move |_ctx| {
            let begin = Instant::now();
            // Every third tick is slow: 250 ms, two and a half intervals.
            let slow = sink.lock().len().is_multiple_of(3);
            std::thread::sleep(if slow {
                Duration::from_millis(250)
            } else {
                Duration::from_millis(5)
            });
            sink.lock().push((begin, Instant::now()));
            Ok(())
        }),
    );
    assert!(eventually(WAIT, || spans.lock().len() >= 9));
    container.stop();
    let spans = spans.lock().clone();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "a tick started before the last one ended"
        );
    }
    // Anchored to the start: tick k never starts before start + k * interval, and the schedule
    // catches up after each slow tick (slots 1..=9 all fire within about a second).
    for (k, (begin, _)) in spans.iter().enumerate() {
        let due = before + interval * (k as u32 + 1);
        assert!(*begin >= due, "tick {} came early", k + 1);
    }
    // Three slow ticks of 250 ms and six quick ones fit in the 0.9 s of nine slots plus the
    // overrun of the last slow tick: no drift accumulates.
    let last_end = spans[8].1;
    assert!(
        last_end.duration_since(before) < Duration::from_millis(1600),
        "{:?}",
        last_end.duration_since(before)
    );
}

#[test]
fn eager_timers_fire_at_start_and_lazy_ones_after_an_interval() {
    let eager_ticks = Arc::new(Mutex::new(Vec::new()));
    let lazy_ticks = Arc::new(Mutex::new(Vec::new()));
    let (e, l) = (eager_ticks.clone(), lazy_ticks.clone());
    let interval = Duration::from_millis(700);
    let before = Instant::now();
    let _c = start(
        Service::new(unique("eager"))
            .timer_with(Timer::new(interval).eager(true).name("early"), move |_| {
                e.lock().push(Instant::now());
                Ok(())
            })
            .timer(interval, move |_| {
                l.lock().push(Instant::now());
                Ok(())
            }),
    );
    assert!(eventually(WAIT, || !eager_ticks.lock().is_empty()));
    let first_eager = eager_ticks.lock()[0].duration_since(before);
    assert!(first_eager < interval, "eager tick at {first_eager:?}");
    assert!(eventually(WAIT, || !lazy_ticks.lock().is_empty()));
    let first_lazy = lazy_ticks.lock()[0].duration_since(before);
    assert!(first_lazy >= interval, "lazy tick at {first_lazy:?}");
}

#[test]
fn each_tick_starts_a_fresh_call_chain_and_errors_do_not_stop_the_timer() {
    let stacks = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let sink = stacks.clone();
    let name = unique("fresh");
    let _c = start(Service::new(&name).timer_with(
        Timer::new(Duration::from_millis(50)).name("beat"),
        move |ctx| {
            let mut stacks = sink.lock();
            stacks.push(ctx.call_id_stack().to_vec());
            if !stacks.len().is_multiple_of(2) {
                return Err(RemoteError::new("ValueError", "odd tick").into());
            }
            if stacks.len() == 4 {
                panic!("a panic is an error too");
            }
            Ok(())
        },
    ));
    assert!(eventually(WAIT, || stacks.lock().len() >= 6));
    let stacks = stacks.lock().clone();
    let mut ids = std::collections::HashSet::new();
    for stack in &stacks {
        assert_eq!(stack.len(), 1, "{stack:?}");
        assert!(stack[0].starts_with(&format!("{name}.beat.")), "{stack:?}");
        assert!(ids.insert(stack[0].clone()), "a new call id per tick");
    }
}

#[test]
fn graceful_stop_lets_a_running_tick_finish_and_starts_no_more() {
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let (s, f) = (started.clone(), finished.clone());
    let mut container = start(Service::new(unique("stop_tick")).timer_with(
        Timer::new(Duration::from_millis(50)).eager(true),
        move |_| {
            s.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(500));
            f.store(true, Ordering::SeqCst);
            Ok(())
        },
    ));
    assert!(eventually(WAIT, || started.load(Ordering::SeqCst) == 1));
    container.stop();
    assert!(finished.load(Ordering::SeqCst), "stop waited for the tick");
    assert_eq!(started.load(Ordering::SeqCst), 1, "no tick after stop");
}

#[test]
fn a_timer_with_a_zero_interval_is_a_config_error() {
    let service = Service::new(unique("zero")).timer(Duration::ZERO, |_| Ok(()));
    let err = Container::new(service, support::config())
        .start()
        .expect_err("zero interval");
    assert!(matches!(err.kind(), enoki::ErrorKind::Config(_)), "{err}");
}
