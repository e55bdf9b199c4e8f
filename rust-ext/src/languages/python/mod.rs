//! Python 3.11: metrics with the rules of the reference implementation
//! (`aiswa_reflector.metrics`, after radon 6.0.1), parsed with ruff's parser.

mod chars;
mod decode;
mod limits;
mod lines;
mod operands;
mod raw;
pub mod tokenizer;
mod tree;
mod unicode_tables;

use std::borrow::Cow;

use ruff_python_ast::PythonVersion;
use ruff_python_parser::{Mode, ParseOptions, parse};

use self::limits::{DepthBound, MAX_EXPRESSION_BOUND};
use self::lines::LineIndex;
use self::raw::RawCounter;
use self::tokenizer::{TokenKind, tokenize};
use super::{Language, NormalizedToken, Source};
use crate::duplicates::token_hash;
use crate::formulas::maintainability_index;
use crate::model::FileMetrics;

pub use self::decode::unencodable_text_error;

pub struct Python;

pub static PYTHON: Python = Python;

/// The message for code nested deeper than the parser allows, as the reference
/// reports CPython's RecursionError and MemoryError.
const TOO_DEEP: &str = "code is nested too deeply for the Python parser (no line reported)";

const KEYWORDS: [&str; 35] = [
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// Decode and normalize a source, or return the reference's error message.
fn source_text(source: Source<'_>) -> Result<Cow<'_, str>, String> {
    let text = match source {
        Source::Bytes(bytes) => decode::decode(bytes)?,
        Source::Text(text) => Cow::Borrowed(decode::strip_bom(text)),
    };
    let text = decode::normalize_newlines(text);
    if let Some(offset) = memchr::memchr(0, text.as_bytes()) {
        let line = memchr::memchr_iter(b'\n', &text.as_bytes()[..offset]).count() + 1;
        return Err(format!("invalid source: NUL byte at line {line}"));
    }
    Ok(text)
}

impl Language for Python {
    fn analyze(&self, path: &str, source: Source<'_>) -> FileMetrics {
        match analyze_text(path, source) {
            Ok(metrics) => metrics,
            Err(error) => FileMetrics::failed(path, error),
        }
    }

    fn duplicate_tokens(&self, source: Source<'_>) -> Option<Vec<NormalizedToken>> {
        let text = source_text(source).ok()?;
        let mut text = text.into_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut tokens = Vec::new();
        let outcome = tokenize(&text, &mut |token| {
            let value = &text[token.start..token.end];
            let normalized = match token.kind {
                TokenKind::Name if KEYWORDS.contains(&value) => value,
                TokenKind::Name => "ID",
                TokenKind::Number | TokenKind::String => "LIT",
                TokenKind::Op => value,
                TokenKind::ErrorToken => "ERR",
                TokenKind::Comment
                | TokenKind::Nl
                | TokenKind::Newline
                | TokenKind::Indent
                | TokenKind::Dedent => return,
            };
            tokens.push(NormalizedToken {
                kind: token_hash(normalized),
                line_start: token.start_row,
                line_end: token.end_row,
            });
        });
        if outcome.error.is_some() {
            return None;
        }
        Some(tokens)
    }
}

fn analyze_text(path: &str, source: Source<'_>) -> Result<FileMetrics, String> {
    let text = source_text(source)?;
    let text: &str = &text;
    let lines = LineIndex::new(text);

    let mut raw = RawCounter::new(text, &lines);
    let mut bound = DepthBound::new(text);
    let outcome = tokenize(text, &mut |token| {
        raw.add_token(&token);
        bound.add_token(text, &token);
    });
    if let Some(limit) = outcome.limit {
        return Err(limit.message());
    }
    if let Some(error) = bound.fstring_error {
        return Err(error);
    }
    if bound.max > MAX_EXPRESSION_BOUND {
        return Err(TOO_DEEP.to_owned());
    }

    if text.starts_with('\u{feff}') {
        // ruff's lexer skips a byte order mark at the start, but CPython only accepts
        // the one that decoding already removed.
        return Err("SyntaxError at line 1: invalid non-printable character U+FEFF".to_owned());
    }
    let options = ParseOptions::from(Mode::Module).with_target_version(PythonVersion::PY311);
    let parsed = parse(text, options).map_err(|error| {
        format!(
            "SyntaxError at line {}: {}",
            lines.line_of(error.location.start().into()),
            error.error
        )
    })?;
    if let Some(error) = parsed.unsupported_syntax_errors().first() {
        return Err(format!(
            "SyntaxError at line {}: {}",
            lines.line_of(error.range.start().into()),
            error
        ));
    }
    let Some(module) = parsed.syntax().as_module() else {
        return Err("SyntaxError: the source is not a module".to_owned());
    };
    let tree = tree::scan_tree(module, text, &lines).map_err(|_| TOO_DEEP.to_owned())?;
    if let Some(error) = outcome.error {
        return Err(error.message());
    }
    let raw = raw.finish();
    let maintainability_index = maintainability_index(
        tree.halstead_volume,
        tree.total_complexity,
        raw.lloc,
        raw.sloc,
        raw.comments + raw.multi,
    );
    Ok(FileMetrics {
        path: path.to_owned(),
        raw,
        maintainability_index,
        halstead_volume: tree.halstead_volume,
        functions: tree.functions,
        error: String::new(),
    })
}
