//! A JSON position index: where each JSON path's key and value start in the source text.
//!
//! serde gives us typed values without positions, so after deserializing (or failing to) we
//! scan the text once more and record, for every object member and array element, its path
//! (`network[1].mac`, the same spelling [`crate::Problem::path`] uses) and its byte span. The
//! scanner never panics: on malformed text it stops and keeps what it has, with unfinished
//! spans running to the end of the text.

use std::collections::HashMap;

/// A 1-based line and 1-based byte column, the convention serde_json uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

/// One member (`"key": value`) or array element, with byte offsets into the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// Start of the key's opening quote; `None` for array elements and the root.
    pub key_start: Option<usize>,
    pub value_start: usize,
    /// One past the value's last byte.
    pub end: usize,
}

impl Entry {
    fn start(&self) -> usize {
        self.key_start.unwrap_or(self.value_start)
    }
}

/// Maps JSON paths to positions for one source text.
#[derive(Debug, Clone)]
pub struct PositionIndex {
    line_starts: Vec<usize>,
    entries: Vec<Entry>,
    by_path: HashMap<String, usize>,
}

/// serde_json refuses to nest deeper than 128; stopping at the same depth keeps the recursion
/// bounded on hostile input.
const MAX_DEPTH: usize = 128;

impl PositionIndex {
    /// Scans `text` once.
    pub fn build(text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        let mut scanner = Scanner {
            b: text.as_bytes(),
            i: 0,
            entries: Vec::new(),
        };
        // A scan error just means the index is partial; serde reports the error itself.
        let _ = scanner.value(String::new(), None, 0);
        let mut by_path = HashMap::new();
        for (n, e) in scanner.entries.iter().enumerate() {
            // Keep the first occurrence of a duplicated key.
            by_path.entry(e.path.clone()).or_insert(n);
        }
        PositionIndex {
            line_starts,
            entries: scanner.entries,
            by_path,
        }
    }

    /// Every recorded member and element, in text order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.by_path.get(path).map(|&n| &self.entries[n])
    }

    /// Where the value at `path` starts, if the text has that path.
    pub fn value_pos(&self, path: &str) -> Option<Pos> {
        self.entry(path).map(|e| self.pos_of(e.value_start))
    }

    /// Where the key of `path` starts (the opening quote), if it is an object member.
    pub fn key_pos(&self, path: &str) -> Option<Pos> {
        self.entry(path)
            .and_then(|e| e.key_start)
            .map(|k| self.pos_of(k))
    }

    /// The value position of `path`, or of its nearest ancestor present in the text (a field
    /// left to its default has no position of its own), or 1:1.
    pub fn locate(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.value_pos(p) {
                return pos;
            }
            match parent_path(p) {
                Some(parent) => p = parent,
                None => return Pos { line: 1, column: 1 },
            }
        }
    }

    /// The innermost entry whose span (key included) contains byte `offset`. With
    /// `touching_end`, an entry that ends right at `offset` counts too: serde_json reports some
    /// errors at the byte after the value it just consumed.
    pub fn innermost_at(&self, offset: usize, touching_end: bool) -> Option<&Entry> {
        // Nested spans start no earlier than their parents, and entries are pushed parent
        // first, so the containing entry with the greatest start (last on ties) is innermost.
        self.entries
            .iter()
            .filter(|e| e.start() <= offset && (offset < e.end || touching_end && offset == e.end))
            .max_by_key(|e| e.start())
    }

    /// Line and column of byte `offset`.
    pub fn pos_of(&self, offset: usize) -> Pos {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        Pos {
            line,
            column: offset - self.line_starts[line - 1] + 1,
        }
    }

    /// Byte offset of a line/column as serde_json reports it (column 0 means line start).
    pub fn offset_of(&self, pos: Pos) -> usize {
        let line = pos.line.clamp(1, self.line_starts.len());
        self.line_starts[line - 1] + pos.column.saturating_sub(1)
    }
}

/// `network[1].mac` -> `network[1]` -> `network` -> `` -> None.
pub fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

/// Appends an object key to a path.
pub fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    entries: Vec<Entry>,
}

/// The text is not JSON past this point.
struct Malformed;

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), Malformed> {
        self.skip_ws();
        if self.peek() != Some(c) {
            return Err(Malformed);
        }
        self.i += 1;
        Ok(())
    }

    fn value(
        &mut self,
        path: String,
        key_start: Option<usize>,
        depth: usize,
    ) -> Result<(), Malformed> {
        if depth > MAX_DEPTH {
            return Err(Malformed);
        }
        self.skip_ws();
        let n = self.entries.len();
        self.entries.push(Entry {
            path,
            key_start,
            value_start: self.i,
            end: self.b.len(),
        });
        match self.peek().ok_or(Malformed)? {
            b'{' => self.object(n, depth)?,
            b'[' => self.array(n, depth)?,
            b'"' => {
                self.string()?;
            }
            _ => self.scalar()?,
        }
        self.entries[n].end = self.i;
        Ok(())
    }

    fn object(&mut self, n: usize, depth: usize) -> Result<(), Malformed> {
        self.i += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            let key_start = self.i;
            if self.peek() != Some(b'"') {
                return Err(Malformed);
            }
            let key = self.string()?;
            self.expect(b':')?;
            let path = join_key(&self.entries[n].path, &key);
            self.value(path, Some(key_start), depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Malformed),
            }
        }
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<(), Malformed> {
        self.i += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        for index in 0.. {
            let path = format!("{}[{index}]", self.entries[n].path);
            self.value(path, None, depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Malformed),
            }
        }
        Ok(())
    }

    /// Consumes a string starting at its opening quote and returns its decoded contents.
    fn string(&mut self) -> Result<String, Malformed> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or(Malformed)?;
            self.i += 1;
            match c {
                b'"' => return Ok(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => self.escape(&mut out)?,
                _ => out.push(c),
            }
        }
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), Malformed> {
        let c = self.peek().ok_or(Malformed)?;
        self.i += 1;
        let decoded = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => self.unicode_escape()?,
            _ => return Err(Malformed),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(decoded.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }

    /// After `\u`: four hex digits, possibly a surrogate pair `\uD83D\uDE00`.
    fn unicode_escape(&mut self) -> Result<char, Malformed> {
        let hi = self.hex4()?;
        if !(0xD800..0xDC00).contains(&hi) {
            return Ok(char::from_u32(hi).unwrap_or(char::REPLACEMENT_CHARACTER));
        }
        if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
            return Ok(char::REPLACEMENT_CHARACTER);
        }
        self.i += 2;
        let lo = self.hex4()?;
        let code = 0x10000 + ((hi - 0xD800) << 10) + lo.wrapping_sub(0xDC00);
        Ok(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    fn hex4(&mut self) -> Result<u32, Malformed> {
        let digits = self.b.get(self.i..self.i + 4).ok_or(Malformed)?;
        let s = std::str::from_utf8(digits).map_err(|_| Malformed)?;
        let v = u32::from_str_radix(s, 16).map_err(|_| Malformed)?;
        self.i += 4;
        Ok(v)
    }

    /// Numbers, `true`, `false`, `null`: anything up to the next delimiter.
    fn scalar(&mut self) -> Result<(), Malformed> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                break;
            }
            self.i += 1;
        }
        if self.i == start {
            return Err(Malformed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "{\n  \"name\": \"vm1\",\n  \"network\": [\n    {\"tap\": \"t\\\"0\", \"mac\": \"02:00:00:00:00:01\"},\n    { \"mac\" :\n      \"x\" }\n  ],\n  \"k\\u00e9y\": {\"a\": [1, [2, 3]]}\n}\n";

    #[test]
    fn build_when_nested_objects_and_arrays_then_values_located() {
        let idx = PositionIndex::build(TEXT);
        assert_eq!(idx.value_pos(""), Some(Pos { line: 1, column: 1 }));
        assert_eq!(
            idx.value_pos("name"),
            Some(Pos {
                line: 2,
                column: 11
            })
        );
        assert_eq!(idx.key_pos("name"), Some(Pos { line: 2, column: 3 }));
        assert_eq!(
            idx.value_pos("network"),
            Some(Pos {
                line: 3,
                column: 14
            })
        );
        assert_eq!(
            idx.value_pos("network[0]"),
            Some(Pos { line: 4, column: 5 })
        );
        assert_eq!(
            idx.value_pos("network[0].tap"),
            Some(Pos {
                line: 4,
                column: 13
            })
        );
        // The escaped quote inside the tap string must not end the string early.
        assert_eq!(
            idx.value_pos("network[0].mac"),
            Some(Pos {
                line: 4,
                column: 28
            })
        );
        assert_eq!(
            idx.value_pos("network[1].mac"),
            Some(Pos { line: 6, column: 7 })
        );
        assert_eq!(
            idx.value_pos("kéy.a[1][0]"),
            Some(Pos {
                line: 8,
                column: 26
            })
        );
        assert_eq!(idx.value_pos("nope"), None);
    }

    #[test]
    fn locate_when_path_absent_then_nearest_ancestor() {
        let idx = PositionIndex::build(TEXT);
        assert_eq!(idx.locate("network[1].tap"), Pos { line: 5, column: 5 });
        assert_eq!(
            idx.locate("storage.keep_snapshots"),
            Pos { line: 1, column: 1 }
        );
    }

    #[test]
    fn innermost_at_when_offset_in_value_then_deepest_entry() {
        let idx = PositionIndex::build(TEXT);
        let off = idx.offset_of(Pos { line: 6, column: 8 });
        assert_eq!(idx.innermost_at(off, false).unwrap().path, "network[1].mac");
        let off = idx.offset_of(Pos { line: 5, column: 5 });
        assert_eq!(idx.innermost_at(off, false).unwrap().path, "network[1]");
        // Just past the closing quote of the tap value, before the comma.
        let off = idx.offset_of(Pos {
            line: 4,
            column: 19,
        });
        assert_eq!(idx.innermost_at(off, false).unwrap().path, "network[0]");
        assert_eq!(idx.innermost_at(off, true).unwrap().path, "network[0].tap");
    }

    #[test]
    fn build_when_text_malformed_then_partial_index_without_panic() {
        for text in [
            "",
            "{",
            "{\"a\": [1, 2",
            "{\"a\" 1}",
            "{\"a\": \"\\u12",
            "[[[[",
            "\"\\",
            "{\"a\":}",
        ] {
            let idx = PositionIndex::build(text);
            // Unfinished spans run to the end of the text.
            assert!(
                idx.entries().iter().all(|e| e.end <= text.len()),
                "{text:?}"
            );
        }
        let idx = PositionIndex::build("{\"a\": 1, \"b\": [1, }");
        assert_eq!(idx.value_pos("a"), Some(Pos { line: 1, column: 7 }));
        assert!(idx.value_pos("b").is_some());
    }

    #[test]
    fn build_when_nesting_exceeds_limit_then_stops() {
        let text = "[".repeat(100_000);
        let idx = PositionIndex::build(&text);
        assert!(idx.entries().len() <= MAX_DEPTH + 2);
    }

    #[test]
    fn parent_path_when_walked_then_reaches_root() {
        assert_eq!(parent_path("network[1].mac"), Some("network[1]"));
        assert_eq!(parent_path("network[1]"), Some("network"));
        assert_eq!(parent_path("network"), Some(""));
        assert_eq!(parent_path(""), None);
    }
}
