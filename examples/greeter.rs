//! Two services in one process, one calling the other through `RpcProxy`.
//!
//! ```text
//! cargo run --example greeter     # no AMQP_URI: in-process memory:// broker, greets itself
//! AMQP_URI=amqp://guest:guest@localhost:5672/ cargo run --example greeter
//! cargo run --bin enoki -- call greeter.hello '["ada lovelace"]'   # "Hello, Ada Lovelace!"
//! ```
//!
//! On `memory://` nothing outside the process can call in, so the example calls
//! `greeter.hello("ada lovelace")` itself once the services are up.

use enoki::{ClusterRpcProxy, Config, ErrorKind, RpcProxy, Runner, Service};
use std::time::Duration;

/// Formats names; knows nothing of greetings.
fn names() -> Service {
    Service::new("names").rpc("title", |_ctx, (name,): (String,)| {
        let titled: Vec<String> = name
            .split_whitespace()
            .map(|word| {
                let mut chars = word.chars();
                match chars.next() {
                    Some(first) => first.to_uppercase().chain(chars).collect(),
                    None => String::new(),
                }
            })
            .collect();
        Ok(titled.join(" "))
    })
}

/// Greets people, asking `names` to format the name first.
fn greeter() -> Service {
    Service::new("greeter")
        .dependency("names", RpcProxy::new("names"))
        .rpc("hello", |ctx, (name,): (String,)| {
            let names = ctx.dependency::<RpcProxy>("names")?;
            let name: String = names.call("title", (name,))?;
            Ok(format!("Hello, {name}!"))
        })
}

/// Greets from inside the process once `greeter` is up.
fn call_in_process(config: Config) {
    std::thread::spawn(move || {
        let called = ClusterRpcProxy::new(&config).and_then(|cluster| {
            loop {
                let args = ("ada lovelace",);
                match cluster.call_timeout::<String>(
                    "greeter",
                    "hello",
                    args,
                    Duration::from_secs(5),
                ) {
                    // Not consuming yet: the runner is still starting.
                    Err(e) if matches!(e.kind(), ErrorKind::UnknownService(_)) => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    other => break other,
                }
            }
        });
        match called {
            Ok(greeting) => log::info!("in-process client: {greeting}"),
            Err(e) => log::error!("in-process client failed: {e}"),
        }
    });
}

fn main() -> enoki::Result<()> {
    enoki::logger::init();
    let mut config = Config::from_env()?;
    if std::env::var_os("AMQP_URI").is_none() && config.uri() == Config::new().uri() {
        log::info!("AMQP_URI is unset: running on the in-process memory:// broker");
        config = config.amqp_uri("memory://");
        call_in_process(config.clone());
    } else {
        log::info!("connecting to {}", config.broker()?);
    }
    Runner::new(config)
        .service(names())
        .service(greeter())
        .run()
}
