//! Raw line counts with radon 6.0.1's rules (`radon.raw.analyze`), in one pass.
//!
//! radon cuts a file into chunks: the fewest lines that tokenize on their own, which
//! is one logical line with its continuation lines, or one blank or comment-only
//! line. Every chunk ends with a NEWLINE token or with an NL token outside brackets,
//! so the chunks can be found in a single tokenization, as the Python reference
//! does. radon re-tokenizes a chunk for every line it adds, which is quadratic.

use super::lines::LineIndex;
use super::tokenizer::{Token, TokenKind};
use crate::model::RawCounts;

/// Counts lines from the tokens of one file, which arrive through `add_token`.
pub struct RawCounter<'a> {
    text: &'a str,
    lines: &'a LineIndex,
    next_line: usize,
    bracket_depth: u32,
    chunk: Chunk,
    counts: RawCounts,
}

#[derive(Default)]
struct Chunk {
    comments: u32,
    /// The kind of the chunk's first token, with that token's first and last line.
    first: Option<(TokenKind, u32, u32)>,
    /// Whether every token after the first is NL or NEWLINE.
    rest_is_line_ends: bool,
    /// radon's logical lines of the parts before the last semicolon.
    finished_parts_lloc: u32,
    /// Tokens of the current semicolon-separated part, comments and line ends left out.
    part_tokens: u32,
    /// The index of the last `:` operator in the current part.
    part_last_colon: Option<u32>,
}

impl Chunk {
    fn is_single(&self, kind: TokenKind) -> bool {
        matches!(self.first, Some((first, _, _)) if first == kind) && self.rest_is_line_ends
    }

    fn close_part(&mut self, is_last: bool) -> u32 {
        let lloc = part_lloc(self.part_tokens, self.part_last_colon, is_last);
        self.part_tokens = 0;
        self.part_last_colon = None;
        lloc
    }
}

/// Counts radon's logical lines of one part. A part without a colon counts 1, or 0
/// if it is empty. With a colon, it counts 1 if the last colon is the second-to-last
/// token of radon's token list, else 2. Only the last part's list ends with an
/// ENDMARKER, so there `if x:` counts 1 and `if x: return` counts 2.
fn part_lloc(tokens: u32, last_colon: Option<u32>, is_last: bool) -> u32 {
    match last_colon {
        None => u32::from(tokens > 0),
        Some(colon) => {
            let length = tokens + u32::from(is_last);
            if colon + 2 == length { 1 } else { 2 }
        }
    }
}

impl<'a> RawCounter<'a> {
    pub fn new(text: &'a str, lines: &'a LineIndex) -> Self {
        Self {
            text,
            lines,
            next_line: 1,
            bracket_depth: 0,
            chunk: Chunk {
                rest_is_line_ends: true,
                ..Chunk::default()
            },
            counts: RawCounts::default(),
        }
    }

    pub fn add_token(&mut self, token: &Token) {
        let kind = token.kind;
        if matches!(kind, TokenKind::Indent | TokenKind::Dedent) {
            return;
        }
        let chunk = &mut self.chunk;
        if chunk.first.is_none() {
            chunk.first = Some((kind, token.start_row, token.end_row));
        } else if !matches!(kind, TokenKind::Nl | TokenKind::Newline) {
            chunk.rest_is_line_ends = false;
        }
        // A one-character operator, or 0.
        let operator = if kind == TokenKind::Op && token.end == token.start + 1 {
            self.text.as_bytes()[token.start]
        } else {
            0
        };
        match kind {
            TokenKind::Comment => chunk.comments += 1,
            TokenKind::Nl | TokenKind::Newline => {}
            TokenKind::Op if operator == b';' => {
                chunk.finished_parts_lloc += chunk.close_part(false)
            }
            _ => {
                if operator == b':' {
                    chunk.part_last_colon = Some(chunk.part_tokens);
                }
                chunk.part_tokens += 1;
            }
        }
        if kind == TokenKind::Op {
            match operator {
                b'(' | b'[' | b'{' => self.bracket_depth += 1,
                b')' | b']' | b'}' => self.bracket_depth = self.bracket_depth.saturating_sub(1),
                _ => {}
            }
        } else if kind == TokenKind::Newline || (kind == TokenKind::Nl && self.bracket_depth == 0) {
            self.close_chunk(token.start_row as usize);
        }
    }

    pub fn finish(mut self) -> RawCounts {
        self.close_chunk(self.lines.line_count());
        let counts = &mut self.counts;
        counts.loc = counts.sloc + counts.blank + counts.multi + counts.single_comments;
        self.counts
    }

    fn close_chunk(&mut self, last_line: usize) {
        let mut chunk = std::mem::replace(
            &mut self.chunk,
            Chunk {
                rest_is_line_ends: true,
                ..Chunk::default()
            },
        );
        let counts = &mut self.counts;
        counts.comments += chunk.comments;
        let first_line = self.next_line;
        if last_line < first_line {
            // A NEWLINE that tokenize adds at the end of a file without a final
            // line break, on a line whose chunk is already counted.
            return;
        }
        self.next_line = last_line + 1;
        let last_line = last_line.min(self.lines.line_count());
        let blank = self.lines.blank_lines(first_line, last_line);
        let filled = (last_line + 1).saturating_sub(first_line) as u32 - blank;
        if chunk.is_single(TokenKind::Comment) {
            counts.single_comments += 1;
        } else if chunk.is_single(TokenKind::String) {
            let (_, start_row, end_row) = chunk.first.unwrap_or((TokenKind::String, 0, 0));
            if start_row == end_row {
                counts.single_comments += 1;
            } else {
                // radon counts every multi-line string statement as a docstring.
                counts.blank += blank;
                counts.multi += filled;
            }
        } else {
            counts.blank += blank;
            counts.sloc += filled;
        }
        counts.lloc += chunk.finished_parts_lloc + chunk.close_part(true);
    }
}
