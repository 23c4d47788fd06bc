//! A PowerShell reader for what connector scripts and DSC configurations contain: command
//! lines with named and positional arguments, and values (`'…'` and `"…"` strings, barewords,
//! numbers, `$true`/`$false`/`$null`, variables, comma arrays, `@(…)`, `@{…}`, `(…)`).
//!
//! It is not a PowerShell interpreter: it reads the argument syntax (quoting, backtick
//! continuations and escapes, `#` and `<# #>` comments, `-Param:value`, case-insensitive
//! names) and keeps anything it cannot evaluate (a subexpression, a variable) as such, so
//! the caller can say at which line a value could not be taken. Sans-IO: text in, values out.

/// A value as written. Numbers stay integers; barewords are strings, as in argument mode.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Str(String),
    Int(i64),
    Bool(bool),
    Null,
    List(Vec<Val>),
    /// `@{ Add = …; Remove = … }` (keys as written).
    Hash(Vec<(String, Val)>),
    /// `$name` other than `$true`, `$false`, `$null` (name without `$`).
    Var(String),
    /// A parenthesised expression that is not a plain value (`(Get-Credential)`): raw text.
    Expr(String),
}

/// `-Name value`, `-Name:value`, a switch (`-Confirm`: `Bool(true)`), or a positional value.
#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    /// The parameter name without `-`; `None` for a positional argument.
    pub name: Option<String>,
    pub value: Val,
    pub line: usize,
}

/// One command of a pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub line: usize,
    pub args: Vec<Arg>,
}

/// A statement: a pipeline of commands, or `$name = value`.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Pipeline(Vec<Command>),
    Assign {
        name: String,
        value: Val,
        line: usize,
    },
}

/// A syntax error with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Word(String),
    /// A `"…"` string that expands `$…` (raw text, quotes included).
    Expand(String),
    /// `-Name` (without `-`) and whether a `:` followed (`-Enabled:$false`).
    Param(String, bool),
    Str(String),
    Var(String),
    Comma,
    /// Statement end: `;` or a newline.
    End,
    LParen,
    RParen,
    AtParen,
    AtBrace,
    LBrace,
    RBrace,
    Pipe,
    Eq,
    /// `[string[]]`: a type cast, ignored.
    Cast,
}

#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub line: usize,
    pub start: usize,
    pub end: usize,
}

/// PowerShell also takes typographic quotes as quotes (pasted from documents).
fn single_quote(c: char) -> bool {
    matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}')
}

fn double_quote(c: char) -> bool {
    matches!(c, '"' | '\u{201C}' | '\u{201D}' | '\u{201E}')
}

fn dash(c: char) -> bool {
    matches!(c, '-' | '\u{2013}' | '\u{2014}' | '\u{2015}')
}

fn word_end(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '{' | '}' | '|' | '=' | '#')
}

/// Splits `text` into tokens. Newlines inside `(…)`, `@(…)` and after `,` or `|` do not end
/// a statement, as in PowerShell.
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, SyntaxError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut lexer = Lexer {
        text,
        chars,
        i: 0,
        line: 1,
        out: Vec::new(),
        parens: 0,
    };
    lexer.run()?;
    Ok(lexer.out)
}

struct Lexer<'a> {
    text: &'a str,
    chars: Vec<(usize, char)>,
    i: usize,
    line: usize,
    out: Vec<Token>,
    /// Depth of `(` and `@(`: newlines inside are not statement ends.
    parens: usize,
}

impl Lexer<'_> {
    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).map(|(_, c)| *c)
    }

    fn pos(&self) -> usize {
        self.chars.get(self.i).map_or(self.text.len(), |(p, _)| *p)
    }

    fn push(&mut self, tok: Tok, line: usize, start: usize) {
        let end = self.pos();
        self.out.push(Token {
            tok,
            line,
            start,
            end,
        });
    }

    fn err(&self, line: usize, reason: impl Into<String>) -> SyntaxError {
        SyntaxError {
            line,
            reason: reason.into(),
        }
    }

    fn run(&mut self) -> Result<(), SyntaxError> {
        while let Some(c) = self.peek(0) {
            let (line, start) = (self.line, self.pos());
            match c {
                '\n' => {
                    self.i += 1;
                    self.line += 1;
                    let continued = matches!(
                        self.out.last().map(|t| &t.tok),
                        Some(Tok::Comma | Tok::Pipe | Tok::Eq)
                    );
                    if self.parens == 0 && !continued {
                        self.push(Tok::End, line, start);
                    }
                }
                '`' if matches!(self.peek(1), Some('\n' | '\r')) => {
                    // Line continuation: the backtick and the line break vanish.
                    self.i += 1;
                    if self.peek(0) == Some('\r') {
                        self.i += 1;
                    }
                    if self.peek(0) == Some('\n') {
                        self.i += 1;
                        self.line += 1;
                    }
                }
                c if c.is_whitespace() => self.i += 1,
                '#' => self.skip_line_comment(),
                '<' if self.peek(1) == Some('#') => self.skip_block_comment()?,
                ';' => self.single(Tok::End),
                ',' => self.single(Tok::Comma),
                '|' => self.single(Tok::Pipe),
                '=' => self.single(Tok::Eq),
                '{' => self.single(Tok::LBrace),
                '}' => self.single(Tok::RBrace),
                '(' => {
                    self.parens += 1;
                    self.single(Tok::LParen)
                }
                ')' => {
                    self.parens = self.parens.saturating_sub(1);
                    self.single(Tok::RParen)
                }
                '@' if self.peek(1) == Some('(') => {
                    self.i += 2;
                    self.parens += 1;
                    self.push(Tok::AtParen, line, start);
                }
                '@' if self.peek(1) == Some('{') => {
                    self.i += 2;
                    self.push(Tok::AtBrace, line, start);
                }
                '[' if self.peek(1).is_some_and(|c| c.is_ascii_alphabetic()) => {
                    self.skip_cast()?;
                    self.push(Tok::Cast, line, start);
                }
                c if single_quote(c) => {
                    let s = self.single_quoted()?;
                    self.push(Tok::Str(s), line, start);
                }
                c if double_quote(c) => {
                    let tok = self.double_quoted()?;
                    self.push(tok, line, start);
                }
                '$' => {
                    self.i += 1;
                    let name = self.word(true);
                    self.push(Tok::Var(name), line, start);
                }
                c if dash(c) && self.peek(1).is_some_and(|c| c.is_ascii_alphabetic()) => {
                    self.i += 1;
                    let word = self.word(true);
                    let (name, colon) = match word.strip_suffix(':') {
                        Some(n) => (n.to_string(), true),
                        None => (word, false),
                    };
                    self.push(Tok::Param(name, colon), line, start);
                }
                _ => {
                    let w = self.word(false);
                    self.push(Tok::Word(w), line, start);
                }
            }
        }
        Ok(())
    }

    fn single(&mut self, tok: Tok) {
        let (line, start) = (self.line, self.pos());
        self.i += 1;
        self.push(tok, line, start);
    }

    /// A bareword up to whitespace or an operator. A parameter or variable name stops after
    /// a `:` (`-Enabled:$false` keeps its colon); a bareword value (`SMTP:*`) does not.
    fn word(&mut self, name: bool) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek(0) {
            if c == '`' && self.peek(1).is_some_and(|n| n != '\n' && n != '\r') {
                // An escaped character in a bareword (`a`"b` is a"b).
                s.extend(self.peek(1));
                self.i += 2;
                continue;
            }
            if word_end(c) || single_quote(c) || double_quote(c) {
                break;
            }
            s.push(c);
            self.i += 1;
            if name && c == ':' {
                break;
            }
        }
        s
    }

    fn skip_line_comment(&mut self) {
        while let Some(c) = self.peek(0) {
            if c == '\n' {
                break;
            }
            self.i += 1;
        }
    }

    fn skip_block_comment(&mut self) -> Result<(), SyntaxError> {
        let line = self.line;
        self.i += 2;
        loop {
            match self.peek(0) {
                None => return Err(self.err(line, "a <# block comment is never closed with #>")),
                Some('#') if self.peek(1) == Some('>') => {
                    self.i += 2;
                    return Ok(());
                }
                Some(c) => {
                    if c == '\n' {
                        self.line += 1;
                    }
                    self.i += 1;
                }
            }
        }
    }

    fn skip_cast(&mut self) -> Result<(), SyntaxError> {
        let line = self.line;
        let mut depth = 0;
        while let Some(c) = self.peek(0) {
            self.i += 1;
            match c {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                '\n' => break,
                _ => {}
            }
        }
        Err(self.err(line, "a [type] is never closed with ]"))
    }

    /// `'…'`: no escapes; `''` is one quote.
    fn single_quoted(&mut self) -> Result<String, SyntaxError> {
        let line = self.line;
        self.i += 1;
        let mut s = String::new();
        loop {
            match self.peek(0) {
                None => return Err(self.err(line, "a '…' string is never closed")),
                Some(c) if single_quote(c) => {
                    if self.peek(1).is_some_and(single_quote) {
                        s.push('\'');
                        self.i += 2;
                    } else {
                        self.i += 1;
                        return Ok(s);
                    }
                }
                Some(c) => {
                    if c == '\n' {
                        self.line += 1;
                    }
                    s.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// `"…"`: backtick escapes, `""` is one quote. A string that expands a `$variable` or
    /// `$(…)` cannot be evaluated here: it comes back as `Tok::Expand` (its raw text), an
    /// error only if a connector parameter uses it.
    fn double_quoted(&mut self) -> Result<Tok, SyntaxError> {
        let line = self.line;
        let start = self.pos();
        self.i += 1;
        let mut s = String::new();
        let mut expands = false;
        loop {
            match self.peek(0) {
                None => return Err(self.err(line, "a \"…\" string is never closed")),
                Some(c) if double_quote(c) => {
                    if self.peek(1).is_some_and(double_quote) {
                        s.push('"');
                        self.i += 2;
                    } else {
                        self.i += 1;
                        if expands {
                            return Ok(Tok::Expand(self.text[start..self.pos()].to_string()));
                        }
                        return Ok(Tok::Str(s));
                    }
                }
                Some('`') => {
                    let escaped = self
                        .peek(1)
                        .ok_or_else(|| self.err(line, "a string ends in a backtick"))?;
                    s.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        'a' => '\u{7}',
                        other => other,
                    });
                    self.i += 2;
                }
                Some('$')
                    if self
                        .peek(1)
                        .is_some_and(|c| c.is_alphanumeric() || c == '{' || c == '(') =>
                {
                    expands = true;
                    s.push('$');
                    self.i += 1;
                }
                Some(c) => {
                    if c == '\n' {
                        self.line += 1;
                    }
                    s.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

/// Parses a script into statements.
pub fn parse(text: &str) -> Result<Vec<Statement>, SyntaxError> {
    let tokens = tokenize(text)?;
    let mut p = Parser {
        text,
        toks: &tokens,
        i: 0,
    };
    let mut out = Vec::new();
    while p.i < p.toks.len() {
        if matches!(p.tok(), Some(Tok::End)) {
            p.i += 1;
            continue;
        }
        out.push(p.statement()?);
    }
    Ok(out)
}

/// Known switch parameters: they take no value unless written `-Switch:$value`.
const SWITCHES: [&str; 12] = [
    "confirm",
    "whatif",
    "force",
    "verbose",
    "debug",
    "custom",
    "internal",
    "internet",
    "partner",
    "asjob",
    "outvariable",
    "erroraction",
];

pub(crate) struct Parser<'a> {
    pub text: &'a str,
    pub toks: &'a [Token],
    pub i: usize,
}

impl Parser<'_> {
    pub fn tok(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.tok)
    }

    pub fn line(&self) -> usize {
        self.toks
            .get(self.i)
            .or(self.toks.last())
            .map_or(1, |t| t.line)
    }

    fn err(&self, reason: impl Into<String>) -> SyntaxError {
        SyntaxError {
            line: self.line(),
            reason: reason.into(),
        }
    }

    fn statement(&mut self) -> Result<Statement, SyntaxError> {
        let line = self.line();
        while matches!(self.tok(), Some(Tok::Cast)) {
            self.i += 1;
        }
        if let Some(Tok::Var(name)) = self.tok().cloned()
            && matches!(self.toks.get(self.i + 1).map(|t| &t.tok), Some(Tok::Eq))
        {
            self.i += 2;
            while matches!(self.tok(), Some(Tok::Cast)) {
                self.i += 1;
            }
            let value = self.value_list()?;
            self.end_of_statement()?;
            return Ok(Statement::Assign { name, value, line });
        }
        let mut commands = vec![self.command()?];
        while matches!(self.tok(), Some(Tok::Pipe)) {
            self.i += 1;
            commands.push(self.command()?);
        }
        self.end_of_statement()?;
        Ok(Statement::Pipeline(commands))
    }

    fn end_of_statement(&mut self) -> Result<(), SyntaxError> {
        match self.tok() {
            None => Ok(()),
            Some(Tok::End) => {
                self.i += 1;
                Ok(())
            }
            Some(t) => Err(self.err(format!("unexpected {} here", describe(t)))),
        }
    }

    fn command(&mut self) -> Result<Command, SyntaxError> {
        let line = self.line();
        let name = match self.tok() {
            Some(Tok::Word(w)) => w.clone(),
            Some(Tok::LBrace | Tok::RBrace) => {
                return Err(self.err(
                    "script blocks (if, foreach, function, { … }) are not supported; import a script of plain cmdlet lines",
                ));
            }
            Some(t) => {
                return Err(self.err(format!("expected a command name, found {}", describe(t))));
            }
            None => return Err(self.err("expected a command name")),
        };
        if [
            "if", "foreach", "for", "while", "function", "switch", "try", "do",
        ]
        .contains(&name.to_ascii_lowercase().as_str())
        {
            return Err(self.err(format!(
                "`{name}` blocks are not supported; import a script of plain cmdlet lines"
            )));
        }
        self.i += 1;
        let mut args = Vec::new();
        loop {
            let line = self.line();
            match self.tok().cloned() {
                None | Some(Tok::End | Tok::Pipe) => break,
                Some(Tok::Param(p, colon)) => {
                    self.i += 1;
                    let takes_value = colon
                        || (!SWITCHES.contains(&p.to_ascii_lowercase().as_str())
                            && self.value_starts());
                    let value = if takes_value {
                        self.value_list()?
                    } else {
                        Val::Bool(true)
                    };
                    args.push(Arg {
                        name: Some(p),
                        value,
                        line,
                    });
                }
                Some(_) => {
                    let value = self.value_list()?;
                    args.push(Arg {
                        name: None,
                        value,
                        line,
                    });
                }
            }
        }
        Ok(Command { name, line, args })
    }

    fn value_starts(&self) -> bool {
        matches!(
            self.tok(),
            Some(
                Tok::Word(_)
                    | Tok::Str(_)
                    | Tok::Expand(_)
                    | Tok::Var(_)
                    | Tok::LParen
                    | Tok::AtParen
                    | Tok::AtBrace
                    | Tok::Cast
            )
        )
    }

    /// A value, or several separated by commas (a PowerShell array).
    pub fn value_list(&mut self) -> Result<Val, SyntaxError> {
        let first = self.value()?;
        if !matches!(self.tok(), Some(Tok::Comma)) {
            return Ok(first);
        }
        let mut items = vec![first];
        while matches!(self.tok(), Some(Tok::Comma)) {
            self.i += 1;
            items.push(self.value()?);
        }
        Ok(Val::List(items))
    }

    fn value(&mut self) -> Result<Val, SyntaxError> {
        while matches!(self.tok(), Some(Tok::Cast)) {
            self.i += 1;
        }
        let Some(tok) = self.tok().cloned() else {
            return Err(self.err("expected a value"));
        };
        self.i += 1;
        Ok(match tok {
            Tok::Str(s) => Val::Str(s),
            Tok::Expand(raw) => Val::Expr(raw),
            Tok::Word(w) => match w.parse::<i64>() {
                Ok(n) => Val::Int(n),
                Err(_) => Val::Str(w),
            },
            Tok::Var(v) => match v.to_ascii_lowercase().as_str() {
                "true" => Val::Bool(true),
                "false" => Val::Bool(false),
                "null" => Val::Null,
                _ => Val::Var(v),
            },
            Tok::AtParen => self.array()?,
            Tok::AtBrace => self.hash()?,
            Tok::LParen => self.paren()?,
            t => {
                self.i -= 1;
                return Err(self.err(format!("expected a value, found {}", describe(&t))));
            }
        })
    }

    /// `@( … )`: elements separated by commas, `;` or newlines.
    fn array(&mut self) -> Result<Val, SyntaxError> {
        let mut items = Vec::new();
        loop {
            match self.tok() {
                None => return Err(self.err("an @( array is never closed with )")),
                Some(Tok::RParen) => {
                    self.i += 1;
                    return Ok(Val::List(items));
                }
                Some(Tok::Comma | Tok::End) => self.i += 1,
                _ => match self.value()? {
                    Val::List(inner) => items.extend(inner),
                    v => items.push(v),
                },
            }
        }
    }

    /// `@{ Key = value; … }`.
    fn hash(&mut self) -> Result<Val, SyntaxError> {
        let mut pairs = Vec::new();
        loop {
            match self.tok().cloned() {
                None => return Err(self.err("an @{ hashtable is never closed with }")),
                Some(Tok::RBrace) => {
                    self.i += 1;
                    return Ok(Val::Hash(pairs));
                }
                Some(Tok::End) => self.i += 1,
                Some(Tok::Word(k) | Tok::Str(k)) => {
                    self.i += 1;
                    if !matches!(self.tok(), Some(Tok::Eq)) {
                        return Err(self.err(format!("expected `=` after {k:?} in @{{ … }}")));
                    }
                    self.i += 1;
                    pairs.push((k, self.value_list()?));
                }
                Some(t) => {
                    return Err(self.err(format!(
                        "expected a key in @{{ … }}, found {}",
                        describe(&t)
                    )));
                }
            }
        }
    }

    /// `( … )`: a plain value list inside is that value; anything else (a command) is kept
    /// as raw text.
    fn paren(&mut self) -> Result<Val, SyntaxError> {
        let open = self.i - 1;
        let save = self.i;
        if let Ok(v) = self.value_list()
            && matches!(self.tok(), Some(Tok::RParen))
            && !matches!(v, Val::Str(ref s) if looks_like_command(s))
        {
            self.i += 1;
            return Ok(v);
        }
        self.i = save;
        let mut depth = 1;
        while let Some(t) = self.tok() {
            match t {
                Tok::LParen | Tok::AtParen => depth += 1,
                Tok::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        let start = self.toks[open].end;
                        let end = self.toks[self.i].start;
                        self.i += 1;
                        return Ok(Val::Expr(self.text[start..end].trim().to_string()));
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        Err(SyntaxError {
            line: self.toks[open].line,
            reason: "a ( is never closed with )".into(),
        })
    }
}

/// `Get-Credential`, `New-Object`: a verb-noun word is a command, not a value.
fn looks_like_command(s: &str) -> bool {
    s.split_once('-').is_some_and(|(v, n)| {
        !v.is_empty()
            && !n.is_empty()
            && v.chars().all(|c| c.is_ascii_alphabetic())
            && n.chars().next().is_some_and(|c| c.is_ascii_uppercase())
    })
}

pub(crate) fn describe(t: &Tok) -> String {
    match t {
        Tok::Word(w) => format!("`{w}`"),
        Tok::Param(p, _) => format!("the parameter -{p}"),
        Tok::Str(s) => format!("the string {s:?}"),
        Tok::Expand(s) => format!("the string {s}"),
        Tok::Var(v) => format!("${v}"),
        Tok::Comma => "`,`".into(),
        Tok::End => "the end of the line".into(),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::AtParen => "`@(`".into(),
        Tok::AtBrace => "`@{`".into(),
        Tok::LBrace => "`{`".into(),
        Tok::RBrace => "`}`".into(),
        Tok::Pipe => "`|`".into(),
        Tok::Eq => "`=`".into(),
        Tok::Cast => "a [type]".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Command {
        match parse(text).unwrap().remove(0) {
            Statement::Pipeline(mut c) => c.remove(0),
            s => panic!("{s:?}"),
        }
    }

    fn named<'a>(c: &'a Command, name: &str) -> &'a Val {
        &c.args
            .iter()
            .find(|a| {
                a.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .unwrap_or_else(|| panic!("no -{name} in {c:?}"))
            .value
    }

    fn s(x: &str) -> Val {
        Val::Str(x.into())
    }

    #[test]
    fn quoting_rules() {
        let c =
            one(r#"New-InboundConnector -Name 'It''s "ours"' -Comment "a ""b"" `$c`t" -X a`"b"#);
        assert_eq!(named(&c, "name"), &s("It's \"ours\""));
        assert_eq!(named(&c, "comment"), &s("a \"b\" $c\t"));
        assert_eq!(named(&c, "X"), &s("a\"b"));
        let c =
            one("New-InboundConnector -Name \u{2018}Smart\u{2019} -Comment \u{201C}quotes\u{201D}");
        assert_eq!(named(&c, "Name"), &s("Smart"));
        assert_eq!(named(&c, "Comment"), &s("quotes"));
    }

    #[test]
    fn arrays_switches_booleans_and_colon_form() {
        let c = one(
            "Set-InboundConnector X -SenderDomains a.com, 'b.com',\"c.com\" -RequireTls:$TRUE -Confirm -Enabled $false -SenderIPAddresses @('10.0.0.0/8'\n '192.0.2.1') -AssociatedAcceptedDomains @()",
        );
        assert_eq!(
            c.args[0],
            Arg {
                name: None,
                value: s("X"),
                line: 1
            }
        );
        assert_eq!(
            named(&c, "SenderDomains"),
            &Val::List(vec![s("a.com"), s("b.com"), s("c.com")])
        );
        assert_eq!(named(&c, "requiretls"), &Val::Bool(true));
        assert_eq!(named(&c, "Confirm"), &Val::Bool(true));
        assert_eq!(named(&c, "Enabled"), &Val::Bool(false));
        assert_eq!(
            named(&c, "SenderIPAddresses"),
            &Val::List(vec![s("10.0.0.0/8"), s("192.0.2.1")])
        );
        assert_eq!(named(&c, "AssociatedAcceptedDomains"), &Val::List(vec![]));
        assert_eq!(named(&c, "Confirm"), &Val::Bool(true));
    }

    #[test]
    fn continuations_comments_and_lines() {
        let text = "# header\n<# block\n comment #>\nNew-OutboundConnector -Name \"To X\" `\n  -SmartHosts mail.x.test, `\n  10.0.0.1 `\n  -Port 2525 # trailing\nRemove-OutboundConnector 'Old' -Confirm:$false; Set-OutboundConnector 'To X' -Enabled $false\n";
        let st = parse(text).unwrap();
        assert_eq!(st.len(), 3);
        let Statement::Pipeline(c) = &st[0] else {
            panic!()
        };
        assert_eq!(c[0].line, 4);
        assert_eq!(
            named(&c[0], "SmartHosts"),
            &Val::List(vec![s("mail.x.test"), s("10.0.0.1")])
        );
        assert_eq!(c[0].args.last().unwrap().line, 7);
        assert_eq!(named(&c[0], "Port"), &Val::Int(2525));
        let Statement::Pipeline(c) = &st[1] else {
            panic!()
        };
        assert_eq!(
            (c[0].name.as_str(), c[0].line),
            ("Remove-OutboundConnector", 8)
        );
        assert_eq!(named(&c[0], "Confirm"), &Val::Bool(false));
    }

    #[test]
    fn variables_hashtables_and_expressions() {
        let st = parse("[string[]]$ips = \"1.1.1.1\",\n  \"2.2.2.2\"\nSet-InboundConnector A -SenderIPAddresses $ips -SenderDomains @{Add='x.com'; Remove=\"y.com\"} -AuthenticationCredential (Get-Credential)").unwrap();
        assert_eq!(
            st[0],
            Statement::Assign {
                name: "ips".into(),
                value: Val::List(vec![s("1.1.1.1"), s("2.2.2.2")]),
                line: 1
            }
        );
        let Statement::Pipeline(c) = &st[1] else {
            panic!()
        };
        assert_eq!(named(&c[0], "SenderIPAddresses"), &Val::Var("ips".into()));
        assert_eq!(
            named(&c[0], "SenderDomains"),
            &Val::Hash(vec![
                ("Add".into(), s("x.com")),
                ("Remove".into(), s("y.com"))
            ])
        );
        assert_eq!(
            named(&c[0], "AuthenticationCredential"),
            &Val::Expr("Get-Credential".into())
        );
    }

    #[test]
    fn errors_have_lines() {
        let e = parse("New-InboundConnector -Name 'a\n\n").unwrap_err();
        assert_eq!(e.line, 1);
        let st = parse("\nNew-InboundConnector -Name \"Mail for $domain\"").unwrap();
        let Statement::Pipeline(c) = &st[0] else {
            panic!()
        };
        assert_eq!(
            named(&c[0], "Name"),
            &Val::Expr("\"Mail for $domain\"".into())
        );
        let e = parse("\n\nforeach ($d in $x) { New-InboundConnector $d }").unwrap_err();
        assert_eq!(e.line, 3);
    }

    #[test]
    fn address_space_barewords_stay_whole() {
        let c = one("Set-SendConnector Internet -AddressSpaces SMTP:*;1");
        // `;` ends the statement in PowerShell too: the bareword is `SMTP:*`.
        assert_eq!(named(&c, "AddressSpaces"), &s("SMTP:*"));
        let c = one("Set-SendConnector Internet -AddressSpaces 'SMTP:*;1'");
        assert_eq!(named(&c, "AddressSpaces"), &s("SMTP:*;1"));
    }
}
