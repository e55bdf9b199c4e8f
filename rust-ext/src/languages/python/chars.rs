//! Character classes of Python 3.11, for the tokenizer and the raw line counts.

use super::unicode_tables::{WORD_NOT_IDENTIFIER_START_RANGES, WORD_RANGES};

fn in_ranges(ranges: &[(u32, u32)], code_point: u32) -> bool {
    ranges
        .binary_search_by(|&(start, end)| {
            if end < code_point {
                std::cmp::Ordering::Less
            } else if start > code_point {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn char_at(text: &str, pos: usize) -> char {
    text[pos..].chars().next().unwrap_or('\0')
}

/// Returns the byte length of the `\w` character at `pos`, or 0 if that is not one.
pub fn word_char_len(text: &str, pos: usize) -> usize {
    let first = text.as_bytes()[pos];
    if first < 0x80 {
        return usize::from(first.is_ascii_alphanumeric() || first == b'_');
    }
    let character = char_at(text, pos);
    if in_ranges(WORD_RANGES, u32::from(character)) {
        character.len_utf8()
    } else {
        0
    }
}

/// Returns whether the `\w` character at `pos` may start an identifier (`str.isidentifier`).
pub fn is_identifier_start(text: &str, pos: usize) -> bool {
    let first = text.as_bytes()[pos];
    if first < 0x80 {
        return first.is_ascii_alphabetic() || first == b'_';
    }
    let character = char_at(text, pos);
    !in_ranges(WORD_NOT_IDENTIFIER_START_RANGES, u32::from(character))
}

/// Returns whether `str.isspace()` is true for `character`, which `str.strip()` removes.
pub fn is_python_whitespace(character: char) -> bool {
    character.is_whitespace() || ('\x1c'..='\x1f').contains(&character)
}

/// Returns whether `line.strip()` is empty.
pub fn is_blank(line: &str) -> bool {
    line.bytes().all(|b| {
        matches!(
            b,
            b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r' | 0x1c..=0x1f
        )
    }) || line.chars().all(is_python_whitespace)
}
