//! Halstead operand identity with Python's equality rules.
//!
//! radon keeps operands in a Python set of `(context, value)` pairs, where the
//! value is a name's identifier, an attribute's name or a constant's value. Python
//! compares those values, so `x`, `self.x` and `"x"` are one operand, and `1`,
//! `1.0`, `1+0j` and `True` are another. Numbers are therefore reduced to a
//! canonical form here: every integral value becomes an exact integer.

use std::borrow::Cow;

use ruff_python_ast::{Expr, Int, Number};
use unicode_normalization::UnicodeNormalization;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OperandKey<'a> {
    Text(Cow<'a, str>),
    Bytes(Vec<u8>),
    Integer(i128),
    /// An integer outside the i128 range, in decimal.
    BigInteger(String),
    /// A finite non-integral float or infinity, by its bits.
    Float(u64),
    /// A complex number with a non-zero imaginary part, by the bits of its parts.
    Complex(u64, u64),
    None,
    Ellipsis,
    /// A string literal with a lone surrogate escape such as `"\ud800"`, by its
    /// source text. ruff stores such a string with U+FFFD in place of the surrogate,
    /// which would make different literals equal.
    SurrogateText(&'a str),
    /// Any other expression, which is distinct from every other operand.
    Unique(u32),
}

/// Normalizes an identifier as CPython stores it: with NFKC when it is not ASCII.
pub fn identifier(name: &str) -> Cow<'_, str> {
    if name.is_ascii() {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(name.nfkc().collect())
    }
}

/// Returns the operand key of `expr`, or None when it is distinct from every other operand.
/// `source` is the text that `expr` was parsed from.
pub fn operand_key<'a>(expr: &'a Expr, source: &'a str) -> Option<OperandKey<'a>> {
    Some(match expr {
        Expr::StringLiteral(string) if string.value.to_str().contains('\u{fffd}') => {
            let literal = &source[string.range.start().to_usize()..string.range.end().to_usize()];
            if has_surrogate_escape(literal) {
                OperandKey::SurrogateText(literal)
            } else {
                OperandKey::Text(Cow::Borrowed(string.value.to_str()))
            }
        }
        Expr::Name(name) => OperandKey::Text(identifier(name.id.as_str())),
        Expr::Attribute(attribute) => OperandKey::Text(identifier(attribute.attr.as_str())),
        Expr::StringLiteral(string) => OperandKey::Text(Cow::Borrowed(string.value.to_str())),
        Expr::BytesLiteral(bytes) => OperandKey::Bytes(bytes.value.bytes().collect()),
        Expr::BooleanLiteral(boolean) => OperandKey::Integer(i128::from(boolean.value)),
        Expr::NoneLiteral(_) => OperandKey::None,
        Expr::EllipsisLiteral(_) => OperandKey::Ellipsis,
        Expr::NumberLiteral(number) => number_key(&number.value),
        _ => return None,
    })
}

/// Returns whether a literal's source has a `\uD800`-`\uDFFF` or `\U0000D800`-`\U0000DFFF`
/// escape (or one that merely looks like it, such as in a raw string).
fn has_surrogate_escape(literal: &str) -> bool {
    let lower = literal.to_ascii_lowercase();
    ["\\ud", "\\u0000d"].iter().any(|prefix| {
        lower.match_indices(prefix).any(|(index, _)| {
            matches!(
                lower.as_bytes().get(index + prefix.len()),
                Some(b'8'..=b'9' | b'a'..=b'f')
            )
        })
    })
}

fn number_key(number: &Number) -> OperandKey<'static> {
    match number {
        Number::Int(int) => integer_key(int),
        Number::Float(value) => float_key(*value),
        Number::Complex { real, imag } => {
            if *imag == 0.0 {
                float_key(*real)
            } else {
                // +0.0 and -0.0 compare equal, so they share a key.
                let canonical = |part: f64| {
                    if part == 0.0 {
                        0f64.to_bits()
                    } else {
                        part.to_bits()
                    }
                };
                OperandKey::Complex(canonical(*real), canonical(*imag))
            }
        }
    }
}

fn float_key(value: f64) -> OperandKey<'static> {
    if value.is_finite() && value.fract() == 0.0 {
        // Every f64 below 2^127 in magnitude converts to i128 exactly.
        if value.abs() < 2f64.powi(127) {
            return OperandKey::Integer(value as i128);
        }
        // Fixed-precision formatting prints the exact value of the float.
        return OperandKey::BigInteger(format!("{value:.0}"));
    }
    OperandKey::Float(value.to_bits())
}

fn integer_key(int: &Int) -> OperandKey<'static> {
    if let Some(value) = int.as_i64() {
        return OperandKey::Integer(i128::from(value));
    }
    let literal = int.to_string();
    let decimal = literal_to_decimal(&literal);
    match decimal.parse::<i128>() {
        Ok(value) => OperandKey::Integer(value),
        Err(_) => OperandKey::BigInteger(decimal),
    }
}

/// Converts a Python integer literal in any base, such as `0x_ff`, to decimal digits.
fn literal_to_decimal(literal: &str) -> String {
    let cleaned: String = literal.chars().filter(|&c| c != '_').collect();
    let lower = cleaned.to_ascii_lowercase();
    let (radix, digits) = match lower.get(..2) {
        Some("0x") => (16, &lower[2..]),
        Some("0o") => (8, &lower[2..]),
        Some("0b") => (2, &lower[2..]),
        _ => (10, lower.as_str()),
    };
    // Little-endian base-10^9 limbs.
    let mut limbs: Vec<u64> = vec![0];
    for digit in digits.chars().filter_map(|c| c.to_digit(radix)) {
        let mut carry = u64::from(digit);
        for limb in &mut limbs {
            let value = *limb * u64::from(radix) + carry;
            *limb = value % 1_000_000_000;
            carry = value / 1_000_000_000;
        }
        while carry > 0 {
            limbs.push(carry % 1_000_000_000);
            carry /= 1_000_000_000;
        }
    }
    let mut decimal = limbs.last().copied().unwrap_or(0).to_string();
    for limb in limbs.iter().rev().skip(1) {
        decimal.push_str(&format!("{limb:09}"));
    }
    decimal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_in_any_base_to_decimal() {
        assert_eq!(literal_to_decimal("0x_FF"), "255");
        assert_eq!(literal_to_decimal("0b1_0"), "2");
        assert_eq!(literal_to_decimal("1_000_000_000_000"), "1000000000000");
        assert_eq!(
            literal_to_decimal("0xffffffffffffffffffffffffffffffffff"),
            "87112285931760246646623899502532662132735"
        );
    }

    #[test]
    fn integral_floats_equal_integers() {
        assert_eq!(float_key(1.0), OperandKey::Integer(1));
        assert_eq!(float_key(-0.0), OperandKey::Integer(0));
        assert_eq!(
            float_key(1e30),
            OperandKey::Integer(1_000_000_000_000_000_019_884_624_838_656)
        );
        assert_eq!(
            float_key(1e300),
            OperandKey::BigInteger(format!("{:.0}", 1e300))
        );
        assert_eq!(float_key(0.5), OperandKey::Float(0.5f64.to_bits()));
    }
}
