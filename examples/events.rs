//! Events between services, with Nameko's three handler types.
//!
//! ```text
//! cargo run --example events          # serves until Ctrl-C
//! cargo run --bin enoki -- call shop.order '["tea"]'
//! cargo run --bin enoki -- dispatch shop order_placed '{"item": "cake"}'
//! ```
//!
//! `shop.order(item)` dispatches an `order_placed` event from `shop`. Three handlers hear it:
//!
//! - `billing` (service pool, the default): one instance of `billing` handles each event, however
//!   many run; the queue keeps events while billing is down (reliable delivery).
//! - `audit` (singleton): one handler across every service subscribed as a singleton to
//!   `shop.order_placed`.
//! - `cache` (broadcast): every running instance handles every event; its queue lives and dies
//!   with the instance (reliable delivery off, the default broadcast identifier).
//!
//! Run the example twice to see the difference: billing and audit are shared between the two
//! processes, cache messages appear in both.

use enoki::{Config, EventDispatcher, EventHandler, HandlerType, Runner, Service};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    item: String,
}

fn main() -> enoki::Result<()> {
    enoki::logger::init();
    let shop = Service::new("shop")
        .dependency("events", EventDispatcher::new())
        .rpc("order", |ctx, (item,): (String,)| {
            let events = ctx.dependency::<EventDispatcher>("events")?;
            events.dispatch("order_placed", &Order { item: item.clone() })?;
            Ok(format!("ordered {item}"))
        });
    let billing =
        Service::new("billing").event_handler("shop", "order_placed", |ctx, order: Order| {
            // The call id stack continues the chain that dispatched the event.
            log::info!("billing {:?} (chain {:?})", order.item, ctx.call_id_stack());
            Ok(())
        });
    let audit = Service::new("audit").event_handler_with(
        EventHandler::new("shop", "order_placed").handler_type(HandlerType::Singleton),
        |_ctx, order: Order| {
            log::info!("audit: {order:?}");
            Ok(())
        },
    );
    let cache = Service::new("cache").event_handler_with(
        EventHandler::new("shop", "order_placed")
            .handler_type(HandlerType::Broadcast)
            .reliable_delivery(false),
        |_ctx, order: Order| {
            log::info!("cache: forget {:?}", order.item);
            Ok(())
        },
    );
    Runner::new(Config::from_env()?)
        .service(shop)
        .service(billing)
        .service(audit)
        .service(cache)
        .run()
}
