//! A port of the pure-Python tokenizer of CPython 3.11 (`Lib/tokenize.py`,
//! `_tokenize`), which the reference metrics and radon run.
//!
//! It reproduces that module's regular expressions, including their quirks, rather
//! than the C tokenizer that the parser uses. A string prefix is any of `b r u f br
//! rb fr rf` in any case, and f-strings are single STRING tokens. Names are `\w+`
//! with Python's Unicode tables. A character that starts no token is an ERRORTOKEN.
//! The input must have `\n` line endings only (see `decode::normalize_newlines`).

use super::chars::{is_identifier_start, is_python_whitespace, word_char_len};

const TAB_SIZE: u32 = 8;
/// CPython's C tokenizer rejects a 201st level of open brackets (`MAXLEVEL`).
pub const MAX_BRACKET_LEVEL: i64 = 200;
/// CPython's C tokenizer rejects a 100th level of indentation (`MAXINDENT`).
pub const MAX_INDENT_LEVEL: usize = 99;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Name,
    Number,
    String,
    Op,
    Comment,
    Nl,
    Newline,
    Indent,
    Dedent,
    ErrorToken,
}

/// One token: its kind, byte range in the text and first and last line (1-based).
#[derive(Clone, Copy, Debug)]
pub struct Token {
    pub kind: TokenKind,
    pub start: usize,
    pub end: usize,
    pub start_row: u32,
    pub end_row: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizeError {
    /// `tokenize.TokenError`: the text ends inside a string or bracketed statement.
    Eof { message: &'static str, line: u32 },
    /// `IndentationError` for a dedent to a column that no enclosing block uses.
    Dedent { line: u32 },
}

impl TokenizeError {
    /// The message the reference implementation reports for this error.
    pub fn message(&self) -> String {
        match self {
            Self::Eof { message, line } => format!("tokenize failed at line {line}: {message}"),
            Self::Dedent { line } => format!(
                "tokenize failed at line {line}: unindent does not match any outer indentation level"
            ),
        }
    }
}

/// The first place where the text exceeds a nesting limit of CPython's C tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitError {
    Brackets { line: u32 },
    Indentation { line: u32 },
}

impl LimitError {
    pub fn message(&self) -> String {
        match self {
            Self::Brackets { line } => {
                format!("SyntaxError at line {line}: too many nested parentheses")
            }
            Self::Indentation { line } => {
                format!("IndentationError at line {line}: too many levels of indentation")
            }
        }
    }
}

/// The outcome of a tokenization that ran to the end of the text.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The first error `tokenize` would raise. Tokens after it are still produced,
    /// so that the nesting limits are checked on the whole text.
    pub error: Option<TokenizeError>,
    pub limit: Option<LimitError>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Single(u8),
    Triple(u8),
}

#[derive(Clone, Copy)]
struct OpenString {
    start: usize,
    start_row: u32,
    quote: Quote,
    /// A single-quoted string continued by a backslash: each further line must end
    /// with a backslash too or close the string.
    needs_continuation: bool,
}

/// Tokenize `text`, passing every token (ENDMARKER excepted) to `sink` in order.
pub fn tokenize(text: &str, sink: &mut impl FnMut(Token)) -> Outcome {
    let bytes = text.as_bytes();
    let mut outcome = Outcome::default();
    let mut line_start = 0usize;
    let mut row = 0u32;
    let mut bracket_level: i64 = 0;
    let mut continued = false;
    let mut open_string: Option<OpenString> = None;
    let mut indents: Vec<u32> = vec![0];
    let mut last_line: (usize, usize) = (0, 0);

    loop {
        let line_end = if line_start >= bytes.len() {
            line_start
        } else {
            memchr_newline(bytes, line_start).map_or(bytes.len(), |index| index + 1)
        };
        let at_eof = line_start == line_end;
        row += 1;
        let mut pos = line_start;
        let max = line_end;

        if let Some(string) = open_string {
            if at_eof {
                record(
                    &mut outcome.error,
                    TokenizeError::Eof {
                        message: "EOF in multi-line string",
                        line: string.start_row,
                    },
                );
                break;
            }
            if let Some(end) = string_tail(bytes, pos, max, string.quote) {
                sink(Token {
                    kind: TokenKind::String,
                    start: string.start,
                    end,
                    start_row: string.start_row,
                    end_row: row,
                });
                pos = end;
                open_string = None;
            } else if string.needs_continuation
                && !ends_with_backslash_newline(bytes, line_start, max)
            {
                sink(Token {
                    kind: TokenKind::ErrorToken,
                    start: string.start,
                    end: max,
                    start_row: string.start_row,
                    end_row: row,
                });
                open_string = None;
                last_line = (line_start, line_end);
                line_start = line_end;
                continue;
            } else {
                last_line = (line_start, line_end);
                line_start = line_end;
                continue;
            }
        } else if bracket_level == 0 && !continued {
            if at_eof {
                break;
            }
            let mut column = 0u32;
            while pos < max {
                match bytes[pos] {
                    b' ' => column += 1,
                    b'\t' => column = (column / TAB_SIZE + 1) * TAB_SIZE,
                    b'\x0c' => column = 0,
                    _ => break,
                }
                pos += 1;
            }
            if pos == max {
                break;
            }
            if matches!(bytes[pos], b'#' | b'\r' | b'\n') {
                if bytes[pos] == b'#' {
                    let comment_end = trim_line_end(bytes, pos, max);
                    sink(single_row(TokenKind::Comment, pos, comment_end, row));
                    pos = comment_end;
                }
                sink(single_row(TokenKind::Nl, pos, max, row));
                last_line = (line_start, line_end);
                line_start = line_end;
                continue;
            }
            if column > *indents.last().unwrap_or(&0) {
                if indents.len() > MAX_INDENT_LEVEL && outcome.limit.is_none() {
                    outcome.limit = Some(LimitError::Indentation { line: row });
                }
                indents.push(column);
                sink(single_row(TokenKind::Indent, line_start, pos, row));
            }
            while column < *indents.last().unwrap_or(&0) {
                if !indents.contains(&column) {
                    record(&mut outcome.error, TokenizeError::Dedent { line: row });
                }
                indents.pop();
                sink(single_row(TokenKind::Dedent, pos, pos, row));
            }
            if column > *indents.last().unwrap_or(&0) {
                // Only after an inconsistent dedent: keep a consistent stack so that
                // the rest of the text can still be scanned.
                indents.push(column);
            }
        } else {
            if at_eof {
                record(
                    &mut outcome.error,
                    TokenizeError::Eof {
                        message: "EOF in multi-line statement",
                        line: row,
                    },
                );
                break;
            }
            continued = false;
        }

        while pos < max {
            let start = skip_whitespace(bytes, pos, max);
            if start == max {
                break;
            }
            let byte = bytes[start];
            if byte == b'\\' && start + 1 < max && bytes[start + 1] == b'\n' {
                continued = true;
                pos = start + 2;
                continue;
            }
            if byte == b'#' {
                let end = trim_line_end(bytes, start, max);
                sink(single_row(TokenKind::Comment, start, end, row));
                pos = end;
                continue;
            }
            let string = string_start(bytes, start, max);
            if let Some((prefix_len, quote_byte)) = string {
                let quote_at = start + prefix_len;
                if is_triple(bytes, quote_at, max, quote_byte) {
                    let quote = Quote::Triple(quote_byte);
                    match string_tail(bytes, quote_at + 3, max, quote) {
                        Some(end) => {
                            sink(single_row(TokenKind::String, start, end, row));
                            pos = end;
                        }
                        None => {
                            open_string = Some(OpenString {
                                start,
                                start_row: row,
                                quote,
                                needs_continuation: false,
                            });
                            break;
                        }
                    }
                    continue;
                }
            }
            if (byte.is_ascii_digit() || byte == b'.')
                && let Some(end) = number_end(bytes, start, max)
            {
                sink(single_row(TokenKind::Number, start, end, row));
                pos = end;
                continue;
            }
            if byte == b'\n' {
                let kind = if bracket_level > 0 {
                    TokenKind::Nl
                } else {
                    TokenKind::Newline
                };
                sink(single_row(kind, start, start + 1, row));
                pos = start + 1;
                continue;
            }
            if let Some(length) = operator_len(bytes, start, max) {
                match byte {
                    b'(' | b'[' | b'{' => {
                        if bracket_level >= MAX_BRACKET_LEVEL && outcome.limit.is_none() {
                            outcome.limit = Some(LimitError::Brackets { line: row });
                        }
                        bracket_level += 1;
                    }
                    b')' | b']' | b'}' => bracket_level -= 1,
                    _ => {}
                }
                sink(single_row(TokenKind::Op, start, start + length, row));
                pos = start + length;
                continue;
            }
            if let Some((prefix_len, quote_byte)) = string {
                match single_quoted_end(bytes, start + prefix_len + 1, max, quote_byte) {
                    SingleQuoted::Closed(end) => {
                        sink(single_row(TokenKind::String, start, end, row));
                        pos = end;
                        continue;
                    }
                    SingleQuoted::Continued => {
                        open_string = Some(OpenString {
                            start,
                            start_row: row,
                            quote: Quote::Single(quote_byte),
                            needs_continuation: true,
                        });
                        break;
                    }
                    SingleQuoted::Unterminated => {}
                }
            }
            let name_end = word_end(text, start, max);
            if name_end > start {
                let kind = if is_identifier_start(text, start) {
                    TokenKind::Name
                } else {
                    TokenKind::Op
                };
                sink(single_row(kind, start, name_end, row));
                pos = name_end;
                continue;
            }
            // No pattern matches at `pos` (whitespace included, as in tokenize).
            let end = pos + utf8_len(bytes[pos]);
            sink(single_row(TokenKind::ErrorToken, pos, end, row));
            pos = end;
        }
        last_line = (line_start, line_end);
        line_start = line_end;
    }

    let (last_start, last_end) = last_line;
    if last_end > last_start
        && bytes[last_end - 1] != b'\n'
        && !starts_with_comment(text, last_start, last_end)
    {
        sink(single_row(TokenKind::Newline, last_end, last_end, row - 1));
    }
    for _ in 1..indents.len() {
        sink(single_row(TokenKind::Dedent, bytes.len(), bytes.len(), row));
    }
    outcome
}

fn record(slot: &mut Option<TokenizeError>, error: TokenizeError) {
    if slot.is_none() {
        *slot = Some(error);
    }
}

fn single_row(kind: TokenKind, start: usize, end: usize, row: u32) -> Token {
    Token {
        kind,
        start,
        end,
        start_row: row,
        end_row: row,
    }
}

fn memchr_newline(bytes: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'\n', &bytes[from..]).map(|index| from + index)
}

fn skip_whitespace(bytes: &[u8], mut pos: usize, max: usize) -> usize {
    while pos < max && matches!(bytes[pos], b' ' | b'\t' | b'\x0c') {
        pos += 1;
    }
    pos
}

/// Returns the end of a comment, which stops before the line's `\r\n` or `\n`.
fn trim_line_end(bytes: &[u8], start: usize, max: usize) -> usize {
    let mut end = max;
    while end > start && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    end
}

fn ends_with_backslash_newline(bytes: &[u8], line_start: usize, max: usize) -> bool {
    max >= line_start + 2 && bytes[max - 1] == b'\n' && bytes[max - 2] == b'\\'
}

fn starts_with_comment(text: &str, start: usize, end: usize) -> bool {
    text[start..end]
        .trim_start_matches(is_python_whitespace)
        .starts_with('#')
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Returns the prefix length and quote of a string that starts at `pos`, if any.
fn string_start(bytes: &[u8], pos: usize, max: usize) -> Option<(usize, u8)> {
    let is_quote = |index: usize| index < max && matches!(bytes[index], b'\'' | b'"');
    if is_quote(pos) {
        return Some((0, bytes[pos]));
    }
    let first = bytes[pos].to_ascii_lowercase();
    if !matches!(first, b'b' | b'r' | b'u' | b'f') {
        return None;
    }
    if is_quote(pos + 1) {
        return Some((1, bytes[pos + 1]));
    }
    if pos + 1 < max && is_quote(pos + 2) {
        let second = bytes[pos + 1].to_ascii_lowercase();
        let valid = matches!(
            (first, second),
            (b'b', b'r') | (b'r', b'b') | (b'f', b'r') | (b'r', b'f')
        );
        if valid {
            return Some((2, bytes[pos + 2]));
        }
    }
    None
}

fn is_triple(bytes: &[u8], quote_at: usize, max: usize, quote: u8) -> bool {
    quote_at + 2 < max && bytes[quote_at + 1] == quote && bytes[quote_at + 2] == quote
}

/// Finds the end of a string's tail that starts at `pos`, or None when the string
/// does not end on this line (tokenize's `endprog.match(line, pos)`).
fn string_tail(bytes: &[u8], mut pos: usize, max: usize, quote: Quote) -> Option<usize> {
    let (quote_byte, triple) = match quote {
        Quote::Single(byte) => (byte, false),
        Quote::Triple(byte) => (byte, true),
    };
    while pos < max {
        let byte = bytes[pos];
        if byte == b'\\' {
            if pos + 1 < max && bytes[pos + 1] != b'\n' {
                pos += 2;
                continue;
            }
            return None;
        }
        if byte == quote_byte {
            if !triple {
                return Some(pos + 1);
            }
            if pos + 2 < max && bytes[pos + 1] == quote_byte && bytes[pos + 2] == quote_byte {
                return Some(pos + 3);
            }
        }
        pos += 1;
    }
    None
}

enum SingleQuoted {
    Closed(usize),
    /// A backslash before the end of the line continues the string.
    Continued,
    Unterminated,
}

/// Match tokenize's `ContStr` after the opening quote of a single-quoted string.
fn single_quoted_end(bytes: &[u8], mut pos: usize, max: usize, quote: u8) -> SingleQuoted {
    while pos < max {
        match bytes[pos] {
            b'\n' => return SingleQuoted::Unterminated,
            b'\\' => {
                if pos + 1 >= max {
                    return SingleQuoted::Unterminated;
                }
                if bytes[pos + 1] == b'\n' {
                    return SingleQuoted::Continued;
                }
                pos += 2;
            }
            byte if byte == quote => return SingleQuoted::Closed(pos + 1),
            _ => pos += 1,
        }
    }
    SingleQuoted::Unterminated
}

/// Returns the end of `\w+` at `pos`, or `pos` when no word character is there.
fn word_end(text: &str, mut pos: usize, max: usize) -> usize {
    let bytes = text.as_bytes();
    loop {
        while pos < max && ASCII_WORD[usize::from(bytes[pos])] {
            pos += 1;
        }
        if pos >= max || bytes[pos] < 0x80 {
            return pos;
        }
        let length = word_char_len(text, pos);
        if length == 0 {
            return pos;
        }
        pos += length;
    }
}

/// ASCII bytes that `\w` matches: letters, digits and `_`.
static ASCII_WORD: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 128 {
        table[byte] = (byte as u8).is_ascii_alphanumeric() || byte == b'_' as usize;
        byte += 1;
    }
    table
};

/// Returns the length of the longest operator of `token.EXACT_TOKEN_TYPES` at `pos`.
fn operator_len(bytes: &[u8], pos: usize, max: usize) -> Option<usize> {
    let next = |offset: usize| {
        if pos + offset < max {
            bytes[pos + offset]
        } else {
            0
        }
    };
    let (second, third) = (next(1), next(2));
    let length = match bytes[pos] {
        b'*' | b'/' | b'<' | b'>' if second == bytes[pos] => {
            if third == b'=' {
                3
            } else {
                2
            }
        }
        b'.' if second == b'.' && third == b'.' => 3,
        b'!' | b'%' | b'&' | b'*' | b'+' | b'-' | b'/' | b':' | b'<' | b'=' | b'>' | b'@'
        | b'^' | b'|'
            if second == b'=' =>
        {
            2
        }
        b'-' if second == b'>' => 2,
        b'%' | b'&' | b'(' | b')' | b'*' | b'+' | b',' | b'-' | b'.' | b'/' | b':' | b';'
        | b'<' | b'=' | b'>' | b'@' | b'[' | b']' | b'^' | b'{' | b'|' | b'}' | b'~' => 1,
        _ => return None,
    };
    Some(length)
}

// Numbers follow tokenize's `Number = group(Imagnumber, Floatnumber, Intnumber)`:
// the first alternative that matches wins, each one greedy.

fn is_digit(bytes: &[u8], pos: usize, max: usize) -> bool {
    pos < max && bytes[pos].is_ascii_digit()
}

/// `[0-9](?:_?[0-9])*`
fn digit_part(bytes: &[u8], pos: usize, max: usize) -> Option<usize> {
    if !is_digit(bytes, pos, max) {
        return None;
    }
    let mut end = pos + 1;
    loop {
        if is_digit(bytes, end, max) {
            end += 1;
        } else if end < max && bytes[end] == b'_' && is_digit(bytes, end + 1, max) {
            end += 2;
        } else {
            return Some(end);
        }
    }
}

/// `[eE][-+]?[0-9](?:_?[0-9])*`
fn exponent(bytes: &[u8], pos: usize, max: usize) -> Option<usize> {
    if pos >= max || !matches!(bytes[pos], b'e' | b'E') {
        return None;
    }
    let mut digits = pos + 1;
    if digits < max && matches!(bytes[digits], b'+' | b'-') {
        digits += 1;
    }
    digit_part(bytes, digits, max)
}

/// Matches `Pointfloat`, returning its end without and with the optional exponent.
fn point_float(bytes: &[u8], pos: usize, max: usize) -> Option<(usize, Option<usize>)> {
    let base = match digit_part(bytes, pos, max) {
        Some(end) if end < max && bytes[end] == b'.' => {
            digit_part(bytes, end + 1, max).unwrap_or(end + 1)
        }
        _ => {
            if pos < max && bytes[pos] == b'.' {
                digit_part(bytes, pos + 1, max)?
            } else {
                return None;
            }
        }
    };
    Some((base, exponent(bytes, base, max)))
}

fn exp_float(bytes: &[u8], pos: usize, max: usize) -> Option<usize> {
    exponent(bytes, digit_part(bytes, pos, max)?, max)
}

fn is_imaginary_suffix(bytes: &[u8], pos: usize, max: usize) -> bool {
    pos < max && matches!(bytes[pos], b'j' | b'J')
}

fn number_end(bytes: &[u8], pos: usize, max: usize) -> Option<usize> {
    let first = bytes[pos];
    if !(first.is_ascii_digit() || (first == b'.' && is_digit(bytes, pos + 1, max))) {
        return None;
    }

    // Imagnumber
    if let Some(end) = digit_part(bytes, pos, max)
        && is_imaginary_suffix(bytes, end, max)
    {
        return Some(end + 1);
    }
    let point = point_float(bytes, pos, max);
    if let Some((base, with_exponent)) = point {
        let end = with_exponent.unwrap_or(base);
        if is_imaginary_suffix(bytes, end, max) {
            return Some(end + 1);
        }
    }
    let exp = exp_float(bytes, pos, max);
    if let Some(end) = exp
        && is_imaginary_suffix(bytes, end, max)
    {
        return Some(end + 1);
    }

    // Floatnumber
    if let Some((base, with_exponent)) = point {
        return Some(with_exponent.unwrap_or(base));
    }
    if exp.is_some() {
        return exp;
    }

    // Intnumber
    if first == b'0' && pos + 1 < max {
        let radix_digit: Option<fn(u8) -> bool> = match bytes[pos + 1] {
            b'x' | b'X' => Some(|b: u8| b.is_ascii_hexdigit()),
            b'b' | b'B' => Some(|b: u8| matches!(b, b'0' | b'1')),
            b'o' | b'O' => Some(|b: u8| matches!(b, b'0'..=b'7')),
            _ => None,
        };
        if let Some(is_radix_digit) = radix_digit {
            let mut end = pos + 2;
            loop {
                if end < max && is_radix_digit(bytes[end]) {
                    end += 1;
                } else if end + 1 < max && bytes[end] == b'_' && is_radix_digit(bytes[end + 1]) {
                    end += 2;
                } else {
                    break;
                }
            }
            if end > pos + 2 {
                return Some(end);
            }
        }
    }
    if first == b'0' {
        let mut end = pos + 1;
        loop {
            if end < max && bytes[end] == b'0' {
                end += 1;
            } else if end + 1 < max && bytes[end] == b'_' && bytes[end + 1] == b'0' {
                end += 2;
            } else {
                return Some(end);
            }
        }
    }
    digit_part(bytes, pos, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(TokenKind, String)> {
        let mut tokens = Vec::new();
        let outcome = tokenize(text, &mut |token| {
            tokens.push((token.kind, text[token.start..token.end].to_string()))
        });
        assert_eq!(outcome.error, None);
        tokens
    }

    #[test]
    fn numbers_split_like_tokenize() {
        let tokens = kinds("x = 0777 + 1if 1e5j .5 1_0 0x_f\n");
        let numbers: Vec<&str> = tokens
            .iter()
            .filter(|(kind, _)| *kind == TokenKind::Number)
            .map(|(_, text)| text.as_str())
            .collect();
        assert_eq!(numbers, ["0", "777", "1", "1e5j", ".5", "1_0", "0x_f"]);
    }

    #[test]
    fn string_prefixes_and_names() {
        let tokens = kinds("rb'a' xb'c' ur'd'\n");
        let kinds_only: Vec<TokenKind> = tokens.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(
            kinds_only,
            [
                TokenKind::String,
                TokenKind::Name,
                TokenKind::String,
                TokenKind::Name,
                TokenKind::String,
                TokenKind::Newline,
            ]
        );
    }

    #[test]
    fn unterminated_string_is_error_token() {
        // tokenize reports the space before the quote as an error token too.
        let mut errors = 0;
        tokenize("x = 'abc\n", &mut |token| {
            if token.kind == TokenKind::ErrorToken {
                errors += 1;
            }
        });
        assert_eq!(errors, 2);
    }

    #[test]
    fn eof_in_bracket_is_token_error() {
        let outcome = tokenize("x = (1,\n", &mut |_| {});
        assert_eq!(
            outcome.error,
            Some(TokenizeError::Eof {
                message: "EOF in multi-line statement",
                line: 2
            })
        );
    }
}
