//! A minimal JSON writer and reader for the line udev's client sends and the lines it reads back.
//!
//! udev execs `modbroker load --udev` once per uevent, so every instruction of its start-up
//! counts, and under an emulator (qemu's TCG, where each exec of a position-independent binary is
//! translated afresh) every *distinct* instruction counts. In a minimal static-pie client,
//! serde_json's typed encoder and decoder for these lines added about 2,400 distinct
//! instructions to the 4,600 of the rest (BENCHMARKS.md, section 5b). The load request and the
//! daemon's progress and `load` replies are therefore written and read with these few
//! functions, which run a few hundred.
//!
//! serde_json stays the reference. [`crate::protocol`] builds on this module, compares both in
//! its tests, and hands every line that [`Reader`] does not take (an escaped string, a float, a
//! reply to another operation, anything malformed) to serde_json, so this reader only ever
//! speeds a line up: it never decides what a line means differently.

/// Appends `s` to `out` as a JSON string, escaped exactly as serde_json escapes it: `"` and `\`
/// by a backslash, the control characters below U+0020 as `\b`, `\t`, `\n`, `\f`, `\r` or
/// `\u00XX` (lower-case hex), everything else as it is.
pub fn push_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut plain = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            b'\t' => "\\t",
            b'\n' => "\\n",
            0x0c => "\\f",
            b'\r' => "\\r",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

/// Appends `n` in decimal, without `core::fmt`.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[start..] {
        out.push(char::from(d));
    }
}

/// A cursor over one JSON text. Each method takes one value (after any whitespace) and returns
/// `None` for anything it does not take, which is also how it reports malformed input: the
/// caller then gives the whole text to serde_json.
///
/// Strings are taken only without escapes, numbers only as integers: what the daemon writes on
/// udev's path (targets, module names, outcomes, counts). Whatever else a text holds is still
/// read right by serde_json.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// The next byte after whitespace, not taken.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.pos) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.pos += 1;
        }
        None
    }

    /// Takes `byte` after whitespace.
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// Takes the literal `word` (`true`, `null`...).
    fn word(&mut self, word: &str) -> Option<()> {
        self.peek()?;
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word.as_bytes()).then(|| self.pos = end)
    }

    /// Takes `null` if it comes next: `Some(true)`; `Some(false)` when something else does.
    pub fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.word("null")?;
            return Some(true);
        }
        Some(false)
    }

    /// Takes `true` or `false`.
    pub fn bool(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.word("true").map(|()| true),
            b'f' => self.word("false").map(|()| false),
            _ => None,
        }
    }

    /// Takes a string without escapes (`None` for one with a backslash).
    pub fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        loop {
            match *self.bytes.get(self.pos)? {
                b'"' => break,
                // An escape, or a raw control character (which JSON forbids).
                b'\\' | 0..=0x1f => return None,
                _ => self.pos += 1,
            }
        }
        let text = std::str::from_utf8(&self.bytes[start..self.pos]).ok()?;
        self.pos += 1;
        Some(text)
    }

    /// Takes an integer: an optional `-`, then `0` or digits without a leading zero. A fraction
    /// or an exponent is not taken, nor a value outside `i64` and `u64`.
    pub fn int(&mut self) -> Option<i128> {
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let start = self.pos;
        let mut value: i128 = 0;
        while let Some(&b) = self.bytes.get(self.pos).filter(|b| b.is_ascii_digit()) {
            let digit = i128::from(b - b'0');
            value = value.checked_mul(10)?;
            value = if negative {
                value.checked_sub(digit)?
            } else {
                value.checked_add(digit)?
            };
            self.pos += 1;
        }
        let digits = &self.bytes[start..self.pos];
        let well_formed = !digits.is_empty() && (digits[0] != b'0' || digits.len() == 1);
        let ends = !matches!(self.bytes.get(self.pos), Some(b'.' | b'e' | b'E'));
        let in_range = i128::from(i64::MIN) <= value && value <= i128::from(u64::MAX);
        // serde_json reads `-0` as a float (it keeps the sign).
        let not_minus_zero = !(negative && value == 0);
        (well_formed && ends && in_range && not_minus_zero).then_some(value)
    }

    /// Takes an object, calling `field` with each key; `field` must take the value. A key seen
    /// twice is not taken (serde_json refuses duplicate fields of a struct).
    pub fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        let mut keys: Vec<&str> = Vec::new();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.str()?;
            if keys.contains(&key) {
                return None;
            }
            keys.push(key);
            self.eat(b':')?;
            field(self, key)?;
            if self.eat(b',').is_none() {
                return self.eat(b'}');
            }
        }
    }

    /// Takes an array, calling `item` for each element; `item` must take it.
    pub fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            item(self)?;
            if self.eat(b',').is_none() {
                return self.eat(b']');
            }
        }
    }

    /// Takes an array, each element by `item`, into a vector.
    pub fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let mut items = Vec::new();
        self.array(|r| item(r).map(|x| items.push(x)))?;
        Some(items)
    }

    /// Takes an array of strings.
    pub fn strings(&mut self) -> Option<Vec<String>> {
        self.list(|r| r.str().map(str::to_string))
    }

    /// Takes any one value (of the kinds this reader takes), for a key it does not know.
    pub fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(|r, _| r.skip()),
            b'[' => self.array(Self::skip),
            b'"' => self.str().map(drop),
            b't' | b'f' => self.bool().map(drop),
            b'n' => self.word("null"),
            _ => self.int().map(drop),
        }
    }

    /// Whether only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reader_str(text: &str) -> Option<String> {
        let mut r = Reader::new(text.as_bytes());
        let s = r.str()?.to_string();
        r.at_end().then_some(s)
    }

    fn reader_int(text: &str) -> Option<i128> {
        let mut r = Reader::new(text.as_bytes());
        let n = r.int()?;
        r.at_end().then_some(n)
    }

    proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in any::<String>()) {
            let mut out = String::new();
            push_str(&mut out, &s);
            prop_assert_eq!(&out, &serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn numbers_are_written_as_serde_json_writes_them(n in any::<u64>()) {
            let mut out = String::new();
            push_u64(&mut out, n);
            prop_assert_eq!(out, n.to_string());
        }

        #[test]
        fn a_string_taken_is_the_string_serde_json_reads(s in any::<String>()) {
            let text = serde_json::to_string(&s).unwrap();
            match reader_str(&text) {
                Some(read) => prop_assert_eq!(read, s),
                // Only an escaped string is left to serde_json.
                None => prop_assert!(text.contains('\\')),
            }
        }

        #[test]
        fn an_integer_taken_is_the_one_serde_json_reads(text in "-?[0-9]{1,21}(\\.[0-9])?") {
            let reference: Option<i128> = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.as_i64().map(i128::from).or(v.as_u64().map(i128::from)));
            if let Some(n) = reader_int(&text) {
                prop_assert_eq!(Some(n), reference);
            }
            if !text.contains('.') && reference.is_some() {
                prop_assert_eq!(reader_int(&text), reference);
            }
        }
    }

    #[test]
    fn what_is_not_taken() {
        assert_eq!(reader_int("01"), None);
        assert_eq!(reader_int("-"), None);
        assert_eq!(reader_int("-0"), None);
        assert_eq!(reader_int("1e3"), None);
        assert_eq!(reader_int("18446744073709551616"), None);
        assert_eq!(reader_int("-9223372036854775809"), None);
        assert_eq!(reader_int("18446744073709551615"), Some(u64::MAX.into()));
        assert_eq!(reader_int("-9223372036854775808"), Some(i64::MIN.into()));
        assert_eq!(reader_str("\"a\\\"b\""), None);
        assert_eq!(reader_str("\"a\u{1}b\""), None);
        assert_eq!(reader_str("\"unterminated"), None);
        let mut r = Reader::new(br#"{"a":1,"a":2}"#);
        assert_eq!(r.object(|r, _| r.skip()), None);
    }

    #[test]
    fn skips_nested_values() {
        let text = br#" { "a" : [1, {"b": null}, "c", true, false, []], "d": {} } "#;
        let mut r = Reader::new(text);
        let mut keys = Vec::new();
        assert_eq!(
            r.object(|r, key| {
                keys.push(key);
                r.skip()
            }),
            Some(())
        );
        assert!(r.at_end());
        assert_eq!(keys, ["a", "d"]);
    }
}
