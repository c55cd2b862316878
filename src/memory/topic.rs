//! Topic routing keys as RabbitMQ matches them.
//!
//! A routing key is a list of words separated by `.`; the empty key has no words (RabbitMQ
//! splits `""` into zero words), while `a.` has two, the second empty. In a binding key `*`
//! stands for exactly one word and `#` for zero or more.

/// One word of a binding key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Any,
    /// Itself.
    Literal(String),
}

/// A compiled topic binding key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    words: Vec<Word>,
}

/// The words of a routing or binding key.
fn words(key: &str) -> impl Iterator<Item = &str> {
    // `"".split('.')` yields one empty word; RabbitMQ sees none.
    (!key.is_empty())
        .then(|| key.split('.'))
        .into_iter()
        .flatten()
}

/// True when `key` has a wildcard word and needs [`Pattern`] matching; other keys match by
/// equality.
pub(crate) fn is_pattern(key: &str) -> bool {
    words(key).any(|w| w == "*" || w == "#")
}

impl Pattern {
    /// Compiles a binding key. Consecutive `#` words collapse into one: they match the same
    /// keys.
    pub(crate) fn new(binding: &str) -> Pattern {
        let mut out: Vec<Word> = Vec::new();
        for word in words(binding) {
            let word = match word {
                "*" => Word::One,
                "#" => Word::Any,
                other => Word::Literal(other.to_owned()),
            };
            if word == Word::Any && out.last() == Some(&Word::Any) {
                continue;
            }
            out.push(word);
        }
        Pattern { words: out }
    }

    /// True when `key` matches.
    pub(crate) fn matches(&self, key: &str) -> bool {
        // reach[i]: the first i pattern words can match the key words read so far. One row of
        // the usual table, updated per key word: linear space, no backtracking blow-up.
        let n = self.words.len();
        // Binding keys are short: no allocation on the publish path for the usual ones.
        let mut stack = [false; 16];
        let mut heap = Vec::new();
        let reach: &mut [bool] = if n < stack.len() {
            &mut stack[..=n]
        } else {
            heap.resize(n + 1, false);
            &mut heap
        };
        reach[0] = true;
        close_over_any(&self.words, reach);
        for word in words(key) {
            // Right to left, so each cell still sees the previous row's left neighbour.
            for i in (0..n).rev() {
                let next = match &self.words[i] {
                    // `#` absorbs this word and stays where it is.
                    Word::Any => reach[i + 1],
                    Word::One => reach[i],
                    Word::Literal(lit) => reach[i] && lit == word,
                };
                reach[i + 1] = next;
            }
            reach[0] = false;
            close_over_any(&self.words, reach);
            if !reach.contains(&true) {
                return false;
            }
        }
        reach[n]
    }
}

/// `#` also matches zero words: whatever reaches it reaches past it.
fn close_over_any(words: &[Word], reach: &mut [bool]) {
    for i in 0..words.len() {
        if words[i] == Word::Any && reach[i] {
            reach[i + 1] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(binding: &str, key: &str) -> bool {
        Pattern::new(binding).matches(key)
    }

    #[test]
    fn literal_words_match_exactly() {
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "a.b.c"));
        assert!(!m("a.b", "a"));
        assert!(!m("a.b", "a.bc"));
        assert!(m("", ""));
        assert!(!m("", "a"));
    }

    #[test]
    fn star_is_exactly_one_word() {
        assert!(m("svc.*", "svc.method"));
        assert!(!m("svc.*", "svc"));
        assert!(!m("svc.*", "svc.a.b"));
        assert!(m("svc.*", "svc."), "an empty word is a word");
        assert!(m("*", "a"));
        assert!(!m("*", ""), "the empty key has no words");
        assert!(m("*.*", "."));
        assert!(m("*.b.*", "a.b.c"));
        assert!(!m("*.b.*", "a.x.c"));
        assert!(!m("svc.*", "other.method"));
    }

    #[test]
    fn hash_is_zero_or_more_words() {
        assert!(m("#", ""));
        assert!(m("#", "a"));
        assert!(m("#", "a.b.c"));
        assert!(m("a.#", "a"), "# matches zero words");
        assert!(m("a.#", "a.b"));
        assert!(m("a.#", "a.b.c"));
        assert!(!m("a.#", "b.a"));
        assert!(m("#.a", "a"));
        assert!(m("#.a", "x.y.a"));
        assert!(!m("#.a", "a.x"));
        assert!(m("a.#.b", "a.b"));
        assert!(m("a.#.b", "a.x.y.b"));
        assert!(!m("a.#.b", "a.x.y"));
        assert!(m("#.#", ""));
        assert!(m("a.#.#.b", "a.b"));
        assert!(m("#.b.#", "b"));
        assert!(m("#.b.#", "a.b.c"));
        assert!(!m("#.b.#", "a.c"));
    }

    #[test]
    fn stars_and_hashes_combine() {
        assert!(m("*.#", "a"));
        assert!(m("*.#", "a.b.c"));
        assert!(!m("*.#", ""));
        assert!(m("#.*", "a"));
        assert!(!m("#.*", ""));
        assert!(m("a.*.#", "a.b"));
        assert!(!m("a.*.#", "a"));
        assert!(m("#.*.c", "x.c"));
        assert!(m("#.*.c", "a.b.c"));
        assert!(!m("#.*.c", "c"));
        assert!(m("*.*.#.z", "a.b.z"));
        assert!(!m("*.*.#.z", "a.z"));
    }

    #[test]
    fn many_hashes_stay_linear() {
        let binding = "#.a.#.a.#.a.#.a.#.a.#.b";
        let key = vec!["a"; 200].join(".");
        assert!(!m(binding, &key));
        assert!(m(binding, &format!("{key}.b")));
    }

    #[test]
    fn long_binding_keys_match_too() {
        let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        let key = words.join(".");
        let mut binding = words.clone();
        binding[3] = "*".into();
        binding[30] = "#".into();
        assert!(m(&binding.join("."), &key));
        assert!(!m(&binding.join("."), &key.replace("w39", "x")));
    }

    #[test]
    fn wildcards_are_whole_words_only() {
        assert!(is_pattern("a.*"));
        assert!(is_pattern("#"));
        assert!(!is_pattern("a*.b"));
        assert!(!is_pattern("a.b#"));
        assert!(!m("a*", "ab"));
        assert!(m("a*", "a*"));
    }
}
