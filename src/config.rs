//! Service configuration: the keys Nameko reads, their defaults, and where they come from.
//!
//! A [`Config`] starts from Nameko's defaults and can be filled from a JSON file
//! ([`Config::from_file`]), from the environment ([`Config::from_env`]) or with the builder
//! setters. Known keys are typed and validated; any other key is kept as a JSON value so that
//! services can read their own settings with [`Config::get`].
//!
//! Config files are JSON rather than Nameko's YAML because serde_json is already a dependency.
//! Nameko's `${VAR}` / `${VAR:default}` environment substitution is applied to every string in
//! the file.

use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::path::Path;

const DEFAULT_AMQP_URI: &str = "amqp://guest:guest@localhost:5672/";
const DEFAULT_MAX_WORKERS: usize = 10;
/// The most workers a config file or the environment may ask for: as many as a prefetch count
/// can cover.
const MAX_WORKERS_LIMIT: usize = u16::MAX as usize;
const DEFAULT_PARENT_CALLS_TRACKED: usize = 10;
const DEFAULT_RPC_EXCHANGE: &str = "nameko-rpc";
const DEFAULT_HEARTBEAT: u16 = 60;
const STOP_TIMEOUT: &str = "STOP_TIMEOUT";
const DEFAULT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const CONFIRM_TIMEOUT: &str = "CONFIRM_TIMEOUT";
const DEFAULT_CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const DEFAULT_WEB_SERVER_ADDRESS: &str = "0.0.0.0:8000";
const DEFAULT_AMQP_PORT: u16 = 5672;

/// The environment variable naming a JSON config file for [`Config::from_env`].
const CONFIG_FILE_VAR: &str = "ENOKI_CONFIG";

/// What replaces a password wherever a URI is shown.
const MASK: &str = "***";

/// The broker address from an `AMQP_URI`, decoded the way kombu reads it.
///
/// Neither [`Display`](fmt::Display) nor [`Debug`] shows the password; read the field to
/// authenticate.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUri {
    /// Host name or IP address; an IPv6 address is stored without its brackets.
    pub host: String,
    /// TCP port; 5672 when the URI has none.
    pub port: u16,
    /// User name, percent-decoded; `guest` when the URI has none.
    pub username: String,
    /// Password, percent-decoded; `guest` when the URI has none.
    pub password: String,
    /// Virtual host, percent-decoded; `/` when the URI has no path, `/` or `//`.
    pub vhost: String,
}

impl AmqpUri {
    /// Parses an `amqp://` or `pyamqp://` URI as kombu does.
    ///
    /// User name and password are percent-decoded and default to `guest`; the host defaults to
    /// `localhost` and the port to 5672; an IPv6 host goes in brackets. The virtual host is the
    /// percent-decoded path after the first `/`: no path, `/` and `//` all mean `/`, `%2F` means
    /// `/` and `/myvhost` means `myvhost`. A `?query` is ignored.
    ///
    /// Fails with a configuration error for `amqps://` (TLS is not supported), any other scheme,
    /// or a malformed host or port. Error messages never repeat the URI, since it may hold a
    /// password.
    pub fn parse(uri: &str) -> Result<AmqpUri> {
        parse_uri(uri).map_err(|msg| Error::config(format!("invalid AMQP URI: {msg}")))
    }

    /// `host:port` for [`std::net::ToSocketAddrs`], with an IPv6 host in brackets.
    pub fn addr(&self) -> String {
        format!("{}:{}", bracketed_host(&self.host), self.port)
    }
}

impl fmt::Display for AmqpUri {
    /// Writes the URI with the password replaced by `***` and the vhost percent-encoded, e.g.
    /// `amqp://guest:***@localhost:5672/%2F`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "amqp://{}:{MASK}@{}:{}/{}",
            percent_encode(&self.username),
            shown_host(&self.host),
            self.port,
            percent_encode(&self.vhost)
        )
    }
}

impl fmt::Debug for AmqpUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpUri")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &MASK)
            .field("vhost", &self.vhost)
            .finish()
    }
}

/// The host as [`AmqpUri`]'s `Display` writes it: percent-encoded like the other parts, since
/// a decoded host may hold `%`, `?` or `#`, and an IPv6 address in brackets.
fn shown_host(host: &str) -> String {
    if host.contains(':') {
        bracketed_host(host)
    } else {
        percent_encode(host)
    }
}

fn bracketed_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The broker an `AMQP_URI` names: a RabbitMQ, or the in-process broker.
///
/// ```
/// use enoki::config::BrokerUri;
///
/// assert_eq!(BrokerUri::parse("memory://").unwrap(), BrokerUri::Memory(String::new()));
/// assert_eq!(BrokerUri::parse("memory://tests").unwrap().to_string(), "memory://tests");
/// let amqp = BrokerUri::parse("amqp://app:secret@rabbit:5672/prod").unwrap();
/// assert_eq!(amqp.to_string(), "amqp://app:***@rabbit:5672/prod");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerUri {
    /// RabbitMQ over AMQP 0-9-1 (`amqp://` or `pyamqp://`).
    Amqp(AmqpUri),
    /// The in-process broker of this name: `memory://` is the one named `""`, `memory://<name>`
    /// another one, isolated from it. Every service of the process on the same name shares it.
    Memory(String),
}

impl BrokerUri {
    /// Parses an `AMQP_URI`: `memory://` and `memory://<name>` (a name of letters, digits, `.`,
    /// `_` and `-`) name an in-process broker; anything else is read by [`AmqpUri::parse`].
    pub fn parse(uri: &str) -> Result<BrokerUri> {
        parse_broker_uri(uri).map_err(|msg| Error::config(format!("invalid AMQP URI: {msg}")))
    }

    /// True for an in-process `memory://` broker.
    pub fn is_memory(&self) -> bool {
        matches!(self, BrokerUri::Memory(_))
    }
}

impl fmt::Display for BrokerUri {
    /// The URI with any password masked.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerUri::Amqp(uri) => uri.fmt(f),
            BrokerUri::Memory(name) => write!(f, "{MEMORY_SCHEME}://{name}"),
        }
    }
}

const MEMORY_SCHEME: &str = "memory";

fn parse_broker_uri(uri: &str) -> std::result::Result<BrokerUri, String> {
    let trimmed = uri.trim();
    match trimmed.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case(MEMORY_SCHEME) => {
            let name = rest.strip_suffix('/').unwrap_or(rest);
            if name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                Ok(BrokerUri::Memory(name.to_owned()))
            } else {
                // The rest is not echoed: it could be a mistyped AMQP URI with a password.
                Err(
                    "an in-process broker URI is `memory://` or `memory://<name>`, the name made \
                     of letters, digits, `.`, `_` and `-`"
                        .to_owned(),
                )
            }
        }
        _ => parse_uri(uri).map(BrokerUri::Amqp),
    }
}

/// The parser behind [`AmqpUri::parse`]; errors are bare messages so callers can add context.
fn parse_uri(uri: &str) -> std::result::Result<AmqpUri, String> {
    const EXPECTED: &str = "it must start with `amqp://` or `pyamqp://` (or `memory://` for the \
                            in-process broker)";
    let uri = uri.trim();
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(EXPECTED.to_owned());
    };
    match scheme.to_ascii_lowercase().as_str() {
        "amqp" | "pyamqp" => {}
        MEMORY_SCHEME => {
            return Err("`memory://` names the in-process broker, not an AMQP one".to_owned());
        }
        "amqps" => {
            return Err(
                "TLS (`amqps://`) is not supported; use `amqp://`, for instance \
                 through a TLS-terminating proxy"
                    .to_owned(),
            );
        }
        // Only echo something that looks like a scheme: a malformed URI could put a password
        // before the `://`.
        _ if is_scheme_like(scheme) => {
            return Err(format!("unsupported scheme `{scheme}://`; {EXPECTED}"));
        }
        _ => return Err(EXPECTED.to_owned()),
    }

    // As in urllib, the authority ends at the first `/`, `?` or `#`; the query and fragment
    // carry nothing enoki uses.
    let rest = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));

    // The last `@` ends the user info, so an unencoded `@` in a password still parses, as in
    // urllib.
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, password)) => (user, password),
            None => (userinfo, ""),
        },
        None => ("", ""),
    };
    // kombu turns empty credentials into None and the transport then uses guest/guest.
    let username = or_default(percent_decode(user, "user name")?, "guest");
    let password = or_default(percent_decode(password, "password")?, "guest");
    let (host, port) = parse_host_port(hostport)?;
    let vhost = or_default(percent_decode(path, "virtual host")?, "/");
    Ok(AmqpUri {
        host,
        port,
        username,
        password,
        vhost,
    })
}

fn is_scheme_like(scheme: &str) -> bool {
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn or_default(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_owned()
    } else {
        value
    }
}

fn parse_host_port(hostport: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (inner, tail) = bracketed
            .split_once(']')
            .ok_or("the IPv6 host has no closing `]`")?;
        inner
            .parse::<Ipv6Addr>()
            .map_err(|_| "the host in brackets is not an IPv6 address")?;
        let port = match tail {
            "" => None,
            tail => Some(
                tail.strip_prefix(':')
                    .ok_or("unexpected characters after the IPv6 host")?,
            ),
        };
        (inner.to_owned(), port)
    } else {
        let (host, port) = match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        };
        if port.is_some_and(|port| port.contains(':')) {
            return Err("an IPv6 host must be in brackets, e.g. `amqp://[::1]:5672/`".to_owned());
        }
        // kombu unquotes the host name too.
        let host = percent_decode(host, "host")?;
        if host.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, ':' | '/' | '@' | '[' | ']')
        }) {
            return Err("the host name is not valid".to_owned());
        }
        (or_default(host, "localhost"), port)
    };
    let port = match port {
        None | Some("") => DEFAULT_AMQP_PORT,
        // The port text is not echoed: in a malformed URI it may be part of a password.
        Some(port) => port
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| port.parse::<u16>().ok())
            .flatten()
            .filter(|&port| port != 0)
            .ok_or("the port must be a number from 1 to 65535")?,
    };
    Ok((host, port))
}

/// Percent-decodes like Python's `unquote`: a `%` not followed by two hex digits stays as it
/// is. Bytes that are not UTF-8 are an error rather than replaced, since a silently altered
/// password would only fail later, at login, with a less helpful message.
fn percent_decode(text: &str, what: &str) -> std::result::Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(&[hi, lo])) => hex_value(hi).zip(hex_value(lo)),
            _ => None,
        };
        match escaped {
            Some((hi, lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("the {what} is not UTF-8 once percent-decoded"))
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so `/` in a vhost becomes
/// `%2F` as kombu expects.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Replaces the password in a URI-like string with `***`, leaving the rest as written.
///
/// Works on text that does not parse, so an invalid `AMQP_URI` is still safe to show. The
/// last `@` anywhere after the scheme is taken as the end of the user info: a password with an
/// unencoded `/` or `@` is then still hidden, at the cost of sometimes hiding more than the
/// password.
fn mask_uri(uri: &str) -> String {
    let start = uri.find("://").map_or(0, |i| i + 3);
    let rest = &uri[start..];
    let Some(at) = rest.rfind('@') else {
        return uri.to_owned();
    };
    let Some(colon) = rest[..at].find(':') else {
        return uri.to_owned();
    };
    format!("{}{MASK}{}", &uri[..start + colon + 1], &rest[at..])
}

/// Masks passwords in every URI-like string of a JSON value.
fn mask_value(value: &Value) -> Value {
    match value {
        Value::String(s) if s.contains("://") => Value::String(mask_uri(s)),
        Value::Array(items) => Value::Array(items.iter().map(mask_value).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), mask_value(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The keys enoki itself reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    AmqpUri,
    MaxWorkers,
    ParentCallsTracked,
    RpcExchange,
    Heartbeat,
    PrefetchCount,
    WebServerAddress,
}

impl Key {
    const ALL: [Key; 7] = [
        Key::AmqpUri,
        Key::MaxWorkers,
        Key::ParentCallsTracked,
        Key::RpcExchange,
        Key::Heartbeat,
        Key::PrefetchCount,
        Key::WebServerAddress,
    ];

    /// The key as Nameko spells it, which is how [`Config::masked`] shows it.
    fn name(self) -> &'static str {
        match self {
            Key::AmqpUri => "AMQP_URI",
            Key::MaxWorkers => "max_workers",
            Key::ParentCallsTracked => "parent_calls_tracked",
            Key::RpcExchange => "rpc_exchange",
            Key::Heartbeat => "HEARTBEAT",
            Key::PrefetchCount => "PREFETCH_COUNT",
            Key::WebServerAddress => "WEB_SERVER_ADDRESS",
        }
    }

    /// The environment variable that overrides the key.
    fn env_var(self) -> &'static str {
        match self {
            Key::AmqpUri => "AMQP_URI",
            Key::MaxWorkers => "MAX_WORKERS",
            Key::ParentCallsTracked => "PARENT_CALLS_TRACKED",
            Key::RpcExchange => "RPC_EXCHANGE",
            Key::Heartbeat => "HEARTBEAT",
            Key::PrefetchCount => "PREFETCH_COUNT",
            Key::WebServerAddress => "WEB_SERVER_ADDRESS",
        }
    }

    /// Known keys match case-insensitively because Nameko itself mixes `AMQP_URI` and
    /// `max_workers`, and users rarely remember which is which.
    fn find(key: &str) -> Option<Key> {
        Key::ALL
            .into_iter()
            .find(|known| known.name().eq_ignore_ascii_case(key))
    }
}

/// The effective configuration of a service or client.
///
/// Known keys (with their Nameko names and defaults):
///
/// | key | default |
/// |---|---|
/// | `AMQP_URI` | `amqp://guest:guest@localhost:5672/` (`memory://` is the in-process broker) |
/// | `max_workers` | 10 (0 also means 10; at most 65535 from a file or the environment) |
/// | `parent_calls_tracked` | 10 |
/// | `rpc_exchange` | `nameko-rpc` |
/// | `HEARTBEAT` | 60 seconds |
/// | `PREFETCH_COUNT` | unset: the prefetch is `max_workers` |
/// | `WEB_SERVER_ADDRESS` | `0.0.0.0:8000` |
/// | `HTTP_MAX_CONNECTIONS` and the other `HTTP_*` limits | see [`crate::http`] |
///
/// Any other key is kept as a JSON value and read with [`Config::get`]. `Debug` hides the AMQP
/// password.
#[derive(Clone)]
pub struct Config {
    amqp_uri: String,
    max_workers: usize,
    parent_calls_tracked: usize,
    rpc_exchange: String,
    heartbeat: u16,
    prefetch_count: Option<u16>,
    web_server_address: String,
    /// Every key, the known ones under their Nameko names too, so that `get` can hand out
    /// references; the `store_*` methods keep it in step with the typed fields.
    values: BTreeMap<String, Value>,
}

impl Default for Config {
    fn default() -> Config {
        Config::new()
    }
}

impl fmt::Debug for Config {
    /// Writes `Config` and the JSON of [`Config::masked`]; `{:#?}` pretty-prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked = self.masked();
        if f.alternate() {
            write!(f, "Config {masked:#}")
        } else {
            write!(f, "Config {masked}")
        }
    }
}

impl Config {
    /// Nameko's defaults for every known key, and no other key.
    pub fn new() -> Config {
        let mut config = Config {
            amqp_uri: String::new(),
            max_workers: DEFAULT_MAX_WORKERS,
            parent_calls_tracked: DEFAULT_PARENT_CALLS_TRACKED,
            rpc_exchange: String::new(),
            heartbeat: DEFAULT_HEARTBEAT,
            prefetch_count: None,
            web_server_address: String::new(),
            values: BTreeMap::new(),
        };
        for key in Key::ALL {
            config.reset(key);
        }
        config
    }

    /// Defaults, then the JSON file named by `ENOKI_CONFIG` if that is set, then the
    /// environment variables `AMQP_URI`, `MAX_WORKERS`, `PARENT_CALLS_TRACKED`, `RPC_EXCHANGE`,
    /// `HEARTBEAT`, `PREFETCH_COUNT` and `WEB_SERVER_ADDRESS`, and the HTTP limits
    /// (`HTTP_MAX_CONNECTIONS` and the other `HTTP_*` keys of [`crate::http`]).
    ///
    /// An empty variable restores the key's default. Fails with a configuration error naming
    /// the file or variable at fault.
    pub fn from_env() -> Result<Config> {
        Config::from_env_with(process_env)
    }

    /// [`Config::from_env`] with `lookup` standing in for the process environment.
    pub(crate) fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let mut config = match lookup(CONFIG_FILE_VAR) {
            Some(path) if !path.trim().is_empty() => {
                log::debug!("loading configuration from {path} (named by {CONFIG_FILE_VAR})");
                Config::from_file_with(Path::new(&path), &lookup)?
            }
            _ => Config::new(),
        };
        for key in Key::ALL {
            if let Some(value) = lookup(key.env_var()) {
                let context = format!("environment variable `{}`", key.env_var());
                config.apply(key, Value::String(value), &context)?;
            }
        }
        let others = [STOP_TIMEOUT, CONFIRM_TIMEOUT, "METRICS", "METRICS_ADDRESS"];
        for key in crate::http::LIMIT_KEYS.iter().chain(others.iter()) {
            if let Some(value) = lookup(key).filter(|v| !v.trim().is_empty()) {
                config
                    .values
                    .insert((*key).to_owned(), Value::String(value));
            }
        }
        config.http_limits()?;
        Ok(config)
    }

    /// Reads a JSON config file: see [`Config::from_json_str`].
    ///
    /// Fails with a configuration error naming the file if it cannot be read or is invalid.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config> {
        Config::from_file_with(path.as_ref(), process_env)
    }

    fn from_file_with(path: &Path, lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let source = format!("config file `{}`", path.display());
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("{source}: cannot read it: {e}")))?;
        Config::from_json_source(&text, &source, lookup)
    }

    /// Parses a config from JSON text: a flat object of key → value, applied over the defaults.
    ///
    /// Known keys match case-insensitively (`AMQP_URI` or `amqp_uri`); other keys are kept as
    /// written. Every string in the document first goes through Nameko's environment
    /// substitution: `${VAR}` becomes the variable's value or an empty string, `${VAR:default}`
    /// the default when the variable is unset, and a string that is exactly one substitution is
    /// re-read as JSON when it can be, so `"${N:10}"` gives the number 10. A `null` or an empty
    /// string for a known key leaves its default, as an unset `${VAR}` does in Nameko's YAML.
    pub fn from_json_str(text: &str) -> Result<Config> {
        Config::from_json_str_with(text, process_env)
    }

    /// [`Config::from_json_str`] with `lookup` standing in for the process environment.
    pub(crate) fn from_json_str_with(
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        Config::from_json_source(text, "config", lookup)
    }

    fn from_json_source(
        text: &str,
        source: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        let document: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("{source}: invalid JSON: {e}")))?;
        let Value::Object(entries) = document else {
            return Err(Error::config(format!(
                "{source}: must be a JSON object of key → value"
            )));
        };
        let mut config = Config::new();
        // Without this, `AMQP_URI` and `amqp_uri` in one file would silently race on key order.
        let mut seen: BTreeMap<&'static str, String> = BTreeMap::new();
        for (key, value) in entries {
            let context = format!("{source}: key `{key}`");
            let value = substitute_value(value, &lookup)
                .map_err(|msg| Error::config(format!("{context}: {msg}")))?;
            match Key::find(&key) {
                Some(known) => {
                    if let Some(previous) = seen.insert(known.name(), key.clone()) {
                        return Err(Error::config(format!(
                            "{source}: keys `{previous}` and `{key}` both set `{}`",
                            known.name()
                        )));
                    }
                    config.apply(known, value, &context)?;
                }
                None => {
                    config.values.insert(key, value);
                }
            }
        }
        Ok(config)
    }

    /// Sets the broker URI: `amqp://...` for RabbitMQ, `memory://` (or `memory://<name>`) for
    /// the in-process broker. Default: `amqp://guest:guest@localhost:5672/`.
    ///
    /// Not checked here; [`Config::broker`] reports a malformed URI.
    pub fn amqp_uri(mut self, uri: impl Into<String>) -> Config {
        self.store_amqp_uri(uri.into());
        self
    }

    /// Sets how many handlers run at once. Default: 10; 0 also means 10, as in Nameko.
    pub fn max_workers(mut self, workers: usize) -> Config {
        self.store_max_workers(workers);
        self
    }

    /// Sets how many ancestor call ids are kept in the call-id stack. Default: 10.
    pub fn parent_calls_tracked(mut self, calls: usize) -> Config {
        self.store_parent_calls_tracked(calls);
        self
    }

    /// Sets the RPC exchange name. Default: `nameko-rpc`.
    pub fn rpc_exchange(mut self, exchange: impl Into<String>) -> Config {
        self.store_rpc_exchange(exchange.into());
        self
    }

    /// Sets the AMQP heartbeat in seconds; 0 disables it. Default: 60.
    pub fn heartbeat(mut self, seconds: u16) -> Config {
        self.store_heartbeat(seconds);
        self
    }

    /// Sets the consumer prefetch count, overriding `max_workers` as Nameko 3 does. Default:
    /// unset, so the prefetch follows `max_workers` as in Nameko 2. The value goes to the
    /// broker as it is, where 0 means no limit.
    pub fn prefetch_count(mut self, count: u16) -> Config {
        self.store_prefetch_count(Some(count));
        self
    }

    /// Sets the HTTP bind address, `[host:]port`. Default: `0.0.0.0:8000`.
    pub fn web_server_address(mut self, address: impl Into<String>) -> Config {
        self.store_web_server_address(address.into());
        self
    }

    /// Sets how long a graceful stop waits for running handlers (`STOP_TIMEOUT`, seconds).
    /// Default: 30 s. Work still running then is abandoned: its messages are not acked, so the
    /// broker redelivers them to another instance.
    pub fn stop_timeout(self, timeout: std::time::Duration) -> Config {
        let mut config = self;
        config
            .values
            .insert(STOP_TIMEOUT.to_owned(), Value::from(timeout.as_secs_f64()));
        config
    }

    /// How long a graceful stop waits for running handlers (`STOP_TIMEOUT`, in seconds, a
    /// number or a string of one; default 30). A value that is not a non-negative number
    /// counts as the default.
    pub fn stop_deadline(&self) -> std::time::Duration {
        self.seconds(STOP_TIMEOUT).unwrap_or(DEFAULT_STOP_TIMEOUT)
    }

    /// Sets how long a publish waits for the broker's confirm (`CONFIRM_TIMEOUT`, seconds)
    /// before it fails with a broker error. Default: 30 s. While the broker has blocked the
    /// connection (a resource alarm), publishing pauses instead and this does not apply.
    pub fn confirm_timeout(self, timeout: std::time::Duration) -> Config {
        let mut config = self;
        config.values.insert(
            CONFIRM_TIMEOUT.to_owned(),
            Value::from(timeout.as_secs_f64()),
        );
        config
    }

    /// How long a publish waits for its confirm (`CONFIRM_TIMEOUT`, seconds; default 30).
    pub fn confirm_deadline(&self) -> std::time::Duration {
        self.seconds(CONFIRM_TIMEOUT)
            .unwrap_or(DEFAULT_CONFIRM_TIMEOUT)
    }

    /// A duration key in seconds (a non-negative number, or a string of one).
    fn seconds(&self, key: &str) -> Option<std::time::Duration> {
        let seconds = match self.values.get(key) {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        seconds
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
            .map(std::time::Duration::from_secs_f64)
    }

    /// Sets any key. Default: see the table on [`Config`] for known keys; other keys are unset
    /// until set.
    ///
    /// Known keys match case-insensitively and are checked: `max_workers`,
    /// `parent_calls_tracked`, `HEARTBEAT` and `PREFETCH_COUNT` take a non-negative integer or a
    /// string of digits; `AMQP_URI` must parse; `rpc_exchange` and `WEB_SERVER_ADDRESS` take a
    /// string (a number is turned into one). `null` or an empty string restores a known key's
    /// default. Fails with a configuration error naming the key.
    pub fn set(mut self, key: &str, value: Value) -> Result<Config> {
        match Key::find(key) {
            Some(known) => self.apply(known, value, &format!("key `{key}`"))?,
            None => {
                self.values.insert(key.to_owned(), value);
            }
        }
        Ok(self)
    }

    /// The broker URI as given, password included: use [`Config::amqp`] to read it, or
    /// [`Config::masked`] to show it.
    pub fn uri(&self) -> &str {
        &self.amqp_uri
    }

    /// The number of handlers that run at once (`max_workers`), never 0.
    pub fn workers(&self) -> usize {
        self.max_workers
    }

    /// How many ancestor call ids the call-id stack keeps (`parent_calls_tracked`).
    pub fn calls_tracked(&self) -> usize {
        self.parent_calls_tracked
    }

    /// The RPC exchange name (`rpc_exchange`).
    pub fn exchange(&self) -> &str {
        &self.rpc_exchange
    }

    /// The AMQP heartbeat in seconds (`HEARTBEAT`); 0 means none.
    pub fn heartbeat_secs(&self) -> u16 {
        self.heartbeat
    }

    /// The consumer prefetch count: `PREFETCH_COUNT` when set, else `max_workers` (capped at
    /// 65535, the largest prefetch AMQP can express).
    pub fn prefetch(&self) -> u16 {
        self.prefetch_count
            .unwrap_or_else(|| u16::try_from(self.max_workers).unwrap_or(u16::MAX))
    }

    /// The HTTP bind address (`WEB_SERVER_ADDRESS`).
    pub fn web_address(&self) -> &str {
        &self.web_server_address
    }

    /// The HTTP server's limits, from the `HTTP_*` keys (see [`crate::http`] for each key and
    /// its default); fails with a configuration error if one is not a non-negative number.
    pub fn http_limits(&self) -> Result<crate::http::Limits> {
        crate::http::limits(self)
    }

    /// The value of any key; known keys match case-insensitively and are given as JSON (e.g.
    /// `max_workers` as a number). `PREFETCH_COUNT` is `None` while unset.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match Key::find(key) {
            Some(known) => self.values.get(known.name()),
            None => self.values.get(key),
        }
    }

    /// The parsed AMQP broker URI; fails with a configuration error if `AMQP_URI` is malformed
    /// or names the in-process broker (see [`Config::broker`]).
    pub fn amqp(&self) -> Result<AmqpUri> {
        AmqpUri::parse(&self.amqp_uri)
    }

    /// The broker `AMQP_URI` names: RabbitMQ, or the in-process `memory://` broker.
    pub fn broker(&self) -> Result<BrokerUri> {
        BrokerUri::parse(&self.amqp_uri)
    }

    /// Every key as a JSON object, with the AMQP password (and the password of any other
    /// URI-like string) replaced by `***`. Known keys appear under their Nameko names;
    /// `PREFETCH_COUNT` only when set.
    pub fn masked(&self) -> Value {
        let entries = self
            .values
            .iter()
            .map(|(key, value)| {
                let shown = match value {
                    Value::String(uri) if key == Key::AmqpUri.name() => {
                        Value::String(mask_uri(uri))
                    }
                    other => mask_value(other),
                };
                (key.clone(), shown)
            })
            .collect::<Map<String, Value>>();
        Value::Object(entries)
    }

    /// Sets a known key from a JSON value, checking its type; `context` says where the value
    /// came from in errors.
    fn apply(&mut self, key: Key, value: Value, context: &str) -> Result<()> {
        let means_default = match &value {
            Value::Null => true,
            Value::String(s) => s.trim().is_empty(),
            _ => false,
        };
        if means_default {
            self.reset(key);
            return Ok(());
        }
        match key {
            Key::AmqpUri => {
                let uri = text_value(&value, context)?;
                parse_broker_uri(&uri)
                    .map_err(|msg| Error::config(format!("{context}: invalid AMQP URI: {msg}")))?;
                self.store_amqp_uri(uri);
            }
            Key::MaxWorkers => {
                let workers: usize = integer(&value, context)?;
                // The container allocates and spawns per worker: a mistyped count would abort
                // the process on allocation rather than fail here with a message.
                if workers > MAX_WORKERS_LIMIT {
                    return Err(Error::config(format!(
                        "{context}: {workers} workers is more than the {MAX_WORKERS_LIMIT} enoki \
                         allows from configuration"
                    )));
                }
                self.store_max_workers(workers)
            }
            Key::ParentCallsTracked => self.store_parent_calls_tracked(integer(&value, context)?),
            Key::RpcExchange => self.store_rpc_exchange(text_value(&value, context)?),
            Key::Heartbeat => self.store_heartbeat(integer(&value, context)?),
            Key::PrefetchCount => self.store_prefetch_count(Some(integer(&value, context)?)),
            Key::WebServerAddress => self.store_web_server_address(text_value(&value, context)?),
        }
        Ok(())
    }

    fn reset(&mut self, key: Key) {
        match key {
            Key::AmqpUri => self.store_amqp_uri(DEFAULT_AMQP_URI.to_owned()),
            Key::MaxWorkers => self.store_max_workers(DEFAULT_MAX_WORKERS),
            Key::ParentCallsTracked => {
                self.store_parent_calls_tracked(DEFAULT_PARENT_CALLS_TRACKED)
            }
            Key::RpcExchange => self.store_rpc_exchange(DEFAULT_RPC_EXCHANGE.to_owned()),
            Key::Heartbeat => self.store_heartbeat(DEFAULT_HEARTBEAT),
            Key::PrefetchCount => self.store_prefetch_count(None),
            Key::WebServerAddress => {
                self.store_web_server_address(DEFAULT_WEB_SERVER_ADDRESS.to_owned())
            }
        }
    }

    fn store_amqp_uri(&mut self, uri: String) {
        self.values
            .insert(Key::AmqpUri.name().to_owned(), Value::from(uri.as_str()));
        self.amqp_uri = uri;
    }

    fn store_max_workers(&mut self, workers: usize) {
        // Nameko reads `config.get(MAX_WORKERS) or 10`, so 0 falls back to the default.
        let workers = if workers == 0 {
            DEFAULT_MAX_WORKERS
        } else {
            workers
        };
        self.values
            .insert(Key::MaxWorkers.name().to_owned(), Value::from(workers));
        self.max_workers = workers;
    }

    fn store_parent_calls_tracked(&mut self, calls: usize) {
        self.values.insert(
            Key::ParentCallsTracked.name().to_owned(),
            Value::from(calls),
        );
        self.parent_calls_tracked = calls;
    }

    fn store_rpc_exchange(&mut self, exchange: String) {
        self.values.insert(
            Key::RpcExchange.name().to_owned(),
            Value::from(exchange.as_str()),
        );
        self.rpc_exchange = exchange;
    }

    fn store_heartbeat(&mut self, seconds: u16) {
        self.values
            .insert(Key::Heartbeat.name().to_owned(), Value::from(seconds));
        self.heartbeat = seconds;
    }

    fn store_prefetch_count(&mut self, count: Option<u16>) {
        let name = Key::PrefetchCount.name().to_owned();
        match count {
            Some(count) => self.values.insert(name, Value::from(count)),
            None => self.values.remove(&name),
        };
        self.prefetch_count = count;
    }

    fn store_web_server_address(&mut self, address: String) {
        self.values.insert(
            Key::WebServerAddress.name().to_owned(),
            Value::from(address.as_str()),
        );
        self.web_server_address = address;
    }
}

/// The process environment as a lookup; a value that is not UTF-8 is converted lossily so it
/// fails validation visibly instead of being silently ignored.
fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}

/// A non-negative integer, from a JSON number or a string of digits (as environment variables
/// and substitutions produce).
fn integer<T: TryFrom<u64>>(value: &Value, context: &str) -> Result<T> {
    let number = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let digits = s.trim();
            if digits.bytes().all(|b| b.is_ascii_digit()) {
                digits.parse::<u64>().ok()
            } else {
                None
            }
        }
        _ => None,
    };
    let number = number.ok_or_else(|| {
        Error::config(format!(
            "{context}: must be a non-negative integer, got {}",
            describe(value)
        ))
    })?;
    T::try_from(number)
        .map_err(|_| Error::config(format!("{context}: {number} is too large for this key")))
}

/// A string setting; a number is accepted as its text because a substitution such as
/// `"${EXCHANGE}"` re-reads digits as a number.
fn text_value(value: &Value, context: &str) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.trim().to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(Error::config(format!(
            "{context}: must be a string, got {}",
            describe(other)
        ))),
    }
}

/// A value for an error message; lists and objects are named, not printed, to keep messages
/// short and free of whatever they hold.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// Applies [`substitute`] to every string inside a JSON value (not to object keys).
fn substitute_value(
    value: Value,
    lookup: &impl Fn(&str) -> Option<String>,
) -> std::result::Result<Value, String> {
    Ok(match value {
        Value::String(s) => substitute(&s, lookup)?,
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| substitute_value(item, lookup))
                .collect::<std::result::Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, item)| Ok((key, substitute_value(item, lookup)?)))
                .collect::<std::result::Result<_, String>>()?,
        ),
        other => other,
    })
}

/// Nameko's environment substitution on one string, with `lookup` as the environment.
///
/// `${VAR}` becomes the variable's value, or an empty string when unset; `${VAR:default}`
/// becomes the default when unset. A string that is exactly one substitution is re-read as JSON
/// if the result parses, so `"${N:10}"` is the number 10; anything else stays a string. The
/// substituted text is not substituted again, so a variable's value cannot inject further
/// lookups. `$${X}` is not an escape: the first `$` stays and `${X}` is substituted, as in
/// Nameko.
///
/// Errors are bare messages for the caller to place: an unterminated `${`, an empty or blank
/// variable name, and a nested `${A:${B}}`, which Nameko only supports with the optional
/// `regex` module.
pub(crate) fn substitute(
    input: &str,
    lookup: &impl Fn(&str) -> Option<String>,
) -> std::result::Result<Value, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    let mut substitutions = 0;
    let mut whole = false;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or("unterminated `${`: the closing `}` is missing")?;
        let body = &after[..end];
        let (name, default) = match body.split_once(':') {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if body.contains("${") {
            return Err(format!(
                "nested substitution in `${{{name}:...}}` is not supported; \
                 give a plain default instead"
            ));
        }
        if name.is_empty()
            || name
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '$')
        {
            return Err(format!("`${{{body}}}` does not name a variable"));
        }
        let value = lookup(name).or_else(|| default.map(str::to_owned));
        out.push_str(value.as_deref().unwrap_or(""));
        substitutions += 1;
        let tail = &after[end + 1..];
        whole = substitutions == 1 && start == 0 && tail.is_empty();
        rest = tail;
    }
    out.push_str(rest);
    if whole && let Ok(parsed) = serde_json::from_str::<Value>(&out) {
        return Ok(parsed);
    }
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use serde_json::json;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn config_message(err: Error) -> String {
        match err.into_kind() {
            ErrorKind::Config(msg) => msg,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    fn uri_err(uri: &str) -> String {
        config_message(AmqpUri::parse(uri).unwrap_err())
    }

    fn vhost(uri: &str) -> String {
        AmqpUri::parse(uri).unwrap().vhost
    }

    fn sub(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Value {
        substitute(input, &lookup).unwrap()
    }

    fn json_err(text: &str) -> String {
        config_message(Config::from_json_str_with(text, no_env).unwrap_err())
    }

    // --- AmqpUri ---

    #[test]
    fn vhost_rules() {
        assert_eq!(vhost("amqp://guest:guest@localhost"), "/");
        assert_eq!(vhost("amqp://guest:guest@localhost:5672"), "/");
        assert_eq!(vhost("amqp://guest:guest@localhost/"), "/");
        assert_eq!(vhost("amqp://guest:guest@localhost//"), "/");
        assert_eq!(vhost("amqp://guest:guest@localhost/%2F"), "/");
        assert_eq!(vhost("amqp://guest:guest@localhost/%2f"), "/");
        assert_eq!(vhost("amqp://guest:guest@localhost/myvhost"), "myvhost");
        assert_eq!(vhost("amqp://localhost:5672/my%20vhost"), "my vhost");
        assert_eq!(vhost("amqp://localhost/a/b"), "a/b");
        assert_eq!(vhost("amqp://localhost/a%2Fb"), "a/b");
        assert_eq!(vhost("amqp://localhost///"), "//");
        assert_eq!(vhost("amqp://localhost/myvhost?heartbeat=10"), "myvhost");
        assert_eq!(vhost("amqp://localhost/?heartbeat=10"), "/");
        assert_eq!(vhost("amqp://localhost?heartbeat=10"), "/");
        assert_eq!(vhost("amqp://localhost/v#frag"), "v");
    }

    #[test]
    fn full_uri_parses() {
        let uri = AmqpUri::parse("amqp://user:pass@rabbit.example:5673/prod").unwrap();
        assert_eq!(
            uri,
            AmqpUri {
                host: "rabbit.example".into(),
                port: 5673,
                username: "user".into(),
                password: "pass".into(),
                vhost: "prod".into(),
            }
        );
        assert_eq!(uri.addr(), "rabbit.example:5673");
    }

    #[test]
    fn defaults_when_parts_are_missing() {
        let uri = AmqpUri::parse("amqp://").unwrap();
        assert_eq!(uri.host, "localhost");
        assert_eq!(uri.port, 5672);
        assert_eq!(uri.username, "guest");
        assert_eq!(uri.password, "guest");
        assert_eq!(uri.vhost, "/");

        let uri = AmqpUri::parse("amqp://bob@host").unwrap();
        assert_eq!(
            (uri.username.as_str(), uri.password.as_str()),
            ("bob", "guest")
        );
        let uri = AmqpUri::parse("amqp://:pw@host:").unwrap();
        assert_eq!(
            (uri.username.as_str(), uri.password.as_str()),
            ("guest", "pw")
        );
        assert_eq!(uri.port, 5672);
        assert_eq!(AmqpUri::parse("amqp://@/").unwrap().host, "localhost");
    }

    #[test]
    fn schemes() {
        assert_eq!(AmqpUri::parse("pyamqp://h").unwrap().host, "h");
        assert_eq!(AmqpUri::parse("AMQP://h").unwrap().host, "h");
        assert_eq!(AmqpUri::parse("  amqp://h/v \n").unwrap().vhost, "v");

        let msg = uri_err("amqps://guest:secret@localhost/");
        assert!(msg.contains("TLS"), "{msg}");
        assert!(msg.contains("not supported"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");

        let msg = uri_err("http://guest:secret@localhost/");
        assert!(msg.contains("unsupported scheme `http://`"), "{msg}");
        assert!(!msg.contains("secret"), "{msg}");

        let msg = uri_err("localhost:5672");
        assert!(msg.contains("must start with `amqp://`"), "{msg}");
        // Something that is not a scheme is not echoed.
        let msg = uri_err("user:secret@host://x");
        assert!(!msg.contains("secret"), "{msg}");
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let uri = AmqpUri::parse("amqp://us%40er:p%3Ass%2Fw%25rd@host/").unwrap();
        assert_eq!(uri.username, "us@er");
        assert_eq!(uri.password, "p:ss/w%rd");
        // As urllib: the last `@` ends the user info, the first `:` splits it.
        let uri = AmqpUri::parse("amqp://u:p@ss:w@host/").unwrap();
        assert_eq!(uri.username, "u");
        assert_eq!(uri.password, "p@ss:w");
        // A `%` without two hex digits stays, as Python's unquote leaves it.
        let uri = AmqpUri::parse("amqp://u:100%@host/").unwrap();
        assert_eq!(uri.password, "100%");
        let uri = AmqpUri::parse("amqp://u:%C3%A9@host/").unwrap();
        assert_eq!(uri.password, "é");
        let msg = uri_err("amqp://u:%FF@host/");
        assert!(msg.contains("password is not UTF-8"), "{msg}");
    }

    #[test]
    fn ipv6_hosts() {
        let uri = AmqpUri::parse("amqp://u:p@[::1]:5673/v").unwrap();
        assert_eq!(uri.host, "::1");
        assert_eq!(uri.port, 5673);
        assert_eq!(uri.addr(), "[::1]:5673");
        assert_eq!(uri.to_string(), "amqp://u:***@[::1]:5673/v");

        let uri = AmqpUri::parse("amqp://[fe80::1]").unwrap();
        assert_eq!(uri.addr(), "[fe80::1]:5672");

        assert!(uri_err("amqp://::1/").contains("in brackets"));
        assert!(uri_err("amqp://[::1/").contains("closing `]`"));
        assert!(uri_err("amqp://[nothost]/").contains("not an IPv6 address"));
        assert!(uri_err("amqp://[::1]x/").contains("after the IPv6 host"));
    }

    #[test]
    fn bad_ports() {
        for uri in [
            "amqp://h:abc/",
            "amqp://h:70000/",
            "amqp://h:0/",
            "amqp://h:+5/",
            "amqp://h:-1/",
            "amqp://[::1]:x/",
        ] {
            let msg = uri_err(uri);
            assert!(
                msg.contains("port must be a number from 1 to 65535"),
                "{uri}: {msg}"
            );
        }
        // A missing `@` turns the password into a "port", which must not be echoed.
        let msg = uri_err("amqp://user:secret/");
        assert!(!msg.contains("secret"), "{msg}");
        assert_eq!(AmqpUri::parse("amqp://h:65535").unwrap().port, 65535);
    }

    #[test]
    fn bad_hosts() {
        assert!(uri_err("amqp://a b/").contains("host name is not valid"));
        assert_eq!(AmqpUri::parse("amqp://my%2Dhost/").unwrap().host, "my-host");
    }

    #[test]
    fn display_and_debug_mask_the_password() {
        let uri = AmqpUri::parse("amqp://guest:guest@localhost:5672/").unwrap();
        assert_eq!(uri.to_string(), "amqp://guest:***@localhost:5672/%2F");

        let uri = AmqpUri::parse("pyamqp://us%40er:top%20secret@host/my%2Fvhost").unwrap();
        assert_eq!(uri.to_string(), "amqp://us%40er:***@host:5672/my%2Fvhost");
        let debug = format!("{uri:?}");
        assert_eq!(
            debug,
            r#"AmqpUri { host: "host", port: 5672, username: "us@er", password: "***", vhost: "my/vhost" }"#
        );
        assert!(!format!("{uri:#?}").contains("secret"));
        // The text form parses back to the same place.
        let again = AmqpUri::parse(&uri.to_string()).unwrap();
        assert_eq!((again.username, again.vhost), (uri.username, uri.vhost));
    }

    #[test]
    fn display_encodes_the_host_so_it_parses_back() {
        // Found by the amqp_uri fuzz target: a percent-decoded host holding `?` was written
        // raw, and the text form then parsed as host `localhost` with a query.
        for text in ["amqp://%3Fvlq=1", "amqp://a%2541/", "amqp://h%23x/"] {
            let uri = AmqpUri::parse(text).unwrap();
            let again = AmqpUri::parse(&uri.to_string()).unwrap();
            assert_eq!(again.host, uri.host, "{text} shown as {uri}");
        }
        let uri = AmqpUri::parse("amqp://%3Fvlq=1").unwrap();
        assert_eq!(uri.to_string(), "amqp://guest:***@%3Fvlq%3D1:5672/%2F");
    }

    #[test]
    fn mask_uri_cases() {
        assert_eq!(
            mask_uri("amqp://guest:guest@localhost:5672/"),
            "amqp://guest:***@localhost:5672/"
        );
        assert_eq!(mask_uri("pyamqp://u:p@h"), "pyamqp://u:***@h");
        assert_eq!(mask_uri("amqp://h/v"), "amqp://h/v");
        assert_eq!(mask_uri("amqp://bob@h/v"), "amqp://bob@h/v");
        assert_eq!(mask_uri("u:secret@h"), "u:***@h");
        // An unencoded `/` in the password is still hidden.
        assert_eq!(mask_uri("amqp://u:se/cret@h/v"), "amqp://u:***@h/v");
        assert_eq!(mask_uri("not a uri"), "not a uri");
    }

    // --- Config ---

    #[test]
    fn defaults() {
        let config = Config::new();
        assert_eq!(config.uri(), "amqp://guest:guest@localhost:5672/");
        assert_eq!(config.workers(), 10);
        assert_eq!(config.calls_tracked(), 10);
        assert_eq!(config.exchange(), "nameko-rpc");
        assert_eq!(config.heartbeat_secs(), 60);
        assert_eq!(config.prefetch(), 10);
        assert_eq!(config.web_address(), "0.0.0.0:8000");
        assert_eq!(config.get("PREFETCH_COUNT"), None);
        assert_eq!(config.get("max_workers"), Some(&json!(10)));
        assert_eq!(config.get("MAX_WORKERS"), Some(&json!(10)));
        assert_eq!(config.get("amqp_uri"), Some(&json!(DEFAULT_AMQP_URI)));
        assert_eq!(config.get("SOMETHING_ELSE"), None);

        let amqp = config.amqp().unwrap();
        assert_eq!(amqp.addr(), "localhost:5672");
        assert_eq!(amqp.vhost, "/");

        assert_eq!(
            Config::default().masked(),
            json!({
                "AMQP_URI": "amqp://guest:***@localhost:5672/",
                "HEARTBEAT": 60,
                "WEB_SERVER_ADDRESS": "0.0.0.0:8000",
                "max_workers": 10,
                "parent_calls_tracked": 10,
                "rpc_exchange": "nameko-rpc",
            })
        );
    }

    #[test]
    fn builder_setters() {
        let config = Config::new()
            .amqp_uri("amqp://u:p@rabbit/v")
            .max_workers(4)
            .parent_calls_tracked(3)
            .rpc_exchange("my-rpc")
            .heartbeat(0)
            .web_server_address("127.0.0.1:9000");
        assert_eq!(config.uri(), "amqp://u:p@rabbit/v");
        assert_eq!(config.workers(), 4);
        assert_eq!(config.prefetch(), 4);
        assert_eq!(config.calls_tracked(), 3);
        assert_eq!(config.exchange(), "my-rpc");
        assert_eq!(config.heartbeat_secs(), 0);
        assert_eq!(config.web_address(), "127.0.0.1:9000");
        assert_eq!(config.get("rpc_exchange"), Some(&json!("my-rpc")));
        assert_eq!(config.get("HEARTBEAT"), Some(&json!(0)));
        assert_eq!(config.amqp().unwrap().vhost, "v");
    }

    #[test]
    fn absurd_worker_counts_from_files_are_config_errors() {
        // Found reviewing what the config fuzz target's documents reach: a huge `max_workers`
        // parsed, and the container then aborted allocating per-worker state.
        let err =
            Config::from_json_str_with(r#"{"max_workers": 1000000000000000}"#, no_env).unwrap_err();
        assert!(
            config_message(err).contains("more than the 65535 enoki allows"),
            "message names the limit"
        );
        let config = Config::from_json_str_with(r#"{"max_workers": 65535}"#, no_env).unwrap();
        assert_eq!(config.workers(), 65535);
        let err = Config::from_env_with(env(&[("MAX_WORKERS", "70000")])).unwrap_err();
        assert!(config_message(err).contains("MAX_WORKERS"));
    }

    #[test]
    fn max_workers_zero_means_ten() {
        assert_eq!(Config::new().max_workers(0).workers(), 10);
        let config = Config::new().set("max_workers", json!(0)).unwrap();
        assert_eq!(config.workers(), 10);
        assert_eq!(config.get("max_workers"), Some(&json!(10)));
        let config = Config::from_json_str_with(r#"{"MAX_WORKERS": "0"}"#, no_env).unwrap();
        assert_eq!(config.workers(), 10);
    }

    #[test]
    fn prefetch_follows_max_workers_unless_set() {
        let config = Config::new().max_workers(25);
        assert_eq!(config.prefetch(), 25);
        let config = config.prefetch_count(3);
        assert_eq!(config.prefetch(), 3);
        assert_eq!(config.workers(), 25);
        assert_eq!(config.get("PREFETCH_COUNT"), Some(&json!(3)));
        // Setting max_workers afterwards does not undo an explicit prefetch.
        assert_eq!(config.max_workers(50).prefetch(), 3);
        // Unsetting it again restores the Nameko 2 behaviour.
        let config = Config::new()
            .max_workers(7)
            .prefetch_count(2)
            .set("PREFETCH_COUNT", Value::Null)
            .unwrap();
        assert_eq!(config.prefetch(), 7);
        assert_eq!(config.get("PREFETCH_COUNT"), None);
        // More workers than AMQP can prefetch caps the prefetch.
        assert_eq!(Config::new().max_workers(100_000).prefetch(), u16::MAX);
    }

    #[test]
    fn set_types_and_validates_known_keys() {
        let config = Config::new()
            .set("max_workers", json!("12"))
            .unwrap()
            .set("Parent_Calls_Tracked", json!(5))
            .unwrap()
            .set("heartbeat", json!(" 30 "))
            .unwrap()
            .set("prefetch_count", json!(8))
            .unwrap()
            .set("rpc_exchange", json!("x"))
            .unwrap()
            .set("WEB_SERVER_ADDRESS", json!(8080))
            .unwrap()
            .set("AMQP_URI", json!("amqp://a:b@c/d"))
            .unwrap();
        assert_eq!(config.workers(), 12);
        assert_eq!(config.calls_tracked(), 5);
        assert_eq!(config.heartbeat_secs(), 30);
        assert_eq!(config.prefetch(), 8);
        assert_eq!(config.exchange(), "x");
        assert_eq!(config.web_address(), "8080");
        assert_eq!(config.uri(), "amqp://a:b@c/d");
        assert_eq!(config.get("heartbeat"), Some(&json!(30)));

        // null and "" restore the default.
        let config = config
            .set("max_workers", Value::Null)
            .unwrap()
            .set("rpc_exchange", json!(""))
            .unwrap();
        assert_eq!(config.workers(), 10);
        assert_eq!(config.exchange(), "nameko-rpc");
    }

    #[test]
    fn invalid_types_are_rejected_naming_the_key() {
        let err =
            |key: &str, value: Value| config_message(Config::new().set(key, value).unwrap_err());
        assert_eq!(
            err("max_workers", json!("abc")),
            r#"key `max_workers`: must be a non-negative integer, got "abc""#
        );
        assert_eq!(
            err("max_workers", json!(-1)),
            "key `max_workers`: must be a non-negative integer, got -1"
        );
        assert_eq!(
            err("max_workers", json!(1.5)),
            "key `max_workers`: must be a non-negative integer, got 1.5"
        );
        assert_eq!(
            err("parent_calls_tracked", json!(true)),
            "key `parent_calls_tracked`: must be a non-negative integer, got true"
        );
        assert_eq!(
            err("HEARTBEAT", json!(70000)),
            "key `HEARTBEAT`: 70000 is too large for this key"
        );
        assert_eq!(
            err("PREFETCH_COUNT", json!("-3")),
            r#"key `PREFETCH_COUNT`: must be a non-negative integer, got "-3""#
        );
        assert_eq!(
            err("rpc_exchange", json!([1])),
            "key `rpc_exchange`: must be a string, got a list"
        );
        assert_eq!(
            err("WEB_SERVER_ADDRESS", json!({"a": 1})),
            "key `WEB_SERVER_ADDRESS`: must be a string, got an object"
        );
        let msg = err("AMQP_URI", json!("amqps://u:secret@h/"));
        assert!(
            msg.starts_with("key `AMQP_URI`: invalid AMQP URI: TLS"),
            "{msg}"
        );
        assert!(!msg.contains("secret"), "{msg}");
        assert_eq!(
            err("amqp_uri", json!(false)),
            "key `amqp_uri`: must be a string, got false"
        );
    }

    #[test]
    fn other_keys_are_kept() {
        let config = Config::new()
            .set("DB_URIS", json!({"svc:Base": "postgresql://u:dbpass@db/x"}))
            .unwrap()
            .set("my_flag", json!(true))
            .unwrap();
        assert_eq!(config.get("my_flag"), Some(&json!(true)));
        assert_eq!(config.get("MY_FLAG"), None);
        assert_eq!(
            config.get("DB_URIS"),
            Some(&json!({"svc:Base": "postgresql://u:dbpass@db/x"}))
        );
        assert_eq!(
            config.masked()["DB_URIS"],
            json!({"svc:Base": "postgresql://u:***@db/x"})
        );
        assert_eq!(config.masked()["my_flag"], json!(true));
    }

    #[test]
    fn debug_and_masked_hide_the_amqp_password() {
        let config = Config::new().amqp_uri("amqp://admin:s3cret@rabbit:5672/prod");
        assert_eq!(
            config.masked()["AMQP_URI"],
            json!("amqp://admin:***@rabbit:5672/prod")
        );
        let debug = format!("{config:?}");
        assert!(debug.starts_with("Config {"), "{debug}");
        assert!(
            debug.contains("amqp://admin:***@rabbit:5672/prod"),
            "{debug}"
        );
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(!format!("{config:#?}").contains("s3cret"));
        // Even a URI that does not parse is masked.
        let config = Config::new().amqp_uri("admin:s3cret@rabbit");
        assert_eq!(config.masked()["AMQP_URI"], json!("admin:***@rabbit"));
        assert!(!format!("{config:?}").contains("s3cret"));
        let msg = config_message(config.amqp().unwrap_err());
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    // --- environment ---

    #[test]
    fn env_overrides() {
        let config = Config::from_env_with(env(&[
            ("AMQP_URI", "amqp://u:p@rabbit:5673/v"),
            ("MAX_WORKERS", "20"),
            ("PARENT_CALLS_TRACKED", "4"),
            ("RPC_EXCHANGE", "other-rpc"),
            ("HEARTBEAT", "15"),
            ("PREFETCH_COUNT", "5"),
            ("WEB_SERVER_ADDRESS", "127.0.0.1:8001"),
            ("max_workers", "99"),
        ]))
        .unwrap();
        assert_eq!(config.uri(), "amqp://u:p@rabbit:5673/v");
        assert_eq!(config.workers(), 20);
        assert_eq!(config.calls_tracked(), 4);
        assert_eq!(config.exchange(), "other-rpc");
        assert_eq!(config.heartbeat_secs(), 15);
        assert_eq!(config.prefetch(), 5);
        assert_eq!(config.web_address(), "127.0.0.1:8001");
    }

    #[test]
    fn env_defaults_and_empty_values() {
        let config = Config::from_env_with(no_env).unwrap();
        assert_eq!(config.masked(), Config::new().masked());
        let config =
            Config::from_env_with(env(&[("MAX_WORKERS", ""), ("ENOKI_CONFIG", "")])).unwrap();
        assert_eq!(config.workers(), 10);
    }

    #[test]
    fn env_errors_name_the_variable() {
        let err = Config::from_env_with(env(&[("MAX_WORKERS", "many")])).unwrap_err();
        assert_eq!(
            config_message(err),
            r#"environment variable `MAX_WORKERS`: must be a non-negative integer, got "many""#
        );
        let err = Config::from_env_with(env(&[("AMQP_URI", "amqps://u:secret@h")])).unwrap_err();
        let msg = config_message(err);
        assert!(msg.starts_with("environment variable `AMQP_URI`: invalid AMQP URI: TLS"));
        assert!(!msg.contains("secret"));
    }

    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> TempFile {
            let path = std::env::temp_dir()
                .join(format!("enoki-config-{}-{name}.json", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn env_file_then_env_on_top() {
        let file = TempFile::new(
            "layered",
            r#"{"AMQP_URI": "${RABBIT:amqp://f:f@file-host/}", "max_workers": 3,
                "rpc_exchange": "file-rpc", "custom": "${WHO}"}"#,
        );
        let config = Config::from_env_with(env(&[
            ("ENOKI_CONFIG", file.path()),
            ("MAX_WORKERS", "6"),
            ("WHO", "me"),
        ]))
        .unwrap();
        assert_eq!(config.uri(), "amqp://f:f@file-host/");
        assert_eq!(config.workers(), 6);
        assert_eq!(config.exchange(), "file-rpc");
        assert_eq!(config.get("custom"), Some(&json!("me")));
    }

    #[test]
    fn from_file_reads_and_names_the_file() {
        let file = TempFile::new("plain", r#"{"HEARTBEAT": 5}"#);
        assert_eq!(Config::from_file(file.path()).unwrap().heartbeat_secs(), 5);

        let missing = std::env::temp_dir().join("enoki-config-does-not-exist.json");
        let msg = config_message(Config::from_file(&missing).unwrap_err());
        assert!(
            msg.starts_with(&format!(
                "config file `{}`: cannot read it",
                missing.display()
            )),
            "{msg}"
        );

        let bad = TempFile::new("bad-json", "{\"HEARTBEAT\": }");
        let msg = config_message(Config::from_file(bad.path()).unwrap_err());
        assert!(
            msg.starts_with(&format!("config file `{}`: invalid JSON", bad.path())),
            "{msg}"
        );

        let bad = TempFile::new("bad-type", r#"{"heartbeat": "soon"}"#);
        let msg = config_message(Config::from_file(bad.path()).unwrap_err());
        assert_eq!(
            msg,
            format!(
                r#"config file `{}`: key `heartbeat`: must be a non-negative integer, got "soon""#,
                bad.path()
            )
        );
    }

    // --- JSON config and substitution ---

    #[test]
    fn json_keys_match_case_insensitively() {
        let config = Config::from_json_str_with(
            r#"{"amqp_uri": "amqp://x@h/", "MAX_WORKERS": 2, "Rpc_Exchange": "r",
                "heartbeat": "7", "prefetch_count": 1, "web_server_address": "8000",
                "LOGGING": {"version": 1}}"#,
            no_env,
        )
        .unwrap();
        assert_eq!(config.uri(), "amqp://x@h/");
        assert_eq!(config.workers(), 2);
        assert_eq!(config.exchange(), "r");
        assert_eq!(config.heartbeat_secs(), 7);
        assert_eq!(config.prefetch(), 1);
        assert_eq!(config.web_address(), "8000");
        assert_eq!(config.get("LOGGING"), Some(&json!({"version": 1})));
        assert_eq!(config.masked()["max_workers"], json!(2));
    }

    #[test]
    fn json_document_errors() {
        assert!(json_err("[1, 2]").contains("must be a JSON object"));
        assert!(json_err("{").starts_with("config: invalid JSON"));
        assert_eq!(
            json_err(r#"{"AMQP_URI": "amqp://a@b/", "amqp_uri": "amqp://c@d/"}"#),
            "config: keys `AMQP_URI` and `amqp_uri` both set `AMQP_URI`"
        );
        assert_eq!(
            json_err(r#"{"max_workers": "${N:lots}"}"#),
            r#"config: key `max_workers`: must be a non-negative integer, got "lots""#
        );
    }

    #[test]
    fn substitution_reparses_a_whole_substitution() {
        let lookup = env(&[("N", "12"), ("S", "hello"), ("Q", "\"quoted\"")]);
        assert_eq!(sub("${N}", &lookup), json!(12));
        assert_eq!(sub("${N:10}", no_env), json!(10));
        assert_eq!(sub("${F:true}", no_env), json!(true));
        assert_eq!(sub("${F:false}", no_env), json!(false));
        assert_eq!(sub("${L:[1, 2]}", no_env), json!([1, 2]));
        assert_eq!(sub("${O:null}", no_env), Value::Null);
        assert_eq!(sub("${X:1.5}", no_env), json!(1.5));
        assert_eq!(sub("${S}", &lookup), json!("hello"));
        assert_eq!(sub("${Q}", &lookup), json!("quoted"));
        // Set wins over the default.
        assert_eq!(sub("${N:10}", &lookup), json!(12));
        // A default may hold colons; only the first `:` splits.
        assert_eq!(
            sub("${URI:amqp://guest:guest@localhost}", no_env),
            json!("amqp://guest:guest@localhost")
        );
        // Only a string that is exactly one substitution is re-read.
        assert_eq!(sub(" ${N}", &lookup), json!(" 12"));
        assert_eq!(sub("${N}${N}", &lookup), json!("1212"));
    }

    #[test]
    fn substitution_unset_and_multiple() {
        let lookup = env(&[("HOST", "rabbit"), ("PORT", "5673"), ("EMPTY", "")]);
        assert_eq!(sub("${UNSET}", no_env), json!(""));
        assert_eq!(sub("a${UNSET}b", no_env), json!("ab"));
        assert_eq!(sub("${UNSET:}", no_env), json!(""));
        // Set but empty is a value, not a reason to use the default.
        assert_eq!(sub("${EMPTY:x}", &lookup), json!(""));
        assert_eq!(
            sub("amqp://${USER:guest}@${HOST}:${PORT}/", &lookup),
            json!("amqp://guest@rabbit:5673/")
        );
        assert_eq!(sub("no substitution", no_env), json!("no substitution"));
        assert_eq!(
            sub("$HOST and $ and {x}", &lookup),
            json!("$HOST and $ and {x}")
        );
        // `$$` is not an escape: the first `$` stays.
        assert_eq!(sub("$${HOST}", &lookup), json!("$rabbit"));
        assert_eq!(sub("$${UNSET}", no_env), json!("$"));
    }

    #[test]
    fn substituted_values_are_not_substituted_again() {
        let lookup = env(&[("A", "${B}"), ("B", "oops")]);
        assert_eq!(sub("${A}", &lookup), json!("${B}"));
    }

    #[test]
    fn substitution_errors() {
        let err = |input: &str| substitute(input, &no_env).unwrap_err();
        assert_eq!(
            err("${A:${B:x}}"),
            "nested substitution in `${A:...}` is not supported; give a plain default instead"
        );
        assert_eq!(err("${A"), "unterminated `${`: the closing `}` is missing");
        assert_eq!(
            err("ok ${A} then ${B"),
            "unterminated `${`: the closing `}` is missing"
        );
        assert_eq!(err("${}"), "`${}` does not name a variable");
        assert_eq!(err("${A B}"), "`${A B}` does not name a variable");
        assert_eq!(err("${:x}"), "`${:x}` does not name a variable");
    }

    #[test]
    fn file_substitution_end_to_end() {
        let lookup = env(&[("WORKERS", "16"), ("RABBIT_PASS", "pw")]);
        let config = Config::from_json_str_with(
            r#"{
                "AMQP_URI": "amqp://svc:${RABBIT_PASS}@${RABBIT_HOST:localhost}:5672/",
                "max_workers": "${WORKERS:10}",
                "HEARTBEAT": "${HB:30}",
                "PREFETCH_COUNT": "${PREFETCH}",
                "FLAGS": "${FLAGS:[1, 2]}",
                "ENABLED": "${ENABLED:true}",
                "NESTED": {"list": ["${WORKERS}", "x-${WORKERS}"]}
            }"#,
            lookup,
        )
        .unwrap();
        assert_eq!(config.uri(), "amqp://svc:pw@localhost:5672/");
        assert_eq!(config.workers(), 16);
        assert_eq!(config.heartbeat_secs(), 30);
        // Unset → "" → default: the prefetch follows max_workers.
        assert_eq!(config.prefetch(), 16);
        assert_eq!(config.get("FLAGS"), Some(&json!([1, 2])));
        assert_eq!(config.get("ENABLED"), Some(&json!(true)));
        assert_eq!(config.get("NESTED"), Some(&json!({"list": [16, "x-16"]})));
        assert_eq!(
            config.masked()["AMQP_URI"],
            json!("amqp://svc:***@localhost:5672/")
        );
    }

    #[test]
    fn file_substitution_errors_name_the_key() {
        assert_eq!(
            json_err(r#"{"AMQP_URI": "${A:${B:x}}"}"#),
            "config: key `AMQP_URI`: nested substitution in `${A:...}` is not supported; \
             give a plain default instead"
        );
        assert_eq!(
            json_err(r#"{"other": ["${OPEN"]}"#),
            "config: key `other`: unterminated `${`: the closing `}` is missing"
        );
    }

    // --- memory:// ---

    #[test]
    fn memory_uris_name_in_process_brokers() {
        let memory = |uri: &str| BrokerUri::parse(uri).unwrap();
        assert_eq!(memory("memory://"), BrokerUri::Memory(String::new()));
        assert_eq!(memory("MEMORY://"), BrokerUri::Memory(String::new()));
        assert_eq!(memory("memory:///"), BrokerUri::Memory(String::new()));
        assert_eq!(
            memory(" memory://t-1.a_b/ "),
            BrokerUri::Memory("t-1.a_b".into())
        );
        assert_eq!(memory("memory://tests").to_string(), "memory://tests");
        assert!(memory("memory://").is_memory());
        assert!(!memory("amqp://localhost").is_memory());
        let BrokerUri::Amqp(amqp) = memory("amqp://u:secret@h/v") else {
            panic!("amqp");
        };
        assert_eq!(amqp.vhost, "v");
        assert_eq!(
            memory("amqp://u:secret@h/v").to_string(),
            "amqp://u:***@h:5672/v"
        );
        for bad in ["memory://a/b", "memory://u:secret@host", "memory://a?x=1"] {
            let msg = config_message(BrokerUri::parse(bad).unwrap_err());
            assert!(msg.contains("`memory://<name>`"), "{msg}");
            assert!(!msg.contains("secret"), "{msg}");
        }
        let msg = uri_err("memory://");
        assert!(msg.contains("in-process broker"), "{msg}");
    }

    #[test]
    fn config_accepts_memory_uris_and_keeps_masking() {
        let config = Config::from_env_with(env(&[("AMQP_URI", "memory://mine")])).unwrap();
        assert_eq!(config.broker().unwrap(), BrokerUri::Memory("mine".into()));
        assert!(config.amqp().is_err());
        assert_eq!(config.masked()["AMQP_URI"], "memory://mine");
        let err = Config::from_env_with(env(&[("AMQP_URI", "memory://x:pw@y")])).unwrap_err();
        let msg = config_message(err);
        assert!(msg.contains("invalid AMQP URI"), "{msg}");
        assert!(!msg.contains("pw"), "{msg}");
        let config = Config::new().amqp_uri("amqp://u:pw@h/");
        assert_eq!(
            config.broker().unwrap().to_string(),
            "amqp://u:***@h:5672/%2F"
        );
        assert_eq!(config.masked()["AMQP_URI"], "amqp://u:***@h/");
    }

    #[test]
    fn stop_timeout_reads_seconds_and_falls_back_to_the_default() {
        use std::time::Duration;
        assert_eq!(Config::new().stop_deadline(), Duration::from_secs(30));
        let config = Config::new().stop_timeout(Duration::from_millis(250));
        assert_eq!(config.stop_deadline(), Duration::from_millis(250));
        let from_file = Config::from_json_str(r#"{"STOP_TIMEOUT": "1.5"}"#).unwrap();
        assert_eq!(from_file.stop_deadline(), Duration::from_millis(1500));
        for bad in [r#"{"STOP_TIMEOUT": -1}"#, r#"{"STOP_TIMEOUT": "soon"}"#] {
            let config = Config::from_json_str(bad).unwrap();
            assert_eq!(config.stop_deadline(), Duration::from_secs(30), "{bad}");
        }
    }

    #[test]
    fn timeouts_and_metrics_come_from_the_environment_too() {
        let env = |key: &str| match key {
            "STOP_TIMEOUT" => Some("2.5".to_owned()),
            "CONFIRM_TIMEOUT" => Some("4".to_owned()),
            "METRICS_ADDRESS" => Some("127.0.0.1:9102".to_owned()),
            _ => None,
        };
        let config = Config::from_env_with(env).unwrap();
        assert_eq!(
            config.stop_deadline(),
            std::time::Duration::from_millis(2500)
        );
        assert_eq!(config.confirm_deadline(), std::time::Duration::from_secs(4));
        assert_eq!(
            config.get("METRICS_ADDRESS"),
            Some(&json!("127.0.0.1:9102"))
        );
    }
}
