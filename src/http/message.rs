//! The request a handler gets and the response it gives back.

use crate::{Error, RemoteError, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const OCTETS: &str = "application/octet-stream";

/// An HTTP request as a handler sees it: method, path, the rule's path values, query, headers
/// and the whole body (read before the handler runs, within the configured size limit).
///
/// ```
/// use enoki::http::Request;
///
/// let req = Request::new("POST", "/items/42?tag=a&tag=b%20c")
///     .with_header("Content-Type", "application/json")
///     .with_body(r#"{"n": 1}"#)
///     .with_param("id", "42");
/// assert_eq!(req.path(), "/items/42");
/// assert_eq!(req.param::<u32>("id").unwrap(), 42);
/// assert_eq!(req.query_all("tag"), ["a", "b c"]);
/// assert_eq!(req.header("content-type"), Some("application/json"));
/// let body: serde_json::Value = req.json().unwrap();
/// assert_eq!(body["n"], 1);
/// ```
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    path: String,
    query_string: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    params: Vec<(String, String)>,
    remote_addr: Option<SocketAddr>,
}

impl Request {
    /// A request for `method` and `target` (a path with an optional `?query`), with no headers,
    /// body or path values: for calling handlers directly in tests.
    pub fn new(method: impl Into<String>, target: &str) -> Request {
        let (path, query_string) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.into().to_ascii_uppercase(),
            path: percent_decode(path, false),
            query: parse_query(query_string),
            query_string: query_string.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            params: Vec::new(),
            remote_addr: None,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets a path value, as the rule's variable `name` would.
    pub fn with_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Request {
        self.params.push((name.into(), value.into()));
        self
    }

    pub(crate) fn from_parts(
        method: String,
        path: String,
        query_string: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        params: Vec<(String, String)>,
        remote_addr: Option<SocketAddr>,
    ) -> Request {
        Request {
            method,
            path,
            query: parse_query(query_string),
            query_string: query_string.to_owned(),
            headers,
            body,
            params,
            remote_addr,
        }
    }

    /// The method, upper case (`GET`, `POST`, ...). A `HEAD` request reaches `GET` handlers with
    /// its method left as `HEAD`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path, percent-decoded, without the query string.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string (after `?`, still encoded); empty when there is none.
    pub fn query_string(&self) -> &str {
        &self.query_string
    }

    /// The first value of query parameter `name`, decoded.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of query parameter `name`, in order.
    pub fn query_all(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every query parameter, decoded, in order.
    pub fn query_pairs(&self) -> &[(String, String)] {
        &self.query
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header, as received.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The `Content-Type` header.
    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body as UTF-8 text; invalid UTF-8 is a `MalformedRequest` (400).
    pub fn text(&self) -> Result<&str> {
        std::str::from_utf8(&self.body).map_err(|e| {
            RemoteError::malformed_request(format!("the body is not UTF-8: {e}")).into()
        })
    }

    /// The body parsed as JSON into `T`; a body that does not parse or fit is a
    /// `MalformedRequest` (400).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            RemoteError::malformed_request(format!("cannot decode the JSON body: {e}")).into()
        })
    }

    /// The path value `name` converted to `T` (`i64`, `u32`, `f64`, `String`, `uuid::Uuid`, ...).
    /// A missing value or one that does not convert is an `IncorrectSignature` (400), as a
    /// Nameko handler whose signature does not fit its path values.
    pub fn param<T: FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: fmt::Display,
    {
        let text = self.param_str(name).ok_or_else(|| {
            Error::from(RemoteError::incorrect_signature(format!(
                "no path value `{name}`"
            )))
        })?;
        text.parse().map_err(|e| {
            RemoteError::incorrect_signature(format!("path value `{name}` = {text:?}: {e}")).into()
        })
    }

    /// The path value `name` as matched.
    pub fn param_str(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every path value, in the rule's order.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The client's address, when the request came over the network.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote_addr
    }
}

/// An HTTP response: status, headers and body.
///
/// `Content-Length`, `Transfer-Encoding` and `Connection` are the server's to set; headers with
/// those names are ignored.
///
/// ```
/// use enoki::http::Response;
///
/// let r = Response::text("hi").status(201).header("X-Foo", "bar");
/// assert_eq!(r.status_code(), 201);
/// assert_eq!(r.header_value("content-type"), Some("text/plain; charset=utf-8"));
/// let j = Response::json(&serde_json::json!({"ok": true})).unwrap();
/// assert_eq!(j.body_bytes(), br#"{"ok":true}"#);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl Default for Response {
    fn default() -> Response {
        Response::new(200)
    }
}

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// 200 with a `text/plain; charset=utf-8` body.
    pub fn text(body: impl Into<String>) -> Response {
        Response::new(200)
            .header("Content-Type", TEXT)
            .body(body.into())
    }

    /// 200 with `value` serialized as an `application/json` body.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Response> {
        let body = serde_json::to_vec(value)?;
        Ok(Response::new(200).header("Content-Type", JSON).body(body))
    }

    /// 200 with `body` and the given content type.
    pub fn bytes(content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response::new(200)
            .header("Content-Type", content_type)
            .body(body)
    }

    /// Sets the status code.
    pub fn status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    /// Adds a header; a second `Content-Type` replaces the first.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        let name = name.into();
        if name.eq_ignore_ascii_case("content-type") {
            self.headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-type"));
        }
        self.headers.push((name, value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status_code(&self) -> u16 {
        self.status
    }

    /// The headers, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first header called `name` (case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// Consumes the response into status, headers and body.
    pub fn into_parts(self) -> (u16, Vec<(String, String)>, Vec<u8>) {
        (self.status, self.headers, self.body)
    }
}

/// A body in a shorthand return: text is `text/plain; charset=utf-8`, bytes are
/// `application/octet-stream`.
pub trait IntoBody {
    /// The bytes and their default content type.
    fn into_body(self) -> (Vec<u8>, &'static str);
}

impl IntoBody for String {
    fn into_body(self) -> (Vec<u8>, &'static str) {
        (self.into_bytes(), TEXT)
    }
}

impl IntoBody for &str {
    fn into_body(self) -> (Vec<u8>, &'static str) {
        (self.as_bytes().to_vec(), TEXT)
    }
}

impl IntoBody for Vec<u8> {
    fn into_body(self) -> (Vec<u8>, &'static str) {
        (self, OCTETS)
    }
}

impl IntoBody for &[u8] {
    fn into_body(self) -> (Vec<u8>, &'static str) {
        (self.to_vec(), OCTETS)
    }
}

/// What a handler may return, as in Nameko: a body; `(status, body)`; `(status, headers,
/// body)`; a [`Response`]; or [`Json`].
///
/// ```
/// use enoki::http::{IntoResponse, Json};
///
/// assert_eq!("hi".into_response().unwrap().status_code(), 200);
/// assert_eq!((201, "made").into_response().unwrap().status_code(), 201);
/// let r = (202, [("X-Foo", "bar")], "later").into_response().unwrap();
/// assert_eq!(r.header_value("x-foo"), Some("bar"));
/// let r = Json(vec![1, 2]).into_response().unwrap();
/// assert_eq!(r.body_bytes(), b"[1,2]");
/// ```
pub trait IntoResponse {
    /// Builds the response; fails only if a JSON body cannot be serialized.
    fn into_response(self) -> Result<Response>;
}

impl IntoResponse for Response {
    fn into_response(self) -> Result<Response> {
        Ok(self)
    }
}

impl<B: IntoBody> IntoResponse for B {
    fn into_response(self) -> Result<Response> {
        (200, self).into_response()
    }
}

impl<B: IntoBody> IntoResponse for (u16, B) {
    fn into_response(self) -> Result<Response> {
        let (body, content_type) = self.1.into_body();
        Ok(Response::new(self.0)
            .header("Content-Type", content_type)
            .body(body))
    }
}

impl<B, H, K, V> IntoResponse for (u16, H, B)
where
    B: IntoBody,
    H: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    fn into_response(self) -> Result<Response> {
        let (status, headers, body) = self;
        let mut response = (status, body).into_response()?;
        for (k, v) in headers {
            response = response.header(k, v);
        }
        Ok(response)
    }
}

/// A value sent as an `application/json` body with status 200.
#[derive(Clone, Debug)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Result<Response> {
        Response::json(&self.0)
    }
}

/// Decodes `%XX` escapes (and `+` as a space in query strings); invalid UTF-8 is replaced.
pub(crate) fn percent_decode(text: &str, plus_is_space: bool) -> String {
    if !text.contains(['%', '+']) {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("/a%20b/%zz/%4", false), "/a b/%zz/%4");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("a+b%2B", true), "a b+");
        assert_eq!(
            parse_query("a=1&b=&c&a=x%3Dy"),
            [("a", "1"), ("b", ""), ("c", ""), ("a", "x=y")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }
}
