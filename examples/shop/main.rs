//! A small shop of four services: a gateway, orders, payments and notifications, talking over
//! RPC and events (see `services.rs` for the picture).
//!
//! ```text
//! cargo run --example shop                    # runs the shop on AMQP_URI (default: memory://)
//! enoki call gateway.checkout '["ada", [{"sku": "tea", "quantity": 2, "price_cents": 450}]]'
//! enoki graph --svg shop.svg                  # from another terminal, on RabbitMQ
//! cargo run --example shop -- graph [--mermaid] # the graph, drawn from an in-process run
//! ```

mod services;

use enoki::describe::{Graph, discover};
use enoki::{Config, Runner};
use std::time::Duration;

fn main() -> enoki::Result<()> {
    enoki::logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("graph") {
        // Every service on an in-process broker of its own, described and drawn.
        let config = Config::new().amqp_uri("memory://shop-graph");
        let mut runner = services::all()
            .into_iter()
            .fold(Runner::new(config.clone()), Runner::service);
        runner.start()?;
        let found = discover(&config, Duration::from_secs(2))?;
        runner.stop();
        let graph = Graph::new(&found);
        if args.iter().any(|a| a == "--mermaid") {
            print!("{}", graph.mermaid());
        } else {
            print!("{}", graph.dot());
        }
        return Ok(());
    }
    let mut config = Config::from_env()?;
    if std::env::var_os("AMQP_URI").is_none() && std::env::var_os("ENOKI_CONFIG").is_none() {
        config = config.amqp_uri("memory://");
    }
    services::all()
        .into_iter()
        .fold(Runner::new(config), Runner::service)
        .run()
}
