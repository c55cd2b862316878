//! The crate's one error type, and the Nameko remote error carried over the wire.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in enoki.
///
/// The error is one pointer wide so that `Result` stays small on the hot path; branch on
/// [`Error::kind`] to tell a remote error, a timeout, an unknown service, a broker failure and
/// bad input apart.
///
/// ```
/// use enoki::{Error, ErrorKind, RemoteError};
///
/// let err: Error = RemoteError::new("ValueError", "bad thing").into();
/// match err.kind() {
///     ErrorKind::Remote(remote) => assert_eq!(remote.exc_type, "ValueError"),
///     other => panic!("unexpected {other:?}"),
/// }
/// ```
pub struct Error {
    kind: Box<ErrorKind>,
}

/// What kind of failure an [`Error`] is.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The remote service (or a handler of this one) raised an error; it travels as Nameko's
    /// error object.
    Remote(RemoteError),
    /// No reply arrived within the given time.
    Timeout(Duration),
    /// No queue is bound for the target service (`basic.return` NO_ROUTE on a mandatory publish).
    UnknownService(String),
    /// The broker could not be reached, refused an operation, nacked a publish or dropped the
    /// connection.
    Broker(String),
    /// Input could not be decoded or encoded: malformed JSON, a value that does not fit the
    /// requested type, a bad URI.
    BadInput(String),
    /// The configuration is invalid.
    Config(String),
    /// An operating-system I/O error.
    Io(std::io::Error),
    /// The container or client has been stopped.
    Stopped,
}

impl Error {
    /// Creates an error of the given kind.
    pub fn new(kind: ErrorKind) -> Error {
        Error {
            kind: Box::new(kind),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Consumes the error and returns its kind.
    pub fn into_kind(self) -> ErrorKind {
        *self.kind
    }

    /// A remote error with the given Python exception type and message, the way a handler
    /// raises one. See [`RemoteError::new`].
    pub fn remote(exc_type: impl Into<String>, value: impl Into<String>) -> Error {
        RemoteError::new(exc_type, value).into()
    }

    /// Bad input: something could not be decoded or did not fit.
    pub fn bad_input(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::BadInput(message.into()))
    }

    /// A broker failure.
    pub fn broker(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Broker(message.into()))
    }

    /// A configuration error.
    pub fn config(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Config(message.into()))
    }

    /// The remote error, if this is one.
    pub fn as_remote(&self) -> Option<&RemoteError> {
        match &*self.kind {
            ErrorKind::Remote(remote) => Some(remote),
            _ => None,
        }
    }

    /// True for a timeout waiting on a reply.
    pub fn is_timeout(&self) -> bool {
        matches!(*self.kind, ErrorKind::Timeout(_))
    }

    /// The error as it travels in a reply: remote errors unchanged, every other kind mapped to
    /// the Nameko exception a Python service would raise for it.
    pub fn to_remote(&self) -> RemoteError {
        match &*self.kind {
            ErrorKind::Remote(remote) => remote.clone(),
            ErrorKind::Timeout(d) => RemoteError::with_path(
                "RpcTimeout",
                "nameko.exceptions.RpcTimeout",
                format!("{}", d.as_secs_f64()),
            ),
            ErrorKind::UnknownService(svc) => RemoteError::with_path(
                "UnknownService",
                "nameko.exceptions.UnknownService",
                format!("Unknown service `{svc}`"),
            ),
            ErrorKind::Broker(msg) => RemoteError::new("ConnectionError", msg.clone()),
            ErrorKind::BadInput(msg) => RemoteError::new("ValueError", msg.clone()),
            ErrorKind::Config(msg) => RemoteError::with_path(
                "ConfigurationError",
                "nameko.exceptions.ConfigurationError",
                msg.clone(),
            ),
            ErrorKind::Io(e) => RemoteError::new("OSError", e.to_string()),
            ErrorKind::Stopped => RemoteError::with_path(
                "ContainerBeingKilled",
                "nameko.exceptions.ContainerBeingKilled",
                "the service is stopping",
            ),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            ErrorKind::Remote(remote) => write!(f, "remote error: {remote}"),
            ErrorKind::Timeout(d) => write!(f, "no reply within {:.3} s", d.as_secs_f64()),
            ErrorKind::UnknownService(svc) => write!(f, "Unknown service `{svc}`"),
            ErrorKind::Broker(msg) => write!(f, "broker: {msg}"),
            ErrorKind::BadInput(msg) => write!(f, "bad input: {msg}"),
            ErrorKind::Config(msg) => write!(f, "configuration: {msg}"),
            ErrorKind::Io(e) => write!(f, "I/O: {e}"),
            ErrorKind::Stopped => f.write_str("stopped"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            ErrorKind::Io(e) => Some(e),
            ErrorKind::Remote(r) => Some(r),
            _ => None,
        }
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Error {
        Error::new(kind)
    }
}

impl From<RemoteError> for Error {
    fn from(remote: RemoteError) -> Error {
        Error::new(ErrorKind::Remote(remote))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::new(ErrorKind::Io(e))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::bad_input(e.to_string())
    }
}

/// Nameko's error object: what a service raised, as its caller sees it.
///
/// A Python caller turns it into `nameko.exceptions.RemoteError` (or, for the registered
/// `nameko.exceptions.*` paths, into that class); an enoki caller gets it back unchanged inside
/// [`ErrorKind::Remote`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteError {
    /// The exception class name, e.g. `ValueError`.
    pub exc_type: String,
    /// Module path and class name, e.g. `builtins.ValueError`.
    pub exc_path: String,
    /// The exception's arguments, made JSON-safe.
    pub exc_args: Vec<Value>,
    /// `str(exc)`: the message.
    pub value: String,
}

/// Python's built-in exception names, which live in the `builtins` module.
const PYTHON_BUILTINS: &[&str] = &[
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "BufferError",
    "ConnectionError",
    "EOFError",
    "Exception",
    "FileNotFoundError",
    "FloatingPointError",
    "ImportError",
    "IndexError",
    "KeyError",
    "LookupError",
    "MemoryError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PermissionError",
    "RecursionError",
    "RuntimeError",
    "TimeoutError",
    "TypeError",
    "UnicodeError",
    "ValueError",
    "ZeroDivisionError",
];

impl RemoteError {
    /// An error of Python type `exc_type` with message `value`, as `exc_type(value)` would be
    /// raised in Python: `exc_args` is `[value]`, and `exc_path` is `builtins.<exc_type>` for
    /// Python's built-in exceptions and `exc_type` itself otherwise.
    ///
    /// ```
    /// let e = enoki::RemoteError::new("ValueError", "boom");
    /// assert_eq!(e.exc_path, "builtins.ValueError");
    /// assert_eq!(e.exc_args, vec![serde_json::json!("boom")]);
    /// ```
    pub fn new(exc_type: impl Into<String>, value: impl Into<String>) -> RemoteError {
        let exc_type = exc_type.into();
        let exc_path = if PYTHON_BUILTINS.contains(&exc_type.as_str()) {
            format!("builtins.{exc_type}")
        } else {
            exc_type.clone()
        };
        Self::with_path(exc_type, exc_path, value)
    }

    /// An error with an explicit `exc_path`, e.g. `myapp.exceptions.OutOfStock`.
    pub fn with_path(
        exc_type: impl Into<String>,
        exc_path: impl Into<String>,
        value: impl Into<String>,
    ) -> RemoteError {
        let value = value.into();
        RemoteError {
            exc_type: exc_type.into(),
            exc_path: exc_path.into(),
            exc_args: vec![Value::String(value.clone())],
            value,
        }
    }

    /// Replaces `exc_args`.
    pub fn args(mut self, exc_args: Vec<Value>) -> RemoteError {
        self.exc_args = exc_args;
        self
    }

    /// Nameko's `MethodNotFound(method)`.
    pub fn method_not_found(method: &str) -> RemoteError {
        Self::with_path("MethodNotFound", "nameko.exceptions.MethodNotFound", method)
    }

    /// Nameko's `IncorrectSignature(message)`: the arguments do not fit the handler.
    pub fn incorrect_signature(message: impl Into<String>) -> RemoteError {
        Self::with_path(
            "IncorrectSignature",
            "nameko.exceptions.IncorrectSignature",
            message,
        )
    }

    /// Nameko's `MalformedRequest(message)`: the request body is not `{"args", "kwargs"}`.
    pub fn malformed_request(message: impl Into<String>) -> RemoteError {
        Self::with_path(
            "MalformedRequest",
            "nameko.exceptions.MalformedRequest",
            message,
        )
    }
}

impl fmt::Display for RemoteError {
    /// Formats like Python's `RemoteError`: `"<exc_type> <value>"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.exc_type, self.value)
    }
}

impl std::error::Error for RemoteError {}
