//! The raw amiquip floor shared by the RPC and HTTP benches: what any Nameko-compatible client
//! and server must do on the wire, with nothing else (benches/rpc.rs describes it).

#![allow(dead_code)]

use amiquip::{
    AmqpProperties, AmqpValue, Auth, Channel, Confirm, Connection, ConnectionOptions,
    ConnectionTuning, Consumer, ConsumerMessage, ConsumerOptions, Delivery, ExchangeDeclareOptions,
    ExchangeType, FieldTable, Publish, QueueDeclareOptions, QueueDeleteOptions, Return,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};
use enoki::AmqpUri;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::Duration;

pub const EXCHANGE: &str = "nameko-rpc";
/// enoki's default pool size and prefetch, used by the pool floor and the enoki container.
pub const WORKERS: usize = 10;
pub const PREFETCH: u16 = 10;
/// Nameko's reply queue expiry, sent as kombu does: a signed 32-bit integer.
pub const REPLY_QUEUE_TTL_MS: i32 = 300_000;
pub const HEARTBEAT: u16 = 60;
/// Longest wait for any one confirm or reply before the bench gives up.
pub const TIMEOUT: Duration = Duration::from_secs(30);
pub const REQUEST_BODY: &[u8] = br#"{"args": ["hello"], "kwargs": {}}"#;
pub const REPLY_BODY: &[u8] = br#"{"result": "hello", "error": null}"#;

// ---------------------------------------------------------------------------------------------
// Broker plumbing shared by the floor

/// Parses the URI and checks its vhost is reachable; falls back to `/` if it is not.
pub fn reachable_vhost(text: &str) -> (AmqpUri, String) {
    let mut uri = AmqpUri::parse(text).expect("ENOKI_BENCH_AMQP_URI is not a valid AMQP URI");
    match try_connect(&uri, 0) {
        Ok(connection) => {
            let _ = connection.close();
            (uri, text.to_owned())
        }
        Err(e) if uri.vhost != "/" => {
            eprintln!(
                "cannot open vhost {:?} ({e}); falling back to `/`",
                uri.vhost
            );
            uri.vhost = "/".to_owned();
            let connection = connect(&uri, 0);
            let _ = connection.close();
            let text = format!(
                "amqp://{}:{}@{}/%2F",
                percent_encode(&uri.username),
                percent_encode(&uri.password),
                uri.addr()
            );
            (uri, text)
        }
        Err(e) => panic!("cannot connect to {uri}: {e}"),
    }
}

pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Opens an AMQP connection on a socket with `TCP_NODELAY`, as enoki does.
pub fn try_connect(
    uri: &AmqpUri,
    heartbeat: u16,
) -> Result<Connection, Box<dyn std::error::Error>> {
    let stream = TcpStream::connect(uri.addr())?;
    stream.set_nodelay(true)?;
    let stream = mio::net::TcpStream::from_stream(stream)?;
    let options = ConnectionOptions::default()
        .auth(Auth::Plain {
            username: uri.username.clone(),
            password: uri.password.clone(),
        })
        .virtual_host(uri.vhost.clone())
        .heartbeat(heartbeat);
    Ok(Connection::insecure_open_stream(
        stream,
        options,
        ConnectionTuning::default(),
    )?)
}

pub fn connect(uri: &AmqpUri, heartbeat: u16) -> Connection {
    try_connect(uri, heartbeat).unwrap_or_else(|e| panic!("cannot connect to {uri}: {e}"))
}

pub fn open_channel(connection: &mut Connection) -> Channel {
    connection
        .open_channel(None)
        .expect("cannot open an AMQP channel")
}

/// Declares `nameko-rpc` with Nameko's flags, and a durable queue bound to it by `key`.
pub fn declare_bound_queue(channel: &Channel, queue: &str, key: &str, expires: bool) {
    channel
        .exchange_declare(
            ExchangeType::Topic,
            EXCHANGE,
            ExchangeDeclareOptions {
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            },
        )
        .expect("cannot declare the nameko-rpc exchange");
    let mut arguments = FieldTable::default();
    if expires {
        arguments.insert("x-expires".into(), AmqpValue::LongInt(REPLY_QUEUE_TTL_MS));
    }
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments,
            },
        )
        .expect("cannot declare a bench queue");
    channel
        .queue_bind(queue, EXCHANGE, key, FieldTable::default())
        .expect("cannot bind a bench queue");
}

/// Cancels `consumer` and waits until amiquip has handed it its `ClientCancelled`.
///
/// amiquip's I/O thread unblocks `cancel()` before it sends `ClientCancelled` to the consumer;
/// a consumer dropped in between makes that send fail, and the I/O thread then gives up the
/// whole connection ("channel client dropped without being disconnected").
pub fn cancel(consumer: Consumer<'_>) {
    consumer.cancel().expect("cannot cancel a consumer");
    loop {
        match consumer.receiver().recv_timeout(TIMEOUT) {
            Ok(ConsumerMessage::ClientCancelled) => return,
            // Unacked, it goes back to the queue when the channel closes.
            Ok(ConsumerMessage::Delivery(_)) => {}
            other => panic!("cannot cancel a consumer: {other:?}"),
        }
    }
}

pub fn consumer_options() -> ConsumerOptions {
    ConsumerOptions {
        no_local: false,
        no_ack: false,
        exclusive: false,
        arguments: FieldTable::default(),
    }
}

/// Reply queues are consumed with automatic acks, as enoki's client consumes them: an ack
/// protects nothing there (a caller that dies loses its reply either way).
pub fn reply_consumer_options() -> ConsumerOptions {
    ConsumerOptions {
        no_ack: true,
        ..consumer_options()
    }
}

/// Deletes its queues when dropped, also while unwinding from a panic.
pub struct Cleanup {
    pub uri: AmqpUri,
    pub queues: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut connection = match try_connect(&self.uri, 0) {
            Ok(c) => c,
            Err(e) => return eprintln!("cannot delete the bench queues {:?}: {e}", self.queues),
        };
        // A delete of a missing queue closes the channel: one channel per queue.
        for queue in &self.queues {
            let deleted = connection.open_channel(None).and_then(|channel| {
                channel.queue_delete(queue.as_str(), QueueDeleteOptions::default())?;
                channel.close()
            });
            if let Err(e) = deleted {
                eprintln!("cannot delete queue {queue}: {e}");
            }
        }
        let _ = connection.close();
    }
}

/// A channel in confirm mode that publishes one message at a time and waits for its confirm.
pub struct ConfirmedPublisher {
    channel: Channel,
    confirms: Receiver<Confirm>,
    returns: Receiver<Return>,
    seq: u64,
}

impl ConfirmedPublisher {
    pub fn open(connection: &mut Connection) -> ConfirmedPublisher {
        let channel = open_channel(connection);
        let returns = channel
            .listen_for_returns()
            .expect("cannot listen for returns");
        let confirms = channel
            .listen_for_publisher_confirms()
            .expect("cannot listen for confirms");
        channel
            .enable_publisher_confirms()
            .expect("cannot enable publisher confirms");
        ConfirmedPublisher {
            channel,
            confirms,
            returns,
            seq: 0,
        }
    }

    /// Publishes persistent to `nameko-rpc` and waits for the confirm; panics if the broker
    /// nacks or returns it.
    pub fn publish(
        &mut self,
        routing_key: &str,
        properties: AmqpProperties,
        body: &[u8],
        mandatory: bool,
    ) {
        self.channel
            .basic_publish(
                EXCHANGE,
                Publish {
                    body,
                    routing_key: routing_key.to_owned(),
                    mandatory,
                    immediate: false,
                    properties: properties.with_delivery_mode(2).with_priority(0),
                },
            )
            .expect("publish failed");
        self.seq += 1;
        loop {
            match self.confirms.recv_timeout(TIMEOUT) {
                Ok(Confirm::Ack(p))
                    if p.delivery_tag == self.seq || (p.multiple && p.delivery_tag > self.seq) =>
                {
                    break;
                }
                Ok(Confirm::Nack(p)) if p.delivery_tag >= self.seq => {
                    panic!("the broker nacked a publish")
                }
                Ok(_) => continue,
                Err(e) => panic!("no publisher confirm: {e}"),
            }
        }
        assert!(
            self.returns.try_recv().is_err(),
            "the broker returned a publish to {routing_key}: nothing is bound"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Floor server

/// A raw echo server on its own queue, consuming on one connection, publishing on another.
pub struct FloorServer {
    pub service: String,
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

/// A request as handed to a pool worker.
pub struct Job {
    tag: u64,
    reply_to: String,
    properties: AmqpProperties,
}

impl FloorServer {
    /// Starts serving `service` inline (`workers == 0`) or on a pool of `workers` threads;
    /// returns once the queue is consumed.
    pub fn start(uri: &AmqpUri, service: &str, workers: usize) -> FloorServer {
        FloorServer::relaying(uri, service, workers, None)
    }

    /// As [`FloorServer::start`]; with `relay`, an inline server makes one raw serial call to
    /// `relay` (a direct client, as [`with_direct_client`]) before replying to each request.
    pub fn relaying(
        uri: &AmqpUri,
        service: &str,
        workers: usize,
        relay: Option<&str>,
    ) -> FloorServer {
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let (ready, ready_rx) = crossbeam_channel::bounded(1);
        let (uri, name) = (uri.clone(), service.to_owned());
        let relay = relay.map(str::to_owned);
        let thread = std::thread::Builder::new()
            .name(format!("floor-{service}"))
            .spawn(move || match relay {
                Some(target) => with_direct_client(&uri, &target, |hop| {
                    serve(&uri, &name, workers, Some(hop), &ready, &stop_rx)
                }),
                None => serve(&uri, &name, workers, None, &ready, &stop_rx),
            })
            .expect("cannot spawn the floor server");
        ready_rx
            .recv_timeout(TIMEOUT)
            .expect("the floor server did not start");
        FloorServer {
            service: service.to_owned(),
            stop,
            thread,
        }
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().expect("the floor server panicked");
    }
}

/// The reply to a request: the request's correlation id and content type, persistent.
pub fn reply_properties(request: &AmqpProperties) -> AmqpProperties {
    let mut properties = AmqpProperties::default()
        .with_content_encoding("utf-8".to_owned())
        .with_headers(FieldTable::default());
    if let Some(v) = request.content_type() {
        properties = properties.with_content_type(v.clone());
    }
    if let Some(v) = request.correlation_id() {
        properties = properties.with_correlation_id(v.clone());
    }
    properties
}

pub fn serve(
    uri: &AmqpUri,
    service: &str,
    workers: usize,
    mut hop: Option<&mut dyn FnMut()>,
    ready: &Sender<()>,
    stop: &Receiver<()>,
) {
    let queue = format!("rpc-{service}");
    let mut consuming = connect(uri, HEARTBEAT);
    let mut publishing = connect(uri, 0);
    let channel = open_channel(&mut consuming);
    declare_bound_queue(&channel, &queue, &format!("{service}.*"), false);
    channel
        .qos(0, PREFETCH, false)
        .expect("cannot set the prefetch");
    let consumer = channel
        .basic_consume(queue.as_str(), consumer_options())
        .expect("cannot consume the floor queue");

    let (jobs, jobs_rx) = crossbeam_channel::bounded::<Job>(workers.max(1));
    let (acks, acks_rx) = crossbeam_channel::unbounded::<u64>();
    let mut inline = (workers == 0).then(|| ConfirmedPublisher::open(&mut publishing));
    let pool: Vec<_> = (0..workers)
        .map(|_| {
            let mut publisher = ConfirmedPublisher::open(&mut publishing);
            let (jobs, acks) = (jobs_rx.clone(), acks.clone());
            std::thread::spawn(move || {
                for job in jobs {
                    publisher.publish(
                        &job.reply_to,
                        reply_properties(&job.properties),
                        REPLY_BODY,
                        false,
                    );
                    let _ = acks.send(job.tag);
                }
            })
        })
        .collect();
    // Only the workers hold the job receiver, so a send fails if they are all gone; `acks`
    // stays open here so an inline server's select never sees it disconnect.
    drop(jobs_rx);
    let _ = ready.send(());

    // Deliveries handed to the pool and not yet acked, by tag.
    let mut outstanding: HashMap<u64, Delivery> = HashMap::new();
    loop {
        select! {
            recv(consumer.receiver()) -> message => match message {
                Ok(ConsumerMessage::Delivery(delivery)) => {
                    let reply_to = delivery
                        .properties
                        .reply_to()
                        .clone()
                        .expect("a request without reply_to");
                    match &mut inline {
                        Some(publisher) => {
                            if let Some(hop) = hop.as_mut() {
                                hop();
                            }
                            publisher.publish(
                                &reply_to,
                                reply_properties(&delivery.properties),
                                REPLY_BODY,
                                false,
                            );
                            delivery.ack(&channel).expect("ack failed");
                        }
                        None => {
                            let job = Job {
                                tag: delivery.delivery_tag(),
                                reply_to,
                                properties: delivery.properties.clone(),
                            };
                            outstanding.insert(job.tag, delivery);
                            jobs.send(job).expect("the floor pool is gone");
                        }
                    }
                }
                other => panic!("the floor consumer stopped: {other:?}"),
            },
            recv(acks_rx) -> tag => {
                let tag = tag.expect("the floor pool is gone");
                if let Some(delivery) = outstanding.remove(&tag) {
                    delivery.ack(&channel).expect("ack failed");
                }
            },
            recv(stop) -> _ => break,
        }
    }

    drop((jobs, acks));
    for worker in pool {
        worker.join().expect("a floor worker panicked");
    }
    cancel(consumer);
    channel
        .queue_delete(queue.as_str(), QueueDeleteOptions::default())
        .expect("cannot delete the floor queue");
    drop(inline);
    let _ = channel.close();
    let _ = consuming.close();
    let _ = publishing.close();
}

// ---------------------------------------------------------------------------------------------
// Floor client

/// A request's properties as a Nameko client sends them (persistence is added on publish).
pub fn request_properties(reply_to: &str, correlation_id: String, call_id: &str) -> AmqpProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "nameko.call_id_stack".into(),
        AmqpValue::FieldArray(vec![AmqpValue::LongString(call_id.to_owned())]),
    );
    AmqpProperties::default()
        .with_content_type("application/json".to_owned())
        .with_content_encoding("utf-8".to_owned())
        .with_correlation_id(correlation_id)
        .with_reply_to(reply_to.to_owned())
        .with_headers(headers)
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Runs `body` with a raw serial client of `service`, which consumes its own reply queue on
/// the calling thread: the minimum a round trip can cost.
pub fn with_direct_client<R>(
    uri: &AmqpUri,
    service: &str,
    body: impl FnOnce(&mut dyn FnMut()) -> R,
) -> R {
    let reply_to = new_id();
    let reply_queue = format!("rpc.reply-bench-{reply_to}");
    let call_id = format!("bench.call.{}", new_id());
    let routing_key = format!("{service}.echo");
    let mut consuming = connect(uri, HEARTBEAT);
    let mut publishing = connect(uri, 0);
    let channel = open_channel(&mut consuming);
    declare_bound_queue(&channel, &reply_queue, &reply_to, true);
    let consumer = channel
        .basic_consume(reply_queue.as_str(), reply_consumer_options())
        .expect("cannot consume the reply queue");
    let mut publisher = ConfirmedPublisher::open(&mut publishing);
    let replies = consumer.receiver();

    let result = body(&mut || {
        let correlation_id = new_id();
        let properties = request_properties(&reply_to, correlation_id.clone(), &call_id);
        publisher.publish(&routing_key, properties, REQUEST_BODY, true);
        loop {
            match replies.recv_timeout(TIMEOUT) {
                Ok(ConsumerMessage::Delivery(delivery)) => {
                    let mine = delivery.properties.correlation_id().as_deref()
                        == Some(correlation_id.as_str());
                    assert_eq!(delivery.body, REPLY_BODY);
                    if mine {
                        break;
                    }
                }
                other => panic!("no reply: {other:?}"),
            }
        }
    });

    drop(publisher);
    cancel(consumer);
    channel
        .queue_delete(reply_queue.as_str(), QueueDeleteOptions::default())
        .expect("cannot delete the reply queue");
    let _ = channel.close();
    let _ = consuming.close();
    let _ = publishing.close();
    result
}

/// A raw client shaped like enoki's: one reply queue shared by every calling thread, a listener
/// thread that wakes callers by correlation id, and a pool of confirming publishing channels.
pub struct SharedClient {
    reply_to: String,
    routing_key: String,
    call_id: String,
    pending: Mutex<HashMap<String, Sender<Vec<u8>>>>,
    publishers: Mutex<Vec<ConfirmedPublisher>>,
}

impl SharedClient {
    /// One round trip; safe to call from many threads at once.
    pub fn call(&self) {
        let correlation_id = new_id();
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.pending.lock().insert(correlation_id.clone(), tx);
        let properties = request_properties(&self.reply_to, correlation_id, &self.call_id);
        let mut publisher = self
            .publishers
            .lock()
            .pop()
            .expect("more callers than publishing channels");
        publisher.publish(&self.routing_key, properties, REQUEST_BODY, true);
        self.publishers.lock().push(publisher);
        match rx.recv_timeout(TIMEOUT) {
            Ok(body) => assert_eq!(body, REPLY_BODY),
            Err(RecvTimeoutError::Timeout) => panic!("no reply within {TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the reply listener is gone"),
        }
    }
}

/// Runs `body` with a [`SharedClient`] of `service` for up to `callers` concurrent callers.
pub fn with_shared_client<R>(
    uri: &AmqpUri,
    service: &str,
    callers: usize,
    body: impl FnOnce(&SharedClient) -> R,
) -> R {
    with_shared_client_of(uri, service, "echo", callers, body)
}

/// As [`with_shared_client`], calling `method` (which takes one argument and returns it).
pub fn with_shared_client_of<R>(
    uri: &AmqpUri,
    service: &str,
    method: &str,
    callers: usize,
    body: impl FnOnce(&SharedClient) -> R,
) -> R {
    let reply_to = new_id();
    let reply_queue = format!("rpc.reply-bench-{reply_to}");
    let mut consuming = connect(uri, HEARTBEAT);
    let mut publishing = connect(uri, 0);
    let channel = open_channel(&mut consuming);
    declare_bound_queue(&channel, &reply_queue, &reply_to, true);
    let client = SharedClient {
        reply_to,
        routing_key: format!("{service}.{method}"),
        call_id: format!("bench.call.{}", new_id()),
        pending: Mutex::new(HashMap::new()),
        publishers: Mutex::new(
            (0..callers)
                .map(|_| ConfirmedPublisher::open(&mut publishing))
                .collect(),
        ),
    };
    let result = std::thread::scope(|scope| {
        // Dropping `stop`, also while unwinding from a panic in `body`, stops the listener.
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (listening, listening_rx) = crossbeam_channel::bounded(1);
        let (pending, reply_queue) = (&client.pending, &reply_queue);
        // The listener owns the consuming channel (amiquip's Channel is not Sync), wakes each
        // reply's caller, and deletes the reply queue when told to stop.
        scope.spawn(move || {
            let consumer = channel
                .basic_consume(reply_queue.as_str(), reply_consumer_options())
                .expect("cannot consume the reply queue");
            let _ = listening.send(());
            loop {
                select! {
                    recv(consumer.receiver()) -> message => match message {
                        Ok(ConsumerMessage::Delivery(mut delivery)) => {
                            let body = std::mem::take(&mut delivery.body);
                            let waiter = delivery
                                .properties
                                .correlation_id()
                                .as_ref()
                                .and_then(|id| pending.lock().remove(id));
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(body);
                            }
                        }
                        other => panic!("the reply consumer stopped: {other:?}"),
                    },
                    recv(stop_rx) -> _ => break,
                }
            }
            cancel(consumer);
            channel
                .queue_delete(reply_queue.as_str(), QueueDeleteOptions::default())
                .expect("cannot delete the reply queue");
            let _ = channel.close();
        });
        listening_rx
            .recv_timeout(TIMEOUT)
            .expect("the reply listener did not start");
        let result = body(&client);
        drop(stop);
        result
    });

    drop(client);
    let _ = consuming.close();
    let _ = publishing.close();
    result
}
