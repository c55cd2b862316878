//! `enoki shell` with piped input, and `enoki show-config`.

mod support;

use enoki::{Container, Service};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::{Cleanup, Exchanges, unique};

fn run_shell(config: &enoki::Config, script: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_enoki"))
        .arg("shell")
        .args(["--timeout", "10"])
        .env("AMQP_URI", config.uri())
        .env("RPC_EXCHANGE", config.exchange())
        .env_remove("ENOKI_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs enoki shell");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script written");
    child.wait_with_output().expect("shell ends")
}

#[test]
fn a_piped_session_calls_a_service_and_dispatches_an_event() {
    let (name, source) = (unique("shell"), unique("shell_src"));
    let mut cleanup = Cleanup::new();
    cleanup.service(&name);
    cleanup.queue(format!("evt-{source}-pinged--{name}.handle_pinged"));
    let rpcx = unique("rpcx");
    let _exchanges = Exchanges(vec![rpcx.clone(), format!("{source}.events")]);
    let config = support::config().rpc_exchange(rpcx);
    let heard: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = heard.clone();
    let service = Service::new(&name)
        .rpc("add", |_ctx, (a, b): (i64, i64)| Ok(a + b))
        .rpc("greet", |_ctx, args: enoki::Args| {
            Ok(format!(
                "hello {}",
                args.kwargs
                    .get("who")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            ))
        })
        .event_handler(&source, "pinged", move |_ctx, payload: Value| {
            sink.lock().push(payload);
            Ok(())
        });
    let mut container = Container::new(service, config.clone());
    container.start().expect("service starts");

    let script = format!(
        "{name}.add(1, 2)\n\
         n.rpc.{name}.greet(who=\"ada\")\n\
         # comments and blank lines are skipped\n\
         \n\
         dispatch {source} pinged {{\"n\": 7, \"tags\": [\"a b\"]}}\n\
         services\n\
         history\n\
         !1\n\
         exit\n\
         {name}.add(40, 2)\n"
    );
    let out = run_shell(&config, &script);
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "3".to_owned(),
            "\"hello ada\"".to_owned(),
            format!("dispatched {source}.pinged"),
            format!("{name} (1 instance): add, greet"),
            format!("   1  {name}.add(1, 2)"),
            format!("   2  n.rpc.{name}.greet(who=\"ada\")"),
            format!("   3  dispatch {source} pinged {{\"n\": 7, \"tags\": [\"a b\"]}}"),
            "   4  services".to_owned(),
            format!("{name}.add(1, 2)"),
            "3".to_owned(),
        ],
        "stderr: {stderr}"
    );
    assert!(support::eventually(Duration::from_secs(5), || heard
        .lock()
        .len()
        == 1));
    assert_eq!(heard.lock()[0], json!({"n": 7, "tags": ["a b"]}));

    // Failures are reported and the session goes on; a script with failures exits 1.
    let out = run_shell(
        &config,
        &format!("{name}.add(1)\n{name}.nope()\nbogus\n{name}.add(2, 2)\n"),
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "4\n");
    assert!(stderr.contains("IncorrectSignature"), "{stderr}");
    assert!(stderr.contains("MethodNotFound"), "{stderr}");
    assert!(stderr.contains("unknown command `bogus`"), "{stderr}");
    assert_eq!(out.status.code(), Some(1));
    container.stop();
}

#[test]
fn show_config_prints_the_effective_configuration_with_the_password_masked() {
    let dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("config.json");
    std::fs::write(
        &file,
        r#"{"AMQP_URI": "amqp://shop:${SHOP_PASSWORD}@broker:5672/shop", "max_workers": 4, "METRICS_ADDRESS": "0.0.0.0:9102"}"#,
    )
    .expect("config written");
    let out = Command::new(env!("CARGO_BIN_EXE_enoki"))
        .arg("show-config")
        .env("ENOKI_CONFIG", &file)
        .env("SHOP_PASSWORD", "hunter2")
        .env("MAX_WORKERS", "6")
        .env_remove("AMQP_URI")
        .output()
        .expect("runs enoki");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("AMQP_URI: amqp://shop:***@broker:5672/shop\n"),
        "{text}"
    );
    assert!(
        text.contains("max_workers: 6\n"),
        "the environment wins: {text}"
    );
    assert!(text.contains("METRICS_ADDRESS: 0.0.0.0:9102\n"), "{text}");

    let out = Command::new(env!("CARGO_BIN_EXE_enoki"))
        .args(["show-config", "--json"])
        .env("ENOKI_CONFIG", &file)
        .env("SHOP_PASSWORD", "hunter2")
        .env_remove("MAX_WORKERS")
        .env_remove("AMQP_URI")
        .output()
        .expect("runs enoki");
    let config: Value = serde_json::from_slice(&out.stdout).expect("show-config --json");
    assert_eq!(config["AMQP_URI"], "amqp://shop:***@broker:5672/shop");
    assert_eq!(config["max_workers"], 4);
    let _ = std::fs::remove_dir_all(dir);
}
