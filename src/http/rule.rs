//! Werkzeug-style URL rules: parsing, matching and the order in which rules are tried.
//!
//! A rule such as `/items/<int:id>/<path:rest>` is a sequence of static text and variables,
//! each variable with a converter: `string` (the default: one path segment), `int` (digits),
//! `float` (digits, a dot, digits), `path` (any text, slashes included), `uuid`, and
//! `any(a,b,...)` (one of the listed words). Rules are tried in Werkzeug's order, so the most
//! specific one wins: rules without variables first, then more static segments, longer static
//! text, and lighter converters (`int` and `float` before `string`, `string` before `path`).

use crate::{Error, Result};
use std::cmp::Ordering;

/// How a variable matches text, and its weight in Werkzeug's ordering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Converter {
    String,
    Int,
    Float,
    Path,
    Uuid,
    Any(Vec<String>),
}

impl Converter {
    fn parse(spec: &str) -> std::result::Result<Converter, String> {
        let spec = spec.trim();
        if let Some(inner) = spec
            .strip_prefix("any(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            let words: Vec<String> = inner
                .split(',')
                .map(|w| w.trim().trim_matches(['"', '\'']).to_owned())
                .collect();
            if words.iter().any(|w| w.is_empty() || w.contains('/')) {
                return Err(format!("`{spec}` needs non-empty words without `/`"));
            }
            return Ok(Converter::Any(words));
        }
        match spec {
            "" | "string" | "default" => Ok(Converter::String),
            "int" => Ok(Converter::Int),
            "float" => Ok(Converter::Float),
            "path" => Ok(Converter::Path),
            "uuid" => Ok(Converter::Uuid),
            other => Err(format!(
                "unknown converter `{other}` (enoki knows string, int, float, path, uuid and \
                 any(...), without arguments)"
            )),
        }
    }

    /// Werkzeug's `weight`: lighter converters are tried first.
    fn weight(&self) -> u32 {
        match self {
            Converter::Int | Converter::Float => 50,
            Converter::Path => 200,
            _ => 100,
        }
    }

    /// The lengths of the prefixes of `text` this converter accepts, best first.
    fn candidates(&self, text: &str) -> Vec<usize> {
        let bytes = text.as_bytes();
        let digits = |from: usize| {
            bytes[from..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()
        };
        match self {
            Converter::String => {
                let end = text.find('/').unwrap_or(text.len());
                (1..=end)
                    .rev()
                    .filter(|n| text.is_char_boundary(*n))
                    .collect()
            }
            Converter::Path => {
                // `[^/].*?`: shortest first, as Werkzeug's non-greedy regex.
                if text.starts_with('/') || text.is_empty() {
                    return Vec::new();
                }
                (1..=text.len())
                    .filter(|n| text.is_char_boundary(*n))
                    .collect()
            }
            Converter::Int => (1..=digits(0)).rev().collect(),
            Converter::Float => {
                let whole = digits(0);
                if whole == 0 || bytes.get(whole) != Some(&b'.') {
                    return Vec::new();
                }
                let fraction = digits(whole + 1);
                (1..=fraction).rev().map(|f| whole + 1 + f).collect()
            }
            Converter::Uuid => {
                let ok = bytes.len() >= 36
                    && bytes[..36].iter().enumerate().all(|(i, b)| {
                        if matches!(i, 8 | 13 | 18 | 23) {
                            *b == b'-'
                        } else {
                            b.is_ascii_hexdigit()
                        }
                    });
                if ok { vec![36] } else { Vec::new() }
            }
            Converter::Any(words) => {
                let mut lengths: Vec<usize> = words
                    .iter()
                    .filter(|w| text.starts_with(w.as_str()))
                    .map(String::len)
                    .collect();
                lengths.sort_unstable_by(|a, b| b.cmp(a));
                lengths
            }
        }
    }

    fn name(&self) -> String {
        match self {
            Converter::String => "string".to_owned(),
            Converter::Int => "int".to_owned(),
            Converter::Float => "float".to_owned(),
            Converter::Path => "path".to_owned(),
            Converter::Uuid => "uuid".to_owned(),
            Converter::Any(words) => format!("any({})", words.join(",")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Static(String),
    Var(String, Converter),
}

/// One parsed rule.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    text: String,
    parts: Vec<Part>,
    key: SortKey,
}

/// Werkzeug's `match_compare_key`: `(has arguments, -static segments, static weights,
/// -arguments, argument weights)`, compared in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SortKey {
    has_args: bool,
    statics: Vec<(usize, isize)>,
    args: Vec<u32>,
}

impl Ord for SortKey {
    fn cmp(&self, other: &SortKey) -> Ordering {
        self.has_args
            .cmp(&other.has_args)
            .then_with(|| other.statics.len().cmp(&self.statics.len()))
            .then_with(|| self.statics.cmp(&other.statics))
            .then_with(|| other.args.len().cmp(&self.args.len()))
            .then_with(|| self.args.cmp(&other.args))
    }
}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &SortKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Rule {
    /// Parses `text`; fails with a configuration error that quotes the rule.
    pub(crate) fn parse(text: &str) -> Result<Rule> {
        let fail = |why: String| Error::config(format!("invalid http rule `{text}`: {why}"));
        if !text.starts_with('/') {
            return Err(fail("it must start with `/`".to_owned()));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('<') {
                Some(0) => {
                    let end = rest
                        .find('>')
                        .ok_or_else(|| fail("a `<` is not closed by `>`".to_owned()))?;
                    let inner = &rest[1..end];
                    let (spec, name) = match inner.rfind(':') {
                        Some(colon) => (&inner[..colon], &inner[colon + 1..]),
                        None => ("", inner),
                    };
                    let name = name.trim();
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        || name.starts_with(|c: char| c.is_ascii_digit())
                    {
                        return Err(fail(format!("`<{inner}>` does not name a variable")));
                    }
                    if parts
                        .iter()
                        .any(|p| matches!(p, Part::Var(n, _) if n == name))
                    {
                        return Err(fail(format!("variable `{name}` appears twice")));
                    }
                    let converter = Converter::parse(spec).map_err(fail)?;
                    if matches!(parts.last(), Some(Part::Var(..))) {
                        return Err(fail(format!(
                            "`<{inner}>` directly follows another variable; put text between them"
                        )));
                    }
                    parts.push(Part::Var(name.to_owned(), converter));
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    if rest[..end].contains('>') {
                        return Err(fail("a `>` has no opening `<`".to_owned()));
                    }
                    parts.push(Part::Static(rest[..end].to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        let mut key = SortKey {
            has_args: false,
            statics: Vec::new(),
            args: Vec::new(),
        };
        for (index, part) in parts.iter().enumerate() {
            match part {
                Part::Static(s) => {
                    for segment in s.split('/').filter(|s| !s.is_empty()) {
                        key.statics.push((index, -(segment.len() as isize)));
                    }
                }
                Part::Var(_, converter) => {
                    key.has_args = true;
                    key.args.push(converter.weight());
                }
            }
        }
        Ok(Rule {
            text: text.to_owned(),
            parts,
            key,
        })
    }

    /// The rule as written.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The rule with variable names left out: two rules with the same shape match the same paths.
    pub(crate) fn shape(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Static(s) => s.clone(),
                Part::Var(_, c) => format!("<{}>", c.name()),
            })
            .collect()
    }

    /// Werkzeug's order: `Less` means `self` is tried first.
    pub(crate) fn precedence(&self, other: &Rule) -> Ordering {
        self.key.cmp(&other.key)
    }

    /// Matches the whole (decoded) `path`, returning each variable's text.
    pub(crate) fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut captures = Vec::new();
        match_parts(&self.parts, path, &mut captures).then_some(captures)
    }
}

fn match_parts(parts: &[Part], text: &str, captures: &mut Vec<(String, String)>) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return text.is_empty();
    };
    match first {
        Part::Static(s) => text
            .strip_prefix(s.as_str())
            .is_some_and(|after| match_parts(rest, after, captures)),
        Part::Var(name, converter) => {
            for len in converter.candidates(text) {
                captures.push((name.clone(), text[..len].to_owned()));
                if match_parts(rest, &text[len..], captures) {
                    return true;
                }
                captures.pop();
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rule: &str, path: &str) -> Option<Vec<(String, String)>> {
        Rule::parse(rule).unwrap().matches(path)
    }

    fn caps(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn converters_match_like_werkzeug() {
        assert_eq!(m("/a/<x>", "/a/hi"), caps(&[("x", "hi")]));
        assert_eq!(m("/a/<string:x>", "/a/h/i"), None);
        assert_eq!(m("/a/<x>", "/a/"), None);
        assert_eq!(m("/a/<int:id>", "/a/42"), caps(&[("id", "42")]));
        assert_eq!(m("/a/<int:id>", "/a/-1"), None);
        assert_eq!(m("/a/<int:id>", "/a/4x"), None);
        assert_eq!(m("/a/<float:f>", "/a/1.5"), caps(&[("f", "1.5")]));
        assert_eq!(m("/a/<float:f>", "/a/1"), None);
        assert_eq!(m("/a/<path:p>", "/a/b/c.txt"), caps(&[("p", "b/c.txt")]));
        assert_eq!(m("/a/<path:p>/edit", "/a/b/c/edit"), caps(&[("p", "b/c")]));
        assert_eq!(m("/a/<path:p>", "/a//b"), None);
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(m("/u/<uuid:id>", &format!("/u/{id}")), caps(&[("id", id)]));
        assert_eq!(m("/u/<uuid:id>", "/u/0f8fad5b"), None);
        assert_eq!(m("/k/<any(a,bb):k>", "/k/bb"), caps(&[("k", "bb")]));
        assert_eq!(m("/k/<any(a,bb):k>", "/k/c"), None);
        assert_eq!(m("/f/<name>.json", "/f/x.json"), caps(&[("name", "x")]));
    }

    #[test]
    fn bad_rules_are_rejected() {
        for bad in [
            "a",
            "/<>",
            "/<int:1x>",
            "/<x",
            "/x>",
            "/<nope:x>",
            "/<x><y>",
            "/<a>/<a>",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn specific_rules_come_first() {
        let mut rules: Vec<Rule> = [
            "/items/<path:rest>",
            "/items/<name>",
            "/items/<int:id>",
            "/items/new",
            "/items/<name>/edit",
        ]
        .iter()
        .map(|r| Rule::parse(r).unwrap())
        .collect();
        rules.sort_by(|a, b| a.precedence(b));
        let order: Vec<&str> = rules.iter().map(Rule::text).collect();
        assert_eq!(
            order,
            [
                "/items/new",
                "/items/<name>/edit",
                "/items/<int:id>",
                "/items/<name>",
                "/items/<path:rest>"
            ]
        );
    }
}
