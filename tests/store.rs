//! The store example (`examples/store.rs`): its SQLite dependency commits what a worker did
//! when the handler succeeded, and rolls it back when it failed or panicked. Runs on
//! in-process brokers; no RabbitMQ needed.

#[allow(dead_code)] // the example's `main` is not used here
#[path = "../examples/store.rs"]
mod example;

use enoki::testing::{Hook, TestRunner, Waiter};
use enoki::{ClusterRpcProxy, Error};
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A database file of the test's own, removed (with SQLite's side files) at the end.
struct TempDb(PathBuf);

impl TempDb {
    fn new(name: &str) -> TempDb {
        let file = format!(
            "enoki-{name}-{}-{}.sqlite3",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        TempDb(std::env::temp_dir().join(file))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

fn list(proxy: &ClusterRpcProxy) -> Vec<(String, String)> {
    proxy.call("store", "list", ()).expect("list")
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_store_keeps_what_succeeded_and_nothing_of_what_failed() {
    let db = TempDb::new("store");
    let waiter = Waiter::new();
    let runner = TestRunner::new()
        .service(waiter.watch(example::store(&db.0)))
        .start()
        .expect("the store starts");
    let proxy = runner.proxy().expect("proxy");

    assert_eq!(list(&proxy), []);
    proxy
        .call::<()>("store", "put", ("tea", "green"))
        .expect("put");
    proxy
        .call::<()>("store", "put", ("coffee", "black"))
        .expect("put");
    proxy
        .call::<()>("store", "put", ("tea", "oolong"))
        .expect("overwrite");
    let tea: Option<String> = proxy.call("store", "get", ("tea",)).expect("get");
    assert_eq!(tea.as_deref(), Some("oolong"));
    let none: Option<String> = proxy.call("store", "get", ("milk",)).expect("get");
    assert_eq!(none, None);
    assert_eq!(
        list(&proxy),
        pairs(&[("coffee", "black"), ("tea", "oolong")])
    );

    // All or nothing: the third item fails the call after two were written.
    let items = pairs(&[("juice", "orange"), ("water", "still"), ("", "nameless")]);
    let error = proxy
        .call::<usize>("store", "put_all", (items,))
        .unwrap_err();
    let remote = error.as_remote().expect("a remote error");
    assert_eq!(
        (remote.exc_type.as_str(), remote.value.as_str()),
        ("ValueError", "a key cannot be empty")
    );
    // The reply goes out before worker_result runs: wait until the rollback is done.
    waiter
        .wait("put_all", 1, WAIT)
        .expect("the failed call finished");
    assert_eq!(
        list(&proxy),
        pairs(&[("coffee", "black"), ("tea", "oolong")])
    );

    let items = pairs(&[("juice", "orange"), ("water", "still")]);
    let count: usize = proxy.call("store", "put_all", (items,)).expect("put_all");
    assert_eq!(count, 2);
    let deleted: bool = proxy.call("store", "delete", ("coffee",)).expect("delete");
    assert!(deleted);
    let again: bool = proxy.call("store", "delete", ("coffee",)).expect("delete");
    assert!(!again);
    assert_eq!(
        list(&proxy),
        pairs(&[("juice", "orange"), ("tea", "oolong"), ("water", "still")])
    );
    runner.stop();

    // Committed means on disk: another run on the same file finds it all.
    let hook = Hook::new(example::store(&db.0)).expect("the store starts again");
    let items: Vec<(String, String)> = hook.rpc("list", ()).expect("list");
    assert_eq!(
        items,
        pairs(&[("juice", "orange"), ("tea", "oolong"), ("water", "still")])
    );
}

#[test]
fn a_panicking_handler_leaves_no_trace_and_the_worker_goes_on() {
    let db = TempDb::new("store-panic");
    let service = example::store(&db.0).rpc(
        "put_then_panic",
        |ctx, (key,): (String,)| -> enoki::Result<()> {
            let db = ctx.dependency::<example::Sqlite>("db")?;
            db.connection()
                .execute("INSERT INTO items (key, value) VALUES (?1, 'x')", [&key])
                .map_err(|e| Error::bad_input(e.to_string()))?;
            panic!("after writing {key}");
        },
    );
    let hook = Hook::new(service).expect("the store starts");
    hook.rpc::<()>("put", ("kept", "yes")).expect("put");
    let error = hook.rpc::<()>("put_then_panic", ("lost",)).unwrap_err();
    assert_eq!(
        error.as_remote().expect("remote").value,
        "after writing lost"
    );
    let items: Vec<(String, String)> = hook.rpc("list", ()).expect("list");
    assert_eq!(items, pairs(&[("kept", "yes")]));
}

#[test]
fn workers_writing_at_once_each_get_their_own_transaction() {
    const THREADS: usize = 8;
    const PUTS: usize = 20;
    let db = TempDb::new("store-concurrent");
    let hook = Hook::new(example::store(&db.0)).expect("the store starts");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let hook = &hook;
            s.spawn(move || {
                for i in 0..PUTS {
                    let key = format!("{t}-{i:02}");
                    hook.rpc::<()>("put", (key, format!("v{t}"))).expect("put");
                }
            });
        }
    });
    let items: Vec<(String, String)> = hook.rpc("list", ()).expect("list");
    assert_eq!(items.len(), THREADS * PUTS);
    assert_eq!(items[0], ("0-00".to_owned(), "v0".to_owned()));
    assert_eq!(
        items[THREADS * PUTS - 1],
        ("7-19".to_owned(), "v7".to_owned())
    );
}
