//! RPC arguments as Nameko sends them: positional `args` and keyword `kwargs`.

use crate::{Error, RemoteError, Result};
use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::fmt;

/// The arguments of one RPC call: `{"args": [...], "kwargs": {...}}` on the wire.
///
/// A handler can take `Args` raw, or any type that deserializes from them (see
/// [`Args::parse`]). Callers build them with [`Args::new`] and the setters, or pass a tuple or a
/// JSON value wherever an [`IntoArgs`] is accepted.
///
/// ```
/// use enoki::Args;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Add { a: i64, b: i64 }
///
/// // Python: add(1, b=2)
/// let args = Args::new().arg(1).kwarg("b", 2);
/// let add: Add = args.parse().unwrap();
/// assert_eq!(add.a + add.b, 3);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
}

impl Args {
    /// No arguments.
    pub fn new() -> Args {
        Args::default()
    }

    /// Appends a positional argument.
    pub fn arg(mut self, value: impl Into<Value>) -> Args {
        self.args.push(value.into());
        self
    }

    /// Sets a keyword argument.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Into<Value>) -> Args {
        self.kwargs.insert(name.into(), value.into());
        self
    }

    /// Keyword arguments from any value that serializes to a JSON object (a struct, a map).
    pub fn keywords(value: impl Serialize) -> Result<Args> {
        match serde_json::to_value(value)? {
            Value::Object(kwargs) => Ok(Args {
                args: Vec::new(),
                kwargs,
            }),
            other => Err(Error::bad_input(format!(
                "keyword arguments must serialize to an object, not {other}"
            ))),
        }
    }

    /// Binds the arguments to `T` the way Python binds them to a signature:
    ///
    /// * a struct (named fields) takes positional arguments in field order, then keyword
    ///   arguments by name; too many positional arguments, a name given twice or an unknown name
    ///   is an error;
    /// * a tuple, a sequence or any other type is read from the positional arguments, and
    ///   keyword arguments are an error;
    /// * `()` accepts no arguments.
    ///
    /// A mismatch is Nameko's `IncorrectSignature` remote error.
    pub fn parse<T: DeserializeOwned>(self) -> Result<T> {
        let shape = probe::<T>();
        let value = match shape {
            Shape::Struct(fields) => Value::Object(self.bind(fields)?),
            Shape::Unit => {
                self.no_keywords()?;
                if !self.args.is_empty() {
                    return Err(signature(format!(
                        "takes 0 positional arguments but {} were given",
                        self.args.len()
                    )));
                }
                Value::Null
            }
            Shape::Other => {
                self.no_keywords()?;
                Value::Array(self.args)
            }
        };
        serde_json::from_value(value).map_err(|e| signature(e.to_string()))
    }

    fn no_keywords(&self) -> Result<()> {
        match self.kwargs.keys().next() {
            Some(name) => Err(signature(format!(
                "got an unexpected keyword argument '{name}'"
            ))),
            None => Ok(()),
        }
    }

    fn bind(self, fields: &'static [&'static str]) -> Result<Map<String, Value>> {
        if self.args.len() > fields.len() {
            return Err(signature(format!(
                "takes {} positional arguments but {} were given",
                fields.len(),
                self.args.len()
            )));
        }
        let mut bound = Map::new();
        for (name, value) in fields.iter().zip(self.args) {
            bound.insert((*name).to_owned(), value);
        }
        for (name, value) in self.kwargs {
            if !fields.contains(&name.as_str()) {
                return Err(signature(format!(
                    "got an unexpected keyword argument '{name}'"
                )));
            }
            if bound.contains_key(&name) {
                return Err(signature(format!(
                    "got multiple values for argument '{name}'"
                )));
            }
            bound.insert(name, value);
        }
        Ok(bound)
    }
}

fn signature(message: String) -> Error {
    RemoteError::incorrect_signature(message).into()
}

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("args", &self.args)?;
        map.serialize_entry("kwargs", &self.kwargs)?;
        map.end()
    }
}

/// What a handler's argument type is built from: [`Args`] itself, or anything deserializable
/// (bound as [`Args::parse`] describes).
pub trait FromArgs: Sized {
    /// Builds the value; a mismatch is an `IncorrectSignature` error.
    fn from_args(args: Args) -> Result<Self>;
}

impl FromArgs for Args {
    fn from_args(args: Args) -> Result<Args> {
        Ok(args)
    }
}

impl<T: DeserializeOwned> FromArgs for T {
    fn from_args(args: Args) -> Result<T> {
        args.parse()
    }
}

/// What a caller can pass as arguments: [`Args`], `()`, a tuple of serializable values
/// (positional), a `Vec<Value>` (positional), or a JSON value (an array is positional, an object
/// is keyword, `null` is none, anything else is one positional argument).
pub trait IntoArgs {
    /// Converts into [`Args`].
    fn into_args(self) -> Result<Args>;
}

impl IntoArgs for Args {
    fn into_args(self) -> Result<Args> {
        Ok(self)
    }
}

impl IntoArgs for () {
    fn into_args(self) -> Result<Args> {
        Ok(Args::new())
    }
}

impl IntoArgs for Vec<Value> {
    fn into_args(self) -> Result<Args> {
        Ok(Args {
            args: self,
            kwargs: Map::new(),
        })
    }
}

impl IntoArgs for Value {
    fn into_args(self) -> Result<Args> {
        Ok(match self {
            Value::Array(args) => Args {
                args,
                kwargs: Map::new(),
            },
            Value::Object(kwargs) => Args {
                args: Vec::new(),
                kwargs,
            },
            Value::Null => Args::new(),
            other => Args::new().arg(other),
        })
    }
}

macro_rules! tuple_into_args {
    ($($name:ident)+) => {
        impl<$($name: Serialize),+> IntoArgs for ($($name,)+) {
            #[allow(non_snake_case)] // the type parameters double as binding names
            fn into_args(self) -> Result<Args> {
                let ($($name,)+) = self;
                Ok(Args {
                    args: vec![$(serde_json::to_value($name)?),+],
                    kwargs: Map::new(),
                })
            }
        }
    };
}

tuple_into_args!(A);
tuple_into_args!(A B);
tuple_into_args!(A B C);
tuple_into_args!(A B C D);
tuple_into_args!(A B C D E);
tuple_into_args!(A B C D E F);
tuple_into_args!(A B C D E F G);
tuple_into_args!(A B C D E F G H);

/// How a type wants to be deserialized, learned by asking it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Struct(&'static [&'static str]),
    Unit,
    Other,
}

fn probe<T: DeserializeOwned>() -> Shape {
    match T::deserialize(Probe) {
        Err(Probed(shape)) => shape,
        Ok(_) => Shape::Other,
    }
}

/// A deserializer that records the first thing a type asks for and stops there.
struct Probe;

#[derive(Debug)]
struct Probed(Shape);

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("probe")
    }
}

impl std::error::Error for Probed {}

impl de::Error for Probed {
    fn custom<M: fmt::Display>(_msg: M) -> Self {
        Probed(Shape::Other)
    }
}

impl<'de> de::Deserializer<'de> for Probe {
    type Error = Probed;

    fn deserialize_any<V: Visitor<'de>>(self, _v: V) -> std::result::Result<V::Value, Probed> {
        Err(Probed(Shape::Other))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _v: V,
    ) -> std::result::Result<V::Value, Probed> {
        Err(Probed(Shape::Struct(fields)))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, _v: V) -> std::result::Result<V::Value, Probed> {
        Err(Probed(Shape::Unit))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Add {
        a: i64,
        b: i64,
    }

    fn remote(err: Error) -> RemoteError {
        match err.into_kind() {
            ErrorKind::Remote(r) => r,
            other => panic!("expected a remote error, got {other:?}"),
        }
    }

    #[test]
    fn struct_binds_positional_then_keyword() {
        let args = Args::new().arg(1).kwarg("b", 2);
        assert_eq!(args.parse::<Add>().unwrap(), Add { a: 1, b: 2 });
        let args = Args::new().kwarg("a", 5).kwarg("b", 6);
        assert_eq!(args.parse::<Add>().unwrap(), Add { a: 5, b: 6 });
    }

    #[test]
    fn struct_rejects_duplicates_unknown_and_too_many() {
        let e = remote(Args::new().arg(1).kwarg("a", 2).parse::<Add>().unwrap_err());
        assert_eq!(e.exc_type, "IncorrectSignature");
        assert_eq!(e.exc_path, "nameko.exceptions.IncorrectSignature");
        assert_eq!(e.value, "got multiple values for argument 'a'");
        let e = remote(Args::new().kwarg("c", 2).parse::<Add>().unwrap_err());
        assert_eq!(e.value, "got an unexpected keyword argument 'c'");
        let e = remote(Args::new().arg(1).arg(2).arg(3).parse::<Add>().unwrap_err());
        assert_eq!(e.value, "takes 2 positional arguments but 3 were given");
    }

    #[test]
    fn tuples_take_positional_only() {
        let (a, b): (i64, String) = Args::new().arg(1).arg("x").parse().unwrap();
        assert_eq!((a, b.as_str()), (1, "x"));
        let e = remote(Args::new().arg(1).parse::<(i64, i64)>().unwrap_err());
        assert_eq!(e.exc_type, "IncorrectSignature");
        let e = remote(Args::new().kwarg("a", 1).parse::<(i64,)>().unwrap_err());
        assert_eq!(e.value, "got an unexpected keyword argument 'a'");
    }

    #[test]
    fn unit_takes_nothing() {
        Args::new().parse::<()>().unwrap();
        let e = remote(Args::new().arg(1).parse::<()>().unwrap_err());
        assert_eq!(e.value, "takes 0 positional arguments but 1 were given");
    }

    #[test]
    fn into_args_shapes() {
        assert_eq!(
            (1, "x").into_args().unwrap().args,
            vec![json!(1), json!("x")]
        );
        let kw = json!({"k": 1}).into_args().unwrap();
        assert_eq!(kw.kwargs.get("k"), Some(&json!(1)));
        assert!(kw.args.is_empty());
        assert_eq!(json!(7).into_args().unwrap().args, vec![json!(7)]);
        assert_eq!(
            serde_json::to_string(&Args::new().arg(1).kwarg("b", [1, 2])).unwrap(),
            r#"{"args":[1],"kwargs":{"b":[1,2]}}"#
        );
    }
}
