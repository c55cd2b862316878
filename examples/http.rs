//! HTTP routes in front of an RPC service: converters, JSON in and out, errors, context.
//!
//! ```text
//! cargo run --example http                 # RabbitMQ from AMQP_URI; HTTP on 0.0.0.0:8000
//! curl localhost:8000/items/2
//! curl localhost:8000/items/lamp           # 404 from the inventory: an expected error, 400
//! curl -X POST localhost:8000/orders -d '{"item": 1, "quantity": 2}' \
//!      -H 'Content-Type: application/json' -H 'Authorization: Bearer t0k'
//! curl localhost:8000/files/docs/readme.md
//! curl localhost:8000/price/2.5/eur
//! curl localhost:8000/orders/0f8fad5b-d9cb-469f-a165-70867728950e
//! ```

use enoki::http::{Json, Request, Response, Route};
use enoki::{Config, RemoteError, RpcProxy, Runner, Service, WorkerContext};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
    stock: u32,
}

#[derive(Deserialize)]
struct Order {
    item: u64,
    quantity: u32,
}

/// The RPC service the HTTP routes call.
fn inventory() -> Service {
    Service::new("inventory").rpc("item", |ctx: &WorkerContext, (id,): (u64,)| {
        log::info!("item {id} asked for by {:?}", ctx.auth_token());
        match id {
            1 => Ok(Item {
                id,
                name: "lamp".into(),
                stock: 3,
            }),
            2 => Ok(Item {
                id,
                name: "desk".into(),
                stock: 0,
            }),
            _ => Err(RemoteError::new("NotFound", format!("no item {id}")).into()),
        }
    })
}

fn shop() -> Service {
    Service::new("shop")
        .dependency("inventory", RpcProxy::new("inventory"))
        // `<int:id>`: only digits reach the handler; `/items/lamp` is a 404.
        .http_route(
            Route::new("GET", "/items/<int:id>").expected_errors(["NotFound"]),
            |ctx, req: &Request| {
                let item: Item = ctx
                    .dependency::<RpcProxy>("inventory")?
                    .call("item", (req.param::<u64>("id")?,))?;
                Ok(Json(item))
            },
        )
        // JSON in, JSON out; errors as JSON; the caller's token travels to the inventory.
        .http_route(
            Route::new("POST", "/orders")
                .expected_errors(["NotFound", "OutOfStock"])
                .json_errors()
                .context_header("Authorization", "auth_token"),
            |ctx, req: &Request| {
                let order: Order = req.json()?;
                let item: Item = ctx
                    .dependency::<RpcProxy>("inventory")?
                    .call("item", (order.item,))?;
                if item.stock < order.quantity {
                    return Err(RemoteError::new("OutOfStock", item.name).into());
                }
                let body = json!({"ordered": item.name, "quantity": order.quantity});
                Ok(Response::json(&body)?.status(201))
            },
        )
        .http("GET", "/orders/<uuid:id>", |_ctx, req: &Request| {
            let id: uuid::Uuid = req.param("id")?;
            Ok((
                200,
                [("X-Order-Version", id.get_version_num().to_string())],
                id.to_string(),
            ))
        })
        .http("GET", "/files/<path:file>", |_ctx, req: &Request| {
            Ok(format!(
                "you asked for {}",
                req.param_str("file").unwrap_or("")
            ))
        })
        .http(
            "GET",
            "/price/<float:amount>/<any(eur,usd):currency>",
            |_ctx, req: &Request| {
                let amount: f64 = req.param("amount")?;
                let currency = req.param_str("currency").unwrap_or("eur");
                Ok(Json(json!({"amount": amount, "currency": currency})))
            },
        )
        .http("GET", "/search", |_ctx, req: &Request| {
            let terms: Vec<Value> = req.query_all("q").into_iter().map(Value::from).collect();
            Ok(Json(json!({"terms": terms})))
        })
}

fn main() -> enoki::Result<()> {
    enoki::logger::init();
    let config = Config::from_env()?;
    log::info!(
        "http example on {}, broker {}",
        config.web_address(),
        config.amqp()?
    );
    Runner::new(config)
        .service(inventory())
        .service(shop())
        .run()
}
