//! A bound on expression nesting, checked on the tokens before parsing.
//!
//! CPython 3.11 rejects an AST nested deeper than about 3,000 nodes, and the C
//! tokenizer rejects more than 200 open brackets and 99 levels of indentation (see
//! `tokenizer`). Chains of operators nest without brackets, though: `not not ... x`
//! or `a.b.c...` or `1+1+...`. The Rust parser recurses on some of those chains and
//! the AST is dropped recursively, so a file of millions of them would use
//! gigabytes of stack. This bound stops such a file before parsing.
//!
//! The bound counts the tokens that can add a level to an expression: arithmetic
//! and bitwise operators, `.`, `not`, `lambda`, `await`, `if`, `else` and opening
//! brackets. It counts them per comma-separated part of a bracket level, plus the
//! count of the enclosing levels, so it is an upper bound of the expression's depth.

use super::tokenizer::{Token, TokenKind};

/// Files whose bound exceeds this are rejected as too deeply nested. CPython already
/// rejects the depth that this many operators in one chain produce.
pub const MAX_EXPRESSION_BOUND: u32 = 100_000;

/// CPython 3.11 scans an f-string's expression for brackets and rejects a 201st
/// nested one. It then tokenizes the expression wrapped in parentheses, which adds a
/// level, so the tokenizer already rejects the 200th.
const MAX_FSTRING_BRACKETS: u32 = 200;

pub struct DepthBound {
    /// Per open bracket: the count when it was opened, and the current count.
    levels: Vec<(u32, u32)>,
    previous: Option<(TokenKind, usize)>,
    pub max: u32,
    /// CPython's error for the first f-string with too many nested brackets.
    pub fstring_error: Option<String>,
    /// False for a text too short to exceed MAX_EXPRESSION_BOUND, which only needs
    /// the f-string check.
    count_operators: bool,
}

impl DepthBound {
    pub fn new(text: &str) -> Self {
        Self {
            count_operators: text.len() > MAX_EXPRESSION_BOUND as usize,
            levels: vec![(0, 0)],
            previous: None,
            max: 0,
            fstring_error: None,
        }
    }

    pub fn add_token(&mut self, text: &str, token: &Token) {
        if !self.count_operators && token.kind != TokenKind::String {
            self.previous = Some((token.kind, token.end));
            return;
        }
        let bytes = &text.as_bytes()[token.start..token.end];
        let added = match (token.kind, bytes) {
            (TokenKind::Op, [b'(' | b'[' | b'{']) => {
                let count = self.bump(1);
                self.levels.push((count, count));
                0
            }
            (TokenKind::Op, [b')' | b']' | b'}']) => {
                if self.levels.len() > 1 {
                    self.levels.pop();
                }
                0
            }
            (TokenKind::Op, [b',' | b';']) => {
                if let Some(level) = self.levels.last_mut() {
                    level.1 = level.0;
                }
                0
            }
            (
                TokenKind::Op,
                [b'+' | b'-' | b'*' | b'/' | b'%' | b'@' | b'&' | b'|' | b'^' | b'~' | b'.'],
            )
            | (TokenKind::Op, [b'*', b'*'] | [b'/', b'/'] | [b'<', b'<'] | [b'>', b'>']) => 1,
            (TokenKind::Name, b"not" | b"lambda" | b"await" | b"if" | b"else") => 1,
            (TokenKind::String, _) if self.parses_as_template(bytes, token) => {
                // The parser parses the expressions inside f-strings (and t-strings).
                // The `{` that opens an expression counts as a bracket here.
                if self.fstring_error.is_none() {
                    let inner = bracket_depth(bytes).saturating_sub(1);
                    let line = token.start_row;
                    if inner > MAX_FSTRING_BRACKETS {
                        self.fstring_error = Some(format!(
                            "SyntaxError at line {line}: f-string: too many nested parenthesis"
                        ));
                    } else if inner == MAX_FSTRING_BRACKETS {
                        self.fstring_error = Some(format!(
                            "SyntaxError at line {line}: too many nested parentheses"
                        ));
                    }
                }
                let operators = bytes
                    .iter()
                    .filter(|byte| b"([{+-*/%@&|^~.".contains(byte))
                    .count();
                u32::try_from(operators).unwrap_or(u32::MAX)
            }
            (TokenKind::Newline, _) => {
                self.levels.truncate(1);
                self.levels[0] = (0, 0);
                0
            }
            _ => 0,
        };
        if added > 0 {
            self.bump(added);
        }
        self.previous = Some((token.kind, token.end));
    }

    fn bump(&mut self, added: u32) -> u32 {
        let level = self
            .levels
            .last_mut()
            .expect("the outermost level is never popped");
        level.1 = level.1.saturating_add(added);
        self.max = self.max.max(level.1);
        level.1
    }

    /// Returns whether a STRING token is an f-string, or follows a name such as `t`
    /// with no space between, which a newer parser reads as a template string prefix.
    fn parses_as_template(&self, value: &[u8], token: &Token) -> bool {
        let prefix = value
            .iter()
            .take_while(|&&byte| byte != b'\'' && byte != b'"');
        if prefix.into_iter().any(|&byte| byte == b'f' || byte == b'F') {
            return true;
        }
        matches!(self.previous, Some((TokenKind::Name, end)) if end == token.start)
    }
}

/// Returns the deepest nesting of brackets in `bytes`, quotes ignored.
fn bracket_depth(bytes: &[u8]) -> u32 {
    let (mut depth, mut max) = (0u32, 0u32);
    for byte in bytes {
        match byte {
            b'(' | b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}
