//! nats-server's configuration format, read the way nats-server reads it (conf/lex.go and
//! conf/parse.go of nats-io/nats-server): JSON and more. Keys and values are separated by `=`,
//! `:` or white space; entries end at a new line, `,` or `;`; strings may be unquoted, `'single'`
//! (raw) or `"double"` (escapes `\xXX \t \n \r \" \\`) or a `(` block `)`; `#` and `//` comments;
//! `true/false/yes/no/on/off`; integers with size suffixes (`1k`, `1MB`, `1GiB`); floats;
//! Zulu datetimes; `$NAME` variables, looked up in the enclosing maps (keys set before the
//! reference, this file only) and then in the environment; `include PATH`, whose keys join the
//! map it stands in, relative to the including file.
//!
//! Two steps: nom parses a file into syntax, then evaluation resolves variables and includes
//! into [`Node`]s that know the file, line and column they came from. Both are bounded
//! (nesting, include depth, values after variable expansion), so no input exhausts the stack.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nom::bytes::complete::{tag, take_till, take_while, take_while1};
use nom::character::complete::{char, digit0, digit1, one_of};
use nom::combinator::{opt, recognize};
use nom::error::{ErrorKind, ParseError};
use nom::{IResult, Parser};

use super::ImportError;

/// Arrays and maps nested deeper than this are refused (also after variable expansion).
const MAX_NESTING: usize = 64;
/// Includes nested deeper than this are refused.
const MAX_INCLUDE_DEPTH: usize = 16;
/// Values after variable expansion (a variable holding a map copies it).
const MAX_VALUES: usize = 100_000;

/// Where a value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file (the configuration given, or an included file).
    pub file: Arc<Path>,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A configuration value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(String),
    Bool(bool),
    Integer(i64),
    Float(f64),
    /// `2006-01-02T15:04:05Z`, as written.
    Datetime(String),
    Array(Vec<Node>),
    Map(Map),
    /// A `$variable` that no enclosing key and no environment variable defines. nats-server
    /// refuses the file then; the import refuses it only where the value is read, so that a
    /// configuration whose passwords come from the environment imports anywhere.
    Undefined(String),
}

/// A value and where it was written (for a variable reference: where the variable was defined).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub at: Location,
    /// Arrays and maps inside it, at the deepest.
    depth: usize,
}

/// A map: keys as written (nats-server's options are case-insensitive; [`super::convert`]
/// lower-cases them), a later key replacing an earlier one as in nats-server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map {
    entries: Vec<Entry>,
}

/// One key of a map.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_at: Location,
    pub value: Node,
    /// The key was referenced as a `$variable`: nats-server then does not report it as an
    /// unknown option of the block that defines it.
    pub used_as_variable: bool,
}

impl Map {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    fn insert(&mut self, entry: Entry) {
        match self.entries.iter_mut().find(|old| old.key == entry.key) {
            Some(old) => *old = entry,
            None => self.entries.push(entry),
        }
    }
}

/// Files and environment variables, as the parser reads them.
pub trait Inputs {
    /// The text of a configuration file (the one given, or an include).
    fn read_file(&self, path: &Path) -> std::io::Result<String>;
    /// An environment variable, for a `$NAME` no enclosing map defines.
    fn env_var(&self, name: &str) -> Option<String>;
}

/// The file system and the process environment.
pub struct SystemInputs;

impl Inputs for SystemInputs {
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn env_var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Files and environment variables held in memory (tests, fuzzing, other tools).
#[derive(Clone, Debug, Default)]
pub struct MemoryInputs {
    pub files: BTreeMap<PathBuf, String>,
    pub env: BTreeMap<String, String>,
}

impl Inputs for MemoryInputs {
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn env_var(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
}

/// Reads and evaluates the configuration file at `path` and its includes.
pub fn parse_file(path: &Path, inputs: &dyn Inputs) -> Result<Map, ImportError> {
    Evaluator {
        inputs,
        values: 0,
        including: Vec::new(),
    }
    .file(path, None)
}

// ---------------------------------------------------------------------------------------------
// Syntax (nom)

/// A position in a file as the length of the input left from there: nom's inputs are suffixes
/// of the file, and [`LineIndex`] turns this into a line and column.
#[derive(Clone, Copy, Debug)]
struct Mark(usize);

fn mark(input: &str) -> Mark {
    Mark(input.len())
}

#[derive(Debug)]
struct Statement {
    at: Mark,
    kind: StatementKind,
}

#[derive(Debug)]
enum StatementKind {
    Assign { key: String, value: Syntax },
    Include(String),
}

#[derive(Debug)]
struct Syntax {
    at: Mark,
    kind: SyntaxKind,
}

#[derive(Debug)]
enum SyntaxKind {
    /// Never an array or a map.
    Scalar(Value),
    Variable(String),
    Array(Vec<Syntax>),
    Map(Vec<Statement>),
}

/// A syntax error: where (the input left) and why.
#[derive(Debug)]
struct SyntaxError<'a> {
    rest: &'a str,
    reason: Cow<'static, str>,
}

impl<'a> ParseError<&'a str> for SyntaxError<'a> {
    fn from_error_kind(rest: &'a str, _: ErrorKind) -> Self {
        SyntaxError {
            rest,
            reason: format!("unexpected {}", found(rest)).into(),
        }
    }

    fn append(_: &'a str, _: ErrorKind, other: Self) -> Self {
        other
    }
}

type PResult<'a, T> = IResult<&'a str, T, SyntaxError<'a>>;

fn failure<'a, T>(rest: &'a str, reason: impl Into<Cow<'static, str>>) -> PResult<'a, T> {
    Err(nom::Err::Failure(SyntaxError {
        rest,
        reason: reason.into(),
    }))
}

/// What the input starts with, for an error message.
fn found(rest: &str) -> String {
    match rest.chars().next() {
        None => "end of file".to_owned(),
        Some('\n' | '\r') => "a new line".to_owned(),
        Some(c) => format!("{c:?}"),
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn is_newline(c: char) -> bool {
    c == '\n' || c == '\r'
}

/// Where an unquoted string ends (the character is not part of it).
fn ends_unquoted(c: char) -> bool {
    is_newline(c) || is_blank(c) || matches!(c, ';' | ',' | ']' | '}')
}

/// Where a number ends; any other character makes it an unquoted string (`5s`).
fn ends_number(c: char) -> bool {
    is_newline(c) || is_blank(c) || matches!(c, ';' | ',' | '}')
}

fn is_number_suffix(c: char) -> bool {
    matches!(c.to_ascii_lowercase(), 'k' | 'm' | 'g' | 't' | 'p' | 'e')
}

fn blanks(input: &str) -> &str {
    input.trim_start_matches(is_blank)
}

fn comment(input: &str) -> PResult<'_, &str> {
    recognize((
        nom::branch::alt((tag("#"), tag("//"))),
        take_till(is_newline),
    ))
    .parse(input)
}

/// White space (new lines too) and comments.
fn gaps(mut input: &str) -> &str {
    loop {
        let after = input.trim_start_matches(char::is_whitespace);
        match comment(after) {
            Ok((rest, _)) => input = rest,
            Err(_) => return after,
        }
    }
}

/// Blanks and a comment after a value; what must follow is up to the caller.
fn after_value(input: &str) -> &str {
    let rest = blanks(input);
    comment(rest).map_or(rest, |(rest, _)| rest)
}

/// A whole file: top-level statements, optionally inside `{ }` (JSON), which nest.
fn document(mut input: &str) -> PResult<'_, Vec<Statement>> {
    let mut statements = Vec::new();
    let mut blocks = 0usize;
    loop {
        input = gaps(input);
        match input.chars().next() {
            None => return Ok((input, statements)),
            Some('{') => {
                blocks += 1;
                input = &input[1..];
                continue;
            }
            Some('}') if blocks > 0 => {
                blocks -= 1;
                input = &input[1..];
                continue;
            }
            _ => {}
        }
        let (rest, statement) = statement(input, Context::Top, 0)?;
        statements.push(statement);
        let rest = after_value(rest);
        match rest.chars().next() {
            None => return Ok((rest, statements)),
            Some('\n' | '\r' | ';' | ',') => input = &rest[1..],
            Some('}') => {
                blocks = blocks.saturating_sub(1);
                input = &rest[1..];
            }
            _ => {
                return failure(
                    rest,
                    format!(
                        "expected a new line, ',' or ';' after the value, found {}",
                        found(rest)
                    ),
                )
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// The file's top level (also inside `{ }` blocks there).
    Top,
    /// Inside a map value.
    Map,
}

/// `key value`, `key = value`, `key: value`, or `include PATH`.
fn statement(input: &str, context: Context, depth: usize) -> PResult<'_, Statement> {
    let at = mark(input);
    if input.starts_with(['=', ':']) {
        return failure(input, "a key separator without a key");
    }
    let (rest, (key, bare)) = key(input)?;
    if bare && key.eq_ignore_ascii_case("include") && rest.starts_with(char::is_whitespace) {
        let (rest, path) = include_path(rest)?;
        return Ok((
            rest,
            Statement {
                at,
                kind: StatementKind::Include(path.to_owned()),
            },
        ));
    }
    let rest = rest.trim_start_matches(char::is_whitespace);
    let (rest, separator) = opt(one_of("=:")).parse(rest)?;
    let rest = match (separator, context) {
        (None, _) => rest,
        // At the top level a value must start on the separator's line.
        (Some(_), Context::Top) => blanks(rest),
        (Some(_), Context::Map) => rest.trim_start_matches(char::is_whitespace),
    };
    if rest.is_empty() || (context == Context::Map && rest.starts_with([',', '}'])) {
        return failure(rest, format!("key {key:?} has no value"));
    }
    let (rest, value) = value(rest, depth)?;
    Ok((
        rest,
        Statement {
            at,
            kind: StatementKind::Assign {
                key: key.to_owned(),
                value,
            },
        },
    ))
}

/// A key: quoted (no escapes) or bare (up to white space or a separator); `true` if bare.
fn key(input: &str) -> PResult<'_, (&str, bool)> {
    match input.chars().next() {
        Some(quote @ ('"' | '\'')) => {
            let (rest, text) = quoted(input, quote, "key")?;
            Ok((rest, (text, false)))
        }
        _ => {
            let (rest, text) =
                take_while1(|c: char| !c.is_whitespace() && c != '=' && c != ':')(input)?;
            Ok((rest, (text, true)))
        }
    }
}

/// Text between two `quote`s, taken as it is.
fn quoted<'a>(input: &'a str, quote: char, what: &str) -> PResult<'a, &'a str> {
    let (body, _) = char(quote)(input)?;
    let (rest, text) = take_till(|c| c == quote)(body)?;
    match rest.strip_prefix(quote) {
        Some(rest) => Ok((rest, text)),
        None => failure(input, format!("unterminated {what} (no closing {quote})")),
    }
}

fn include_path(input: &str) -> PResult<'_, &str> {
    let input = blanks(input);
    match input.chars().next() {
        Some(quote @ ('"' | '\'')) => quoted(input, quote, "include path"),
        Some(c)
            if !matches!(c, '[' | '{' | '(' | '-' | '\\')
                && !c.is_ascii_digit()
                && !is_newline(c) =>
        {
            let (rest, path) =
                take_till(|c| is_newline(c) || is_blank(c) || matches!(c, ';' | '}' | '\''))(
                    input,
                )?;
            Ok((rest.strip_prefix('\'').unwrap_or(rest), path))
        }
        _ => failure(
            input,
            format!("expected an include path, found {}", found(input)),
        ),
    }
}

fn value(input: &str, depth: usize) -> PResult<'_, Syntax> {
    match input.chars().next() {
        Some('[') => array(input, depth + 1),
        Some('{') => map(input, depth + 1),
        Some('"') => double_quoted(input),
        Some('\'') => {
            let (rest, text) = quoted(input, '\'', "string")?;
            Ok((rest, scalar(input, Value::String(text.to_owned()))))
        }
        Some('(') => block_string(input),
        Some('-') => negative_number(input),
        Some(c) if c.is_ascii_digit() => number(input),
        Some('.') => failure(input, "floats must start with a digit"),
        Some('\n' | '\r') => failure(input, "expected a value, found a new line"),
        None => failure(input, "expected a value, found end of file"),
        Some(_) => unquoted(input),
    }
}

fn scalar(start: &str, value: Value) -> Syntax {
    Syntax {
        at: mark(start),
        kind: SyntaxKind::Scalar(value),
    }
}

/// How an array or a map is written.
struct Brackets {
    open: char,
    close: char,
    what: &'static str,
    name: &'static str,
    /// Characters that cannot start an item.
    refused: &'static [char],
    /// What may end an item (besides `close`).
    separators: &'static [char],
}

const ARRAY: Brackets = Brackets {
    open: '[',
    close: ']',
    what: "an array",
    name: "array",
    refused: &[',', '/'],
    separators: &[',', '\n', '\r'],
};

const MAP: Brackets = Brackets {
    open: '{',
    close: '}',
    what: "a map",
    name: "map",
    refused: &[']'],
    separators: &[',', ';', '\n', '\r'],
};

/// The items of an array or a map, each read by `item`.
fn bracketed<'a, T>(
    input: &'a str,
    depth: usize,
    brackets: &Brackets,
    mut item: impl FnMut(&'a str) -> PResult<'a, T>,
) -> PResult<'a, Vec<T>> {
    if depth > MAX_NESTING {
        return failure(
            input,
            format!("arrays and maps nested deeper than {MAX_NESTING}"),
        );
    }
    let (mut rest, _) = char(brackets.open)(input)?;
    let mut items = Vec::new();
    loop {
        rest = gaps(rest);
        match rest.chars().next() {
            Some(c) if c == brackets.close => return Ok((&rest[1..], items)),
            Some(c) if brackets.refused.contains(&c) => {
                return failure(
                    rest,
                    format!("unexpected {} in {}", found(rest), brackets.what),
                )
            }
            None => {
                return failure(
                    input,
                    format!(
                        "unterminated {} (no closing {})",
                        brackets.name, brackets.close
                    ),
                )
            }
            _ => {}
        }
        let (after, parsed) = item(rest)?;
        items.push(parsed);
        let after = after_value(after);
        match after.chars().next() {
            Some(c) if c == brackets.close => return Ok((&after[1..], items)),
            Some(c) if brackets.separators.contains(&c) => rest = &after[1..],
            _ => {
                return failure(
                    after,
                    format!(
                        "expected ',' or '{}' after {} value, found {}",
                        brackets.close,
                        brackets.what,
                        found(after)
                    ),
                )
            }
        }
    }
}

fn array(input: &str, depth: usize) -> PResult<'_, Syntax> {
    let (rest, items) = bracketed(input, depth, &ARRAY, |item| value(item, depth))?;
    let kind = SyntaxKind::Array(items);
    Ok((
        rest,
        Syntax {
            at: mark(input),
            kind,
        },
    ))
}

fn map(input: &str, depth: usize) -> PResult<'_, Syntax> {
    let (rest, statements) = bracketed(input, depth, &MAP, |item| {
        statement(item, Context::Map, depth)
    })?;
    let kind = SyntaxKind::Map(statements);
    Ok((
        rest,
        Syntax {
            at: mark(input),
            kind,
        },
    ))
}

/// After a `\`: the bytes it stands for.
fn escape(input: &str) -> PResult<'_, Vec<u8>> {
    let invalid = || {
        failure(
            input,
            "invalid escape: only \\xXX, \\t, \\n, \\r, \\\" and \\\\ are allowed",
        )
    };
    let Some(code) = input[1..].chars().next() else {
        return invalid();
    };
    let byte = match code {
        't' => b'\t',
        'n' => b'\n',
        'r' => b'\r',
        '"' => b'"',
        '\\' => b'\\',
        'x' => {
            let hex = input
                .get(2..4)
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
            return match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                Some(byte) => Ok((&input[4..], vec![byte])),
                None => failure(input, "expected two hexadecimal digits after \\x"),
            };
        }
        _ => return invalid(),
    };
    Ok((&input[2..], vec![byte]))
}

fn utf8<'a>(start: &'a str, bytes: Vec<u8>) -> Result<String, nom::Err<SyntaxError<'a>>> {
    String::from_utf8(bytes).map_err(|_| {
        nom::Err::Failure(SyntaxError {
            rest: start,
            reason: "the string is not UTF-8 after its \\x escapes".into(),
        })
    })
}

fn double_quoted(input: &str) -> PResult<'_, Syntax> {
    let mut rest = &input[1..];
    let mut bytes = Vec::new();
    loop {
        let (after, chunk) = take_till(|c| c == '"' || c == '\\')(rest)?;
        bytes.extend_from_slice(chunk.as_bytes());
        match after.chars().next() {
            Some('"') => {
                let text = utf8(input, bytes)?;
                return Ok((&after[1..], scalar(input, Value::String(text))));
            }
            Some(_) => {
                let (after, escaped) = escape(after)?;
                bytes.extend(escaped);
                rest = after;
            }
            None => return failure(input, "unterminated string (no closing \")"),
        }
    }
}

/// An unquoted string, a boolean or a `$variable` (escapes make it a string).
fn unquoted(input: &str) -> PResult<'_, Syntax> {
    let mut rest = input;
    let mut bytes = Vec::new();
    let mut escaped = false;
    loop {
        let (after, chunk) = take_till(|c| c == '\\' || c == '\'' || ends_unquoted(c))(rest)?;
        bytes.extend_from_slice(chunk.as_bytes());
        match after.chars().next() {
            Some('\\') => {
                let (after, bytes_of_escape) = escape(after)?;
                bytes.extend(bytes_of_escape);
                escaped = true;
                rest = after;
            }
            // nats-server ends an unquoted string at a quote, and drops the quote.
            Some('\'') => {
                rest = &after[1..];
                break;
            }
            _ => {
                rest = after;
                break;
            }
        }
    }
    let text = utf8(input, bytes)?;
    let kind = if escaped {
        SyntaxKind::Scalar(Value::String(text))
    } else if let Some(name) = text.strip_prefix('$') {
        SyntaxKind::Variable(name.to_owned())
    } else {
        match text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => SyntaxKind::Scalar(Value::Bool(true)),
            "false" | "no" | "off" => SyntaxKind::Scalar(Value::Bool(false)),
            _ => SyntaxKind::Scalar(Value::String(text)),
        }
    };
    Ok((
        rest,
        Syntax {
            at: mark(input),
            kind,
        },
    ))
}

/// Starts with a digit: an integer, a float, an IP address (a string), a datetime, or a
/// string that starts with digits (`5s`).
fn number(input: &str) -> PResult<'_, Syntax> {
    let (rest, digits) = digit1(input)?;
    match rest.chars().next() {
        Some('-') if digits.len() == 4 => datetime(input),
        Some('-') => failure(
            input,
            "dates must be in full Zulu form (2006-01-02T15:04:05Z)",
        ),
        Some('.') => float_or_address(input, rest),
        Some(c) if is_number_suffix(c) => suffixed(input, rest),
        Some(c) if !ends_number(c) => unquoted(input),
        _ => integer(input, rest),
    }
}

fn negative_number(input: &str) -> PResult<'_, Syntax> {
    let Ok((rest, _)) = digit1::<_, SyntaxError>(&input[1..]) else {
        return failure(input, "expected a digit after '-'");
    };
    match rest.chars().next() {
        Some('.') => float_or_address(input, rest),
        Some(c) if is_number_suffix(c) => suffixed(input, rest),
        _ => integer(input, rest),
    }
}

/// `rest` starts at the `.` after the digits of `input`.
fn float_or_address<'a>(input: &'a str, rest: &'a str) -> PResult<'a, Syntax> {
    let (after, fraction) = digit0(&rest[1..])?;
    if fraction.is_empty() {
        return failure(rest, "floats need a digit after the '.'");
    }
    if after.starts_with('.') {
        let (after, _) =
            take_while(|c: char| c.is_ascii_digit() || matches!(c, '.' | ':' | '-'))(after)?;
        let text = &input[..input.len() - after.len()];
        return Ok((after, scalar(input, Value::String(text.to_owned()))));
    }
    let text = &input[..input.len() - after.len()];
    match text.parse::<f64>() {
        Ok(float) if float.is_finite() => Ok((after, scalar(input, Value::Float(float)))),
        _ => failure(input, format!("float {text:?} is out of range")),
    }
}

/// `rest` starts at a size suffix letter after the digits of `input`.
fn suffixed<'a>(input: &'a str, rest: &'a str) -> PResult<'a, Syntax> {
    let (after, _) = take_while(|c: char| matches!(c, 'b' | 'B' | 'i' | 'I'))(&rest[1..])?;
    match after.chars().next() {
        Some(c) if !ends_number(c) && !c.is_ascii_digit() => unquoted(input),
        _ => integer(input, after),
    }
}

fn integer<'a>(input: &'a str, rest: &'a str) -> PResult<'a, Syntax> {
    let text = &input[..input.len() - rest.len()];
    match integer_value(text) {
        Ok(integer) => Ok((rest, scalar(input, Value::Integer(integer)))),
        Err(reason) => failure(input, reason),
    }
}

/// nats-server's integers: digits, then an optional size suffix (k = 1000, kb/ki/kib = 1024,
/// likewise m, g, t, p, e).
fn integer_value(text: &str) -> Result<i64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '-')
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let out_of_range = || format!("integer {text:?} is out of range");
    let number: i64 = digits.parse().map_err(|_| out_of_range())?;
    let suffix = suffix.to_ascii_lowercase();
    let power = |base: i64, exponent: u32| base.checked_pow(exponent);
    let unknown_suffix = || format!("unknown size suffix in {text:?}");
    let mut letters = suffix.chars();
    let multiplier = match letters.next() {
        None => Some(1),
        Some(unit) => {
            let exponent = "kmgtpe"
                .find(unit)
                .map(|index| index as u32 + 1)
                .ok_or_else(unknown_suffix)?;
            match letters.as_str() {
                "" => power(1000, exponent),
                "b" | "i" | "ib" => power(1024, exponent),
                _ => return Err(unknown_suffix()),
            }
        }
    };
    multiplier
        .and_then(|multiplier| number.checked_mul(multiplier))
        .ok_or_else(out_of_range)
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn datetime(input: &str) -> PResult<'_, Syntax> {
    const FORM: &[u8] = b"0000-00-00T00:00:00Z";
    let matches = input.len() >= FORM.len()
        && input.as_bytes()[..FORM.len()]
            .iter()
            .zip(FORM)
            .all(|(byte, form)| match form {
                b'0' => byte.is_ascii_digit(),
                _ => byte == form,
            });
    if !matches {
        return failure(
            input,
            "expected a Zulu datetime such as 2006-01-02T15:04:05Z",
        );
    }
    let (text, rest) = input.split_at(FORM.len());
    Ok((rest, scalar(input, Value::Datetime(text.to_owned()))))
}

/// `(` text up to a line holding only `)`.
fn block_string(input: &str) -> PResult<'_, Syntax> {
    let body = &input[1..];
    let mut from = 0;
    while let Some(found_at) = body[from..].find("\n)") {
        let close = from + found_at + 1;
        let after = &body[close + 1..];
        if after.is_empty() || after.starts_with('\n') {
            let text = body[..close].to_owned();
            return Ok((after, scalar(input, Value::String(text))));
        }
        from = close;
    }
    failure(input, "unterminated block (no line holding only ')')")
}

// ---------------------------------------------------------------------------------------------
// Evaluation: variables and includes

/// Line starts of one text, for [`Mark`]s.
struct LineIndex {
    text_len: usize,
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(index, _)| index + 1))
            .collect();
        LineIndex {
            text_len: text.len(),
            starts,
        }
    }

    fn position(&self, text: &str, mark: Mark) -> (u32, u32) {
        let offset = self.text_len.saturating_sub(mark.0);
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self
            .starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let column = text
            .get(start..offset)
            .map_or(0, |prefix| prefix.chars().count());
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(column + 1).unwrap_or(u32::MAX),
        )
    }
}

/// The text being evaluated: a file, or an environment variable's value (whose values are all
/// placed at the reference).
struct Source<'t> {
    text: &'t str,
    lines: LineIndex,
    file: Arc<Path>,
    dir: PathBuf,
    placed_at: Option<Location>,
}

impl Source<'_> {
    fn location(&self, mark: Mark) -> Location {
        if let Some(at) = &self.placed_at {
            return at.clone();
        }
        let (line, column) = self.lines.position(self.text, mark);
        Location {
            file: self.file.clone(),
            line,
            column,
        }
    }
}

/// The maps being built around a value, innermost last: where `$variables` are looked up.
#[derive(Default)]
struct Scopes {
    enclosing: Vec<Map>,
    innermost: Map,
}

impl Scopes {
    fn enter(&mut self) {
        self.enclosing.push(std::mem::take(&mut self.innermost));
    }

    fn leave(&mut self) -> Map {
        let inner = std::mem::take(&mut self.innermost);
        self.innermost = self.enclosing.pop().unwrap_or_default();
        inner
    }

    fn lookup(&mut self, name: &str) -> Option<&mut Entry> {
        std::iter::once(&mut self.innermost)
            .chain(self.enclosing.iter_mut().rev())
            .find_map(|map| map.entries.iter_mut().find(|entry| entry.key == name))
    }
}

struct Evaluator<'i> {
    inputs: &'i dyn Inputs,
    values: usize,
    /// The files being read, outermost first (include cycles).
    including: Vec<PathBuf>,
}

/// `path` with `.` and `..` resolved lexically (to recognise a file included again).
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if normal.file_name().is_some() => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// Values inside a node, itself included.
fn size(node: &Node) -> usize {
    1 + match &node.value {
        Value::Array(items) => items.iter().map(size).sum(),
        Value::Map(map) => map.entries.iter().map(|entry| size(&entry.value)).sum(),
        _ => 0,
    }
}

impl Evaluator<'_> {
    fn file(&mut self, path: &Path, included_at: Option<&Location>) -> Result<Map, ImportError> {
        let refuse = |reason: String| match included_at {
            Some(at) => ImportError::at(at, "", reason),
            None => ImportError::file(path, reason),
        };
        let normal = normalize(path);
        if self.including.contains(&normal) {
            return Err(refuse(format!(
                "include cycle: {} is already being read",
                path.display()
            )));
        }
        if self.including.len() >= MAX_INCLUDE_DEPTH {
            return Err(refuse(format!(
                "includes nested deeper than {MAX_INCLUDE_DEPTH}"
            )));
        }
        let text = self
            .inputs
            .read_file(path)
            .map_err(|error| match included_at {
                Some(_) => refuse(format!(
                    "cannot read include file {}: {error}",
                    path.display()
                )),
                None => refuse(format!("cannot read: {error}")),
            })?;
        let source = Source {
            text: &text,
            lines: LineIndex::new(&text),
            file: Arc::from(path),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            placed_at: None,
        };
        let statements = syntax(&text)
            .map_err(|(mark, reason)| ImportError::at(&source.location(mark), "", reason))?;
        self.including.push(normal);
        let mut scopes = Scopes::default();
        self.statements(&statements, &source, &mut scopes, &mut Vec::new())?;
        self.including.pop();
        Ok(scopes.innermost)
    }

    /// Evaluates `statements` into the innermost scope. `environment` holds the environment
    /// variables being resolved (a variable whose value refers to itself is a cycle).
    fn statements(
        &mut self,
        statements: &[Statement],
        source: &Source,
        scopes: &mut Scopes,
        environment: &mut Vec<String>,
    ) -> Result<(), ImportError> {
        for statement in statements {
            match &statement.kind {
                StatementKind::Assign { key, value } => {
                    let value = self.value(value, source, scopes, environment)?;
                    scopes.innermost.insert(Entry {
                        key: key.clone(),
                        key_at: source.location(statement.at),
                        value,
                        used_as_variable: false,
                    });
                }
                StatementKind::Include(path) => {
                    let at = source.location(statement.at);
                    if source.placed_at.is_some() {
                        return Err(ImportError::at(
                            &at,
                            "",
                            "include in an environment variable",
                        ));
                    }
                    // Go's filepath.Join: cleaned, and an absolute include path is relative too.
                    let path = normalize(&source.dir.join(path.trim_start_matches('/')));
                    let included = self.file(&path, Some(&at))?;
                    for entry in included.entries {
                        scopes.innermost.insert(entry);
                    }
                }
            }
        }
        Ok(())
    }

    fn value(
        &mut self,
        syntax: &Syntax,
        source: &Source,
        scopes: &mut Scopes,
        environment: &mut Vec<String>,
    ) -> Result<Node, ImportError> {
        let at = source.location(syntax.at);
        let value = match &syntax.kind {
            SyntaxKind::Scalar(value) => value.clone(),
            SyntaxKind::Variable(name) => return self.variable(name, at, scopes, environment),
            SyntaxKind::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.value(item, source, scopes, environment))
                    .collect::<Result<_, _>>()?,
            ),
            SyntaxKind::Map(statements) => {
                scopes.enter();
                let evaluated = self.statements(statements, source, scopes, environment);
                let map = scopes.leave();
                evaluated?;
                Value::Map(map)
            }
        };
        self.count(1, &at)?;
        let depth = match &value {
            Value::Array(items) => 1 + items.iter().map(|item| item.depth).max().unwrap_or(0),
            Value::Map(map) => {
                1 + map
                    .entries
                    .iter()
                    .map(|entry| entry.value.depth)
                    .max()
                    .unwrap_or(0)
            }
            _ => 0,
        };
        if depth > MAX_NESTING {
            return Err(ImportError::at(
                &at,
                "",
                format!(
                    "arrays and maps nested deeper than {MAX_NESTING} (after variable expansion)"
                ),
            ));
        }
        Ok(Node { value, at, depth })
    }

    fn count(&mut self, values: usize, at: &Location) -> Result<(), ImportError> {
        self.values += values;
        if self.values > MAX_VALUES {
            return Err(ImportError::at(
                at,
                "",
                format!("more than {MAX_VALUES} values (after variable expansion)"),
            ));
        }
        Ok(())
    }

    /// nats-server's lookup: the enclosing maps, innermost first, then the environment.
    fn variable(
        &mut self,
        name: &str,
        at: Location,
        scopes: &mut Scopes,
        environment: &mut Vec<String>,
    ) -> Result<Node, ImportError> {
        // A bcrypt hash written unquoted ($2a$...) is a string, not a variable.
        if name.starts_with("2a$") {
            self.count(1, &at)?;
            let value = Value::String(format!("${name}"));
            return Ok(Node {
                value,
                at,
                depth: 0,
            });
        }
        if let Some(entry) = scopes.lookup(name) {
            entry.used_as_variable = true;
            let node = entry.value.clone();
            self.count(size(&node), &at)?;
            return Ok(node);
        }
        if environment.iter().any(|pending| pending == name) {
            return Err(ImportError::at(
                &at,
                "",
                format!("variable reference cycle for {name:?}"),
            ));
        }
        let Some(text) = self.inputs.env_var(name) else {
            self.count(1, &at)?;
            let value = Value::Undefined(name.to_owned());
            return Ok(Node {
                value,
                at,
                depth: 0,
            });
        };
        // nats-server parses the variable's value as `pk=<value>`.
        let assignment = format!("pk={text}");
        let statements = syntax(&assignment).map_err(|(_, reason)| {
            ImportError::at(
                &at,
                "",
                format!("environment variable {name:?} could not be parsed: {reason}"),
            )
        })?;
        let source = Source {
            text: &assignment,
            lines: LineIndex::new(&assignment),
            file: at.file.clone(),
            dir: PathBuf::new(),
            placed_at: Some(at.clone()),
        };
        environment.push(name.to_owned());
        let mut scope = Scopes::default();
        let evaluated = self.statements(&statements, &source, &mut scope, environment);
        environment.pop();
        evaluated?;
        scope
            .innermost
            .entries
            .into_iter()
            .find(|entry| entry.key == "pk")
            .map(|entry| entry.value)
            .ok_or_else(|| {
                ImportError::at(
                    &at,
                    "",
                    format!("environment variable {name:?} holds no value"),
                )
            })
    }
}

/// Parses a whole text; `Err` is where (a mark) and why.
fn syntax(text: &str) -> Result<Vec<Statement>, (Mark, Cow<'static, str>)> {
    match document(text) {
        Ok((_, statements)) => Ok(statements),
        Err(nom::Err::Error(error) | nom::Err::Failure(error)) => {
            Err((mark(error.rest), error.reason))
        }
        Err(nom::Err::Incomplete(_)) => Err((Mark(0), "unexpected end of file".into())),
    }
}
