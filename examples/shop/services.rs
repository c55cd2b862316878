//! The shop's services. `main.rs` runs them; the tests include this file to check the graph.
//!
//! ```text
//! gateway ──rpc──▶ orders ──rpc──▶ payments ──rpc──▶ fraud (a Python Nameko service, optional)
//!                    │                │
//!                    │ order_placed   │ payment_succeeded
//!                    ▼                ▼
//!               notifications ◀───────┘   (and orders, which marks the order paid)
//! ```
//!
//! The gateway is RPC-only for now; its HTTP routes (`POST /orders`, `GET /orders/<id>`) go on
//! the same service once the HTTP entrypoint lands, calling the same proxy.

use enoki::{ErrorKind, EventDispatcher, RemoteError, RpcProxy, Service, ServiceProxy};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One line of an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub sku: String,
    pub quantity: u32,
    pub price_cents: u64,
}

/// An order as the orders service keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub id: u64,
    pub customer: String,
    pub items: Vec<Item>,
    pub total_cents: u64,
    pub status: String,
}

/// The public face: what a web front end (later, HTTP routes) calls.
pub fn gateway() -> Service {
    Service::new("gateway")
        .version("1.0.0")
        .dependency(
            "orders",
            RpcProxy::new("orders").timeout(Duration::from_secs(10)),
        )
        .rpc("checkout", |ctx, (customer, items): (String, Vec<Item>)| {
            let orders = ctx.dependency::<RpcProxy>("orders")?;
            let order: Order = orders.call("place", (customer, items))?;
            Ok(json!({"order": order.id, "status": order.status}))
        })
        .rpc("order_status", |ctx, (id,): (u64,)| {
            let orders = ctx.dependency::<RpcProxy>("orders")?;
            let order: Order = orders.call("get", (id,))?;
            Ok(order.status)
        })
}

/// Takes orders, has them paid, and tells whoever listens.
pub fn orders() -> Service {
    let book: Arc<Mutex<BTreeMap<u64, Order>>> = Arc::default();
    let (placing, reading, paying) = (book.clone(), book.clone(), book);
    Service::new("orders")
        .version("1.2.0")
        .dependency(
            "payments",
            RpcProxy::new("payments").timeout(Duration::from_secs(10)),
        )
        .dependency("events", EventDispatcher::new().declares(["order_placed"]))
        .rpc(
            "place",
            move |ctx, (customer, items): (String, Vec<Item>)| {
                if items.is_empty() {
                    return Err(RemoteError::new("ValueError", "an order needs items").into());
                }
                let total_cents = items
                    .iter()
                    .map(|i| i.price_cents * u64::from(i.quantity))
                    .sum();
                let order = {
                    let mut book = placing.lock();
                    let id = book.len() as u64 + 1;
                    let order = Order {
                        id,
                        customer,
                        items,
                        total_cents,
                        status: "placed".into(),
                    };
                    book.insert(id, order.clone());
                    order
                };
                ctx.dependency::<EventDispatcher>("events")?
                    .dispatch("order_placed", &order)?;
                let payments = ctx.dependency::<RpcProxy>("payments")?;
                let _: Value = payments.call("charge", (order.id, order.total_cents))?;
                Ok(order)
            },
        )
        .rpc("get", move |_ctx, (id,): (u64,)| {
            reading
                .lock()
                .get(&id)
                .cloned()
                .ok_or_else(|| RemoteError::new("KeyError", format!("no order {id}")).into())
        })
        .event_handler("payments", "payment_succeeded", move |_ctx, paid: Value| {
            if let Some(order) = paid["order"]
                .as_u64()
                .and_then(|id| paying.lock().get(&id).cloned())
            {
                paying.lock().insert(
                    order.id,
                    Order {
                        status: "paid".into(),
                        ..order
                    },
                );
            }
            Ok(())
        })
}

/// Charges orders, asking a fraud scorer first when one runs.
pub fn payments() -> Service {
    Service::new("payments")
        .version("0.9.1")
        .dependency(
            "fraud",
            RpcProxy::new("fraud").timeout(Duration::from_secs(2)),
        )
        .dependency(
            "events",
            EventDispatcher::new().declares(["payment_succeeded"]),
        )
        .rpc("charge", |ctx, (order, amount_cents): (u64, u64)| {
            // `fraud` is a Python Nameko service in the real shop; without it, every order passes.
            let fraud: &ServiceProxy = ctx.dependency::<RpcProxy>("fraud")?;
            let score: f64 = match fraud.call("score", (order, amount_cents)) {
                Ok(score) => score,
                Err(e) if matches!(e.kind(), ErrorKind::UnknownService(_)) => 0.0,
                Err(e) => return Err(e),
            };
            if score > 0.9 {
                return Err(RemoteError::new("PaymentDeclined", format!("order {order}")).into());
            }
            ctx.dependency::<EventDispatcher>("events")?.dispatch(
                "payment_succeeded",
                &json!({"order": order, "amount_cents": amount_cents}),
            )?;
            Ok(json!({"order": order, "charged_cents": amount_cents}))
        })
}

/// Tells customers what happened; `sent` lists what it told them.
pub fn notifications() -> Service {
    let outbox: Arc<Mutex<Vec<String>>> = Arc::default();
    let (placed, paid, listing) = (outbox.clone(), outbox.clone(), outbox);
    Service::new("notifications")
        .version("1.0.0")
        .event_handler("orders", "order_placed", move |_ctx, order: Order| {
            placed
                .lock()
                .push(format!("{}: order {} received", order.customer, order.id));
            Ok(())
        })
        .event_handler(
            "payments",
            "payment_succeeded",
            move |_ctx, paid_event: Value| {
                paid.lock()
                    .push(format!("order {} paid", paid_event["order"]));
                Ok(())
            },
        )
        .rpc("sent", move |_ctx, _: enoki::Args| {
            Ok(listing.lock().clone())
        })
}

/// Every service of the shop.
pub fn all() -> Vec<Service> {
    vec![gateway(), orders(), payments(), notifications()]
}
