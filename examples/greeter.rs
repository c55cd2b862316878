//! Two services in one process, one calling the other through `RpcProxy`.
//!
//! ```text
//! cargo run --example greeter
//! cargo run --bin enoki -- call greeter.hello '["ada lovelace"]'   # "Hello, Ada Lovelace!"
//! ```

use enoki::{Config, RpcProxy, Runner, Service};

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

fn main() -> enoki::Result<()> {
    enoki::logger::init();
    Runner::new(Config::from_env()?)
        .service(names())
        .service(greeter())
        .run()
}
