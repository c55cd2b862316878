//! Shared helpers for the integration tests: the broker, unique names, raw AMQP access and
//! cleanup. Every test talks to the real RabbitMQ named by `ENOKI_TEST_AMQP_URI` (default
//! `amqp://guest:guest@localhost:5672/enoki_test`, which `scripts/provision` creates).
#![allow(dead_code)] // each test binary uses a different subset

pub mod proxy;

use amiquip::{
    AmqpProperties, AmqpValue, Auth, Channel, Connection, ConnectionOptions, ConnectionTuning,
    ExchangeDeclareOptions, ExchangeType, FieldTable, Publish, QueueDeclareOptions,
    QueueDeleteOptions,
};
use enoki::{AmqpUri, Config};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const DEFAULT_URI: &str = "amqp://guest:guest@localhost:5672/enoki_test";

pub fn amqp_uri() -> String {
    std::env::var("ENOKI_TEST_AMQP_URI").unwrap_or_else(|_| DEFAULT_URI.to_owned())
}

pub fn config() -> Config {
    Config::new().amqp_uri(amqp_uri())
}

/// A `memory://` URI naming an in-process broker no other test uses.
pub fn memory_uri() -> String {
    format!("memory://{}", unique("broker"))
}

/// A name no other test (or earlier run) uses: `<prefix>_<pid>_<n>_<random>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}_{n}_{}", std::process::id(), &random[..8])
}

/// A raw amiquip connection with TCP_NODELAY, for poking at the wire directly.
pub fn raw_connection() -> Connection {
    let uri = AmqpUri::parse(&amqp_uri()).expect("ENOKI_TEST_AMQP_URI parses");
    let stream = std::net::TcpStream::connect(uri.addr()).unwrap_or_else(|e| {
        panic!(
            "RabbitMQ is not reachable at {}: {e}. Run `scripts/provision` (it starts the broker \
             and creates the enoki_test vhost), or set ENOKI_TEST_AMQP_URI.",
            uri.addr()
        )
    });
    stream.set_nodelay(true).expect("nodelay");
    let stream = mio::net::TcpStream::from_stream(stream).expect("mio stream");
    Connection::insecure_open_stream(
        stream,
        ConnectionOptions::default()
            .auth(Auth::Plain {
                username: uri.username.clone(),
                password: uri.password.clone(),
            })
            .virtual_host(uri.vhost.clone()),
        ConnectionTuning::default(),
    )
    .unwrap_or_else(|e| {
        panic!("cannot open AMQP on {uri}: {e}. Run `scripts/provision` to create the vhost.")
    })
}

/// Deletes the named queues when dropped, so tests leave the broker as they found it.
pub struct Cleanup {
    queues: Vec<String>,
}

impl Cleanup {
    pub fn new() -> Cleanup {
        Cleanup { queues: Vec::new() }
    }

    pub fn queue(&mut self, name: impl Into<String>) {
        self.queues.push(name.into());
    }

    /// The RPC queue of `service`.
    pub fn service(&mut self, service: &str) {
        self.queue(format!("rpc-{service}"));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut connection = raw_connection();
        for queue in &self.queues {
            // Each delete on its own channel: deleting a missing queue is fine in RabbitMQ,
            // but a channel error must not stop the rest.
            if let Ok(channel) = connection.open_channel(None) {
                let _ = channel.queue_delete(queue.clone(), QueueDeleteOptions::default());
            }
        }
        let _ = connection.close();
    }
}

/// Deletes the named exchanges when dropped (queues go with [`Cleanup`]).
pub struct Exchanges(pub Vec<String>);

impl Drop for Exchanges {
    fn drop(&mut self) {
        let mut connection = raw_connection();
        for name in &self.0 {
            if let Ok(channel) = connection.open_channel(None) {
                let _ = channel.exchange_delete(name.clone(), false);
            }
        }
        let _ = connection.close();
    }
}

/// A raw client: publishes requests with any properties and reads replies from its own queue.
pub struct RawClient {
    _connection: Connection,
    channel: Channel,
    pub reply_to: String,
    pub queue: String,
}

impl RawClient {
    pub fn new(cleanup: &mut Cleanup) -> RawClient {
        let mut connection = raw_connection();
        let channel = connection.open_channel(None).expect("channel");
        let reply_to = uuid::Uuid::new_v4().to_string();
        let queue = unique("raw_reply");
        channel
            .exchange_declare(
                ExchangeType::Topic,
                "nameko-rpc",
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
            )
            .expect("declare nameko-rpc");
        channel
            .queue_declare(
                queue.clone(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
            )
            .expect("declare reply queue");
        channel
            .queue_bind(
                queue.clone(),
                "nameko-rpc",
                reply_to.clone(),
                FieldTable::default(),
            )
            .expect("bind reply queue");
        cleanup.queue(queue.clone());
        RawClient {
            _connection: connection,
            channel,
            reply_to,
            queue,
        }
    }

    pub fn publish(&self, routing_key: &str, properties: AmqpProperties, body: &[u8]) {
        self.channel
            .basic_publish(
                "nameko-rpc",
                Publish::with_properties(body, routing_key, properties),
            )
            .expect("publish");
    }

    /// Properties of a well-formed request that replies to this client.
    pub fn request_properties(&self, correlation_id: &str) -> AmqpProperties {
        AmqpProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_correlation_id(correlation_id.into())
            .with_reply_to(self.reply_to.clone())
            .with_delivery_mode(2)
            .with_priority(0)
    }

    /// The next reply, or `None` after `timeout`. Polls with basic.get: a consumer per call
    /// would race its cancel against the next delivery.
    pub fn reply(&self, timeout: Duration) -> Option<amiquip::Delivery> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(get) = self
                .channel
                .basic_get(self.queue.clone(), true)
                .expect("basic.get")
            {
                return Some(get.delivery);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The number of messages ready in `queue`.
    pub fn ready_count(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare_passive(queue.to_owned())
            .expect("queue exists")
            .declared_message_count()
            .unwrap_or(0)
    }
}

pub fn header_array(items: &[&str]) -> AmqpValue {
    AmqpValue::FieldArray(
        items
            .iter()
            .map(|s| AmqpValue::LongString((*s).to_owned()))
            .collect(),
    )
}

/// Runs `rabbitmqctl` against the test vhost and returns its tab-separated rows.
pub fn rabbitmqctl(args: &[&str]) -> Vec<Vec<String>> {
    let uri = AmqpUri::parse(&amqp_uri()).expect("uri");
    let output = Command::new("rabbitmqctl")
        .args(args)
        .args(["-p", &uri.vhost, "--quiet", "--no-table-headers"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect()
}

/// Polls `check` every 20 ms until it is true or `timeout` passes; returns the last answer.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
