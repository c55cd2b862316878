//! The `store` service: a key-value store on an embedded SQLite database, and a data-store
//! [`Dependency`] written the way Nameko's `DatabaseSession` is.
//!
//! ```text
//! cargo run --example store           # no AMQP_URI: in-process memory:// broker, calls itself
//! AMQP_URI=amqp://guest:guest@localhost:5672/ cargo run --example store   # on RabbitMQ
//! cargo run --bin enoki -- call store.put '["tea", "green"]'
//! cargo run --bin enoki -- call store.list
//! ```
//!
//! The database file is `STORE_DB`, or `enoki-store.sqlite3` in the temporary directory.
//!
//! The [`Sqlite`] dependency creates the schema once, at the container's setup. Each worker
//! gets a connection of its own with a transaction already begun (`inject`); after the handler
//! ran, `worker_result` commits the transaction if the handler succeeded and rolls it back if
//! it failed (or panicked), and `worker_teardown` closes the connection. A handler never
//! commits: a call either happens whole or not at all.
//!
//! RPC methods: `put(key, value)`, `get(key)` (`null` if absent), `list()` (`[[key, value],
//! ...]` by key), `put_all(items)` (all or none: an empty key fails the whole call with a
//! `ValueError` and nothing of it is kept), `delete(key)` (whether it was there).

use enoki::{Config, ContainerInfo, Dependency, ErrorKind, RemoteError, Runner, Service};
use enoki::{Error, WorkerContext};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long a worker waits for another worker's write transaction before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A data-store dependency: one SQLite connection, in one transaction, per worker.
pub struct Sqlite {
    path: PathBuf,
    /// The open connection of each running worker, by call id, so the result hooks find the
    /// transaction the handler worked in.
    open: Mutex<HashMap<String, Db>>,
}

impl Sqlite {
    /// The database in the file at `path`, created if missing.
    pub fn new(path: impl AsRef<Path>) -> Sqlite {
        Sqlite {
            path: path.as_ref().to_owned(),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn connect(&self) -> enoki::Result<Connection> {
        let connection = Connection::open(&self.path).map_err(db_error)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
        Ok(connection)
    }

    fn take(&self, ctx: &WorkerContext) -> Option<Db> {
        lock(&self.open).remove(ctx.call_id())
    }
}

/// What a worker gets: its connection, inside the worker's transaction.
#[derive(Clone)]
pub struct Db(Arc<Mutex<Connection>>);

impl Db {
    /// The worker's connection (only this worker uses it).
    pub fn connection(&self) -> MutexGuard<'_, Connection> {
        lock(&self.0)
    }
}

/// A poisoned lock only means a handler panicked while holding it; the connection is fine and
/// its transaction is rolled back by `worker_result`.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A database failure, as the caller sees it.
fn db_error(e: rusqlite::Error) -> Error {
    RemoteError::new("DatabaseError", e.to_string()).into()
}

impl Dependency for Sqlite {
    type Value = Db;

    fn setup(&self, container: &ContainerInfo) -> enoki::Result<()> {
        log::info!(
            "{}: database {}",
            container.service_name(),
            self.path.display()
        );
        let connection = self.connect()?;
        // WAL lets readers go on while one worker writes.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
            )
            .map_err(db_error)
    }

    fn inject(&self, ctx: &WorkerContext) -> enoki::Result<Db> {
        let connection = self.connect()?;
        // IMMEDIATE takes the write lock now (waiting up to the busy timeout), so two workers
        // never deadlock upgrading read locks.
        connection
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(db_error)?;
        let db = Db(Arc::new(Mutex::new(connection)));
        lock(&self.open).insert(ctx.call_id().to_owned(), db.clone());
        Ok(db)
    }

    fn worker_result(&self, ctx: &WorkerContext, result: Result<&str, &Error>) {
        let Some(db) = self.take(ctx) else { return };
        let connection = db.connection();
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        if let Err(e) = connection.execute_batch(end) {
            // The reply is gone already; a failed commit leaves nothing half done, as SQLite
            // rolls the transaction back when the connection closes.
            log::error!("{}: {end} failed: {e}", ctx.call_id());
        }
    }

    fn worker_teardown(&self, ctx: &WorkerContext) {
        // Normally taken by worker_result; dropping the last handle closes the connection, and
        // SQLite rolls back whatever was not committed.
        drop(self.take(ctx));
    }
}

/// The store service on the database at `path`.
pub fn store(path: impl AsRef<Path>) -> Service {
    Service::new("store")
        .dependency("db", Sqlite::new(path))
        .rpc("put", |ctx, (key, value): (String, String)| {
            let db = ctx.dependency::<Sqlite>("db")?;
            put(&db.connection(), &key, &value)
        })
        .rpc("get", |ctx, (key,): (String,)| {
            let db = ctx.dependency::<Sqlite>("db")?;
            db.connection()
                .query_row("SELECT value FROM items WHERE key = ?1", [&key], |row| {
                    row.get::<_, String>(0)
                })
                .optional()
                .map_err(db_error)
        })
        .rpc("list", |ctx, ()| {
            let db = ctx.dependency::<Sqlite>("db")?;
            let connection = db.connection();
            let mut query = connection
                .prepare("SELECT key, value FROM items ORDER BY key")
                .map_err(db_error)?;
            let rows = query
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(db_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_error)
        })
        .rpc("put_all", |ctx, (items,): (Vec<(String, String)>,)| {
            let db = ctx.dependency::<Sqlite>("db")?;
            let connection = db.connection();
            for (key, value) in &items {
                // No clean-up here on failure: the worker's rollback undoes the earlier puts.
                put(&connection, key, value)?;
            }
            Ok(items.len())
        })
        .rpc("delete", |ctx, (key,): (String,)| {
            let db = ctx.dependency::<Sqlite>("db")?;
            let deleted = db
                .connection()
                .execute("DELETE FROM items WHERE key = ?1", [&key])
                .map_err(db_error)?;
            Ok(deleted > 0)
        })
}

fn put(connection: &Connection, key: &str, value: &str) -> enoki::Result<()> {
    if key.is_empty() {
        return Err(RemoteError::new("ValueError", "a key cannot be empty").into());
    }
    connection
        .execute(
            "INSERT INTO items (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map_err(db_error)?;
    Ok(())
}

/// Puts and lists once from inside the process: the client a `memory://` run cannot have
/// outside.
fn call_in_process(config: Config) {
    std::thread::spawn(move || {
        let called = enoki::ClusterRpcProxy::new(&config).and_then(|cluster| {
            loop {
                match cluster.call_timeout::<()>("store", "put", ("tea", "green"), BUSY_TIMEOUT) {
                    // Not consuming yet: the runner is still starting.
                    Err(e) if matches!(e.kind(), ErrorKind::UnknownService(_)) => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => break Err(e),
                    Ok(()) => {
                        break cluster.call_timeout::<Vec<(String, String)>>(
                            "store",
                            "list",
                            (),
                            BUSY_TIMEOUT,
                        );
                    }
                }
            }
        });
        match called {
            Ok(items) => log::info!("in-process client: store.list() = {items:?}"),
            Err(e) => log::error!("in-process client failed: {e}"),
        }
    });
}

fn main() -> enoki::Result<()> {
    enoki::logger::init();
    let mut config = Config::from_env()?;
    let path = std::env::var_os("STORE_DB")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("enoki-store.sqlite3"));
    if std::env::var_os("AMQP_URI").is_none() && config.uri() == Config::new().uri() {
        log::info!("AMQP_URI is unset: running on the in-process memory:// broker");
        config = config.amqp_uri("memory://");
        call_in_process(config.clone());
    } else {
        log::info!("connecting to {}", config.broker()?);
    }
    Runner::new(config).service(store(path)).run()
}
