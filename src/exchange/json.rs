//! A JSON reader that keeps the line of every value, for `Get-*Connector | ConvertTo-Json`
//! output: serde_json gives no positions, and an import error must name the line.
//! Sans-IO; strict JSON (RFC 8259) plus a leading byte-order mark, which Windows PowerShell's
//! `Out-File` writes.

/// A JSON value and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct JVal {
    pub v: J,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    /// The number as written (integers and decimals both occur: `Ticks`, `TotalDays`).
    Num(String),
    Str(String),
    Arr(Vec<JVal>),
    /// Members in file order.
    Obj(Vec<(String, JVal)>),
}

impl JVal {
    pub fn get(&self, key: &str) -> Option<&JVal> {
        match &self.v {
            J::Obj(m) => m
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.v {
            J::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses `text`; the error is `(line, reason)`.
pub fn parse(text: &str) -> Result<JVal, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = P {
        b: text.as_bytes(),
        i: 0,
        line: 1,
    };
    let v = p.value(0)?;
    p.ws();
    if p.i < p.b.len() {
        return Err((p.line, "unexpected text after the JSON value".into()));
    }
    Ok(v)
}

struct P<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
}

impl P<'_> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b'\n' => self.line += 1,
                b' ' | b'\t' | b'\r' => {}
                _ => break,
            }
            self.i += 1;
        }
    }

    fn err<T>(&self, reason: impl Into<String>) -> Result<T, (usize, String)> {
        Err((self.line, reason.into()))
    }

    fn value(&mut self, depth: usize) -> Result<JVal, (usize, String)> {
        if depth > 64 {
            return self.err("JSON nested more than 64 levels deep");
        }
        self.ws();
        let line = self.line;
        let v = match self.b.get(self.i) {
            None => return self.err("the JSON ends where a value was expected"),
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => J::Str(self.string()?),
            Some(b't') => self.word("true", J::Bool(true))?,
            Some(b'f') => self.word("false", J::Bool(false))?,
            Some(b'n') => self.word("null", J::Null)?,
            Some(c) if *c == b'-' || c.is_ascii_digit() => self.number(),
            Some(c) => return self.err(format!("unexpected character {:?}", *c as char)),
        };
        Ok(JVal { v, line })
    }

    fn word(&mut self, w: &str, v: J) -> Result<J, (usize, String)> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            self.err("expected true, false or null")
        }
    }

    fn number(&mut self) -> J {
        let start = self.i;
        while self
            .b
            .get(self.i)
            .is_some_and(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            self.i += 1;
        }
        J::Num(String::from_utf8_lossy(&self.b[start..self.i]).into_owned())
    }

    fn string(&mut self) -> Result<String, (usize, String)> {
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            match self.b.get(self.i) {
                None => return self.err("a string is never closed"),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).or_else(|_| self.err("a string is not UTF-8"));
                }
                Some(b'\\') => {
                    let c = *self
                        .b
                        .get(self.i + 1)
                        .ok_or((self.line, "bad escape".to_string()))?;
                    self.i += 2;
                    let ch = match c {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode()?,
                        _ => return self.err(format!("bad escape \\{}", c as char)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                Some(&c) => {
                    if c == b'\n' {
                        self.line += 1;
                    }
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, (usize, String)> {
        let s = self
            .b
            .get(self.i..self.i + 4)
            .ok_or((self.line, "bad \\u escape".to_string()))?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(s).unwrap_or("x"), 16)
            .map_err(|_| (self.line, "bad \\u escape".to_string()))
    }

    /// `\uXXXX`, with surrogate pairs (PowerShell escapes `'` `<` `>` `&` this way).
    fn unicode(&mut self) -> Result<char, (usize, String)> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) && self.b[self.i..].starts_with(b"\\u") {
            self.i += 2;
            let lo = self.hex4()?;
            0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
        } else {
            hi
        };
        char::from_u32(code).ok_or((self.line, "bad \\u escape".to_string()))
    }

    fn array(&mut self, depth: usize) -> Result<J, (usize, String)> {
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(J::Arr(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(J::Arr(items));
                }
                _ => return self.err("expected , or ] in an array"),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<J, (usize, String)> {
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(J::Obj(members));
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return self.err("expected a \"key\" in an object");
            }
            let key = self.string()?;
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return self.err("expected : after a key");
            }
            self.i += 1;
            members.push((key, self.value(depth + 1)?));
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(J::Obj(members));
                }
                _ => return self.err("expected , or } in an object"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_lines() {
        let v = parse("\u{feff}[\n {\n  \"Name\": \"a\\u0027b\",\n  \"N\": [1, -2.5e3],\n  \"X\": null\n }\n]").unwrap();
        let J::Arr(items) = &v.v else { panic!() };
        assert_eq!(items[0].line, 2);
        let name = items[0].get("name").unwrap();
        assert_eq!((name.as_str(), name.line), (Some("a'b"), 3));
        assert_eq!(
            items[0].get("N").unwrap().v,
            J::Arr(vec![
                JVal {
                    v: J::Num("1".into()),
                    line: 4
                },
                JVal {
                    v: J::Num("-2.5e3".into()),
                    line: 4
                },
            ])
        );
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("{\n\"a\": 1,\n}").unwrap_err().0, 3);
        assert_eq!(parse("[1, 2").unwrap_err().0, 1);
    }
}
