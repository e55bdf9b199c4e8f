//! Decoding Python source bytes as the interpreter does (PEP 263), with the
//! messages of the Python reference (`aiswa_reflector.metrics._source`).

use std::borrow::Cow;

use encoding_rs::Encoding;

const BOM: &[u8] = b"\xef\xbb\xbf";

/// The decoder that the coding cookie or the byte order mark selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Codec {
    Utf8,
    /// UTF-8 after a byte order mark, which is removed.
    Utf8Sig,
    Latin1,
    Ascii,
    /// A codec of the WHATWG Encoding Standard, for the other encodings.
    Whatwg(&'static Encoding),
}

/// Decode `source` like `tokenize.detect_encoding` followed by `bytes.decode`.
pub fn decode(source: &[u8]) -> Result<Cow<'_, str>, String> {
    let (codec, name) = detect_codec(source)?;
    match codec {
        Codec::Utf8 => decode_utf8(source, "utf-8"),
        Codec::Utf8Sig => decode_utf8(source.strip_prefix(BOM).unwrap_or(source), "utf-8-sig"),
        Codec::Latin1 => Ok(Cow::Owned(
            source.iter().map(|&byte| char::from(byte)).collect(),
        )),
        Codec::Ascii => match source.iter().position(|byte| !byte.is_ascii()) {
            None => Ok(Cow::Borrowed(
                std::str::from_utf8(source).unwrap_or_default(),
            )),
            Some(offset) => Err(format!(
                "invalid ascii at line {} (byte offset {offset}): ordinal not in range(128)",
                line_of(source, offset)
            )),
        },
        Codec::Whatwg(encoding) => encoding
            .decode_without_bom_handling_and_without_replacement(source)
            .map(|text| Cow::Owned(text.into_owned()))
            .ok_or_else(|| format!("invalid {name}: the bytes are not valid in that encoding")),
    }
}

/// Remove a leading byte order mark from text that is already decoded.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Replace `\r\n` and lone `\r` with `\n`, as the compiler reads line endings.
pub fn normalize_newlines(text: Cow<'_, str>) -> Cow<'_, str> {
    if memchr::memchr(b'\r', text.as_bytes()).is_none() {
        return text;
    }
    Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
}

/// Returns the reference's error for a Python string that UTF-8 cannot encode.
///
/// `encoded` is the text encoded with Python's `surrogatepass` error handler, which
/// writes an unpaired surrogate as its three-byte form (0xED 0xA0-0xBF ..). As in
/// the reference, a NUL byte is reported first, and line numbers count `\r\n`, `\r`
/// and `\n` as one line break each.
pub fn unencodable_text_error(encoded: &[u8]) -> String {
    let line_at = |offset: usize| {
        let prefix = &encoded[..offset];
        let breaks = prefix
            .iter()
            .enumerate()
            .filter(|&(index, &byte)| {
                byte == b'\n' || (byte == b'\r' && prefix.get(index + 1) != Some(&b'\n'))
            })
            .count();
        breaks + 1
    };
    if let Some(offset) = encoded.iter().position(|&byte| byte == 0) {
        return format!("invalid source: NUL byte at line {}", line_at(offset));
    }
    let surrogate = encoded
        .windows(3)
        .position(|window| window[0] == 0xed && (0xa0..=0xbf).contains(&window[1]));
    match surrogate {
        Some(offset) => {
            let code_point = 0xd000
                | (u32::from(encoded[offset + 1] & 0x3f) << 6)
                | u32::from(encoded[offset + 2] & 0x3f);
            format!(
                "invalid source: unpaired surrogate '\\u{code_point:04x}' at line {}",
                line_at(offset)
            )
        }
        None => "invalid source: the text cannot be encoded as UTF-8".to_owned(),
    }
}

fn line_of(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
        + 1
}

fn decode_utf8<'a>(bytes: &'a [u8], encoding: &str) -> Result<Cow<'a, str>, String> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(Cow::Borrowed(text)),
        Err(error) => {
            let offset = error.valid_up_to();
            let reason = match error.error_len() {
                None => "unexpected end of data",
                Some(_) if is_utf8_start(bytes[offset]) => "invalid continuation byte",
                Some(_) => "invalid start byte",
            };
            let base = if encoding == "utf-8-sig" {
                BOM.len()
            } else {
                0
            };
            Err(format!(
                "invalid {encoding} at line {} (byte offset {}): {reason}",
                line_of(bytes, offset),
                offset + base
            ))
        }
    }
}

fn is_utf8_start(byte: u8) -> bool {
    matches!(byte, 0xc2..=0xf4)
}

/// `tokenize.detect_encoding`: a byte order mark, or a coding cookie in one of the
/// first two lines (the second only after a blank or comment-only first line).
fn detect_codec(source: &[u8]) -> Result<(Codec, String), String> {
    let mut lines = source.split_inclusive(|&byte| byte == b'\n');
    let mut first = lines.next().unwrap_or_default();
    let bom = first.starts_with(BOM);
    let default = if bom {
        (Codec::Utf8Sig, "utf-8-sig".to_owned())
    } else {
        (Codec::Utf8, "utf-8".to_owned())
    };
    if bom {
        first = &first[BOM.len()..];
    }
    if first.is_empty() {
        return Ok(default);
    }
    // A line that is not UTF-8 makes detect_encoding raise "invalid or missing
    // encoding declaration"; the reference then decodes as UTF-8, which reports the
    // exact position.
    let Ok(first_text) = std::str::from_utf8(first) else {
        return Ok(default);
    };
    if let Some(found) = find_cookie(first_text, bom)? {
        return Ok(found);
    }
    if !is_blank_or_comment(first) {
        return Ok(default);
    }
    let second = lines.next().unwrap_or_default();
    if second.is_empty() {
        return Ok(default);
    }
    let Ok(second_text) = std::str::from_utf8(second) else {
        return Ok(default);
    };
    Ok(find_cookie(second_text, bom)?.unwrap_or(default))
}

/// `blank_re`: `^[ \t\f]*(?:[#\r\n]|$)`
fn is_blank_or_comment(line: &[u8]) -> bool {
    let rest: &[u8] = match line
        .iter()
        .position(|byte| !matches!(byte, b' ' | b'\t' | b'\x0c'))
    {
        Some(index) => &line[index..],
        None => &[],
    };
    matches!(rest.first(), None | Some(b'#' | b'\r' | b'\n'))
}

/// `cookie_re`: `^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)` (ASCII `\w`).
fn cookie_name(line: &str) -> Option<&str> {
    let rest = line.trim_start_matches([' ', '\t', '\x0c']);
    let comment = rest.strip_prefix('#')?;
    // `.` does not match a newline, so the search stops at the first one.
    let comment = comment.split('\n').next().unwrap_or("");
    let mut search_from = 0;
    while let Some(found) = comment[search_from..].find("coding") {
        let after = search_from + found + "coding".len();
        let rest = &comment[after..];
        if let Some(value) = rest.strip_prefix([':', '=']) {
            let value = value.trim_start_matches([' ', '\t']);
            let end = value
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                .unwrap_or(value.len());
            if end > 0 {
                return Some(&value[..end]);
            }
        }
        search_from = after;
    }
    None
}

fn find_cookie(line: &str, bom: bool) -> Result<Option<(Codec, String)>, String> {
    let Some(raw_name) = cookie_name(line) else {
        return Ok(None);
    };
    let name = normal_name(raw_name);
    let Some(codec) = lookup(&name) else {
        return Err(format!(
            "invalid encoding declaration: unknown encoding: {name}"
        ));
    };
    if bom {
        if name != "utf-8" {
            return Err("invalid encoding declaration: encoding problem: utf-8".to_owned());
        }
        return Ok(Some((Codec::Utf8Sig, "utf-8-sig".to_owned())));
    }
    Ok(Some((codec, name)))
}

/// `tokenize._get_normal_name`.
fn normal_name(name: &str) -> String {
    let head: String = name
        .chars()
        .take(12)
        .collect::<String>()
        .to_lowercase()
        .replace('_', "-");
    if head == "utf-8" || head.starts_with("utf-8-") {
        return "utf-8".to_owned();
    }
    let latin = ["latin-1", "iso-8859-1", "iso-latin-1"];
    if latin.contains(&head.as_str())
        || latin
            .iter()
            .any(|prefix| head.starts_with(&format!("{prefix}-")))
    {
        return "iso-8859-1".to_owned();
    }
    name.to_owned()
}

/// Returns the codec that `codecs.lookup(name)` finds, for the encodings supported here.
fn lookup(name: &str) -> Option<Codec> {
    // encodings.normalize_encoding, then lower case as the codec search does.
    let mut key = String::new();
    for part in name
        .to_lowercase()
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
    {
        if !part.is_empty() {
            if !key.is_empty() {
                key.push('_');
            }
            key.push_str(part);
        }
    }
    let codec = match key.as_str() {
        "utf_8" | "utf8" | "u8" | "utf" | "utf8_ucs2" | "utf8_ucs4" | "cp65001" => Codec::Utf8,
        "utf_8_sig" => Codec::Utf8Sig,
        "latin_1" | "latin1" | "latin" | "l1" | "iso_8859_1" | "iso8859_1" | "8859" | "cp819"
        | "ibm819" | "iso_ir_100" | "csisolatin1" | "iso_8859_1_1987" => Codec::Latin1,
        "ascii" | "us_ascii" | "646" | "us" | "cp367" | "csascii" | "ibm367" | "iso646_us"
        | "iso_ir_6" | "ansi_x3.4_1968" | "ansi_x3_4_1968" | "ansi_x3.4_1986"
        | "iso_646.irv_1991" => Codec::Ascii,
        other => Codec::Whatwg(whatwg_encoding(other)?),
    };
    Some(codec)
}

/// Returns the WHATWG encoding for a Python codec name. Only single-byte and East
/// Asian codecs are mapped, because their tables agree with Python's on valid input.
fn whatwg_encoding(key: &str) -> Option<&'static Encoding> {
    let label = match key {
        "cp1250" | "windows_1250" => "windows-1250",
        "cp1251" | "windows_1251" => "windows-1251",
        "cp1252" | "windows_1252" => "windows-1252",
        "cp1253" | "windows_1253" => "windows-1253",
        "cp1254" | "windows_1254" => "windows-1254",
        "cp1255" | "windows_1255" => "windows-1255",
        "cp1256" | "windows_1256" => "windows-1256",
        "cp1257" | "windows_1257" => "windows-1257",
        "cp1258" | "windows_1258" => "windows-1258",
        "latin2" | "l2" => "iso-8859-2",
        "latin3" | "l3" => "iso-8859-3",
        "latin4" | "l4" => "iso-8859-4",
        "cyrillic" => "iso-8859-5",
        "arabic" => "iso-8859-6",
        "greek" => "iso-8859-7",
        "hebrew" => "iso-8859-8",
        "latin6" | "l6" => "iso-8859-10",
        "latin7" | "l7" => "iso-8859-13",
        "latin8" | "l8" => "iso-8859-14",
        "latin9" | "l9" => "iso-8859-15",
        "latin10" | "l10" => "iso-8859-16",
        "koi8_r" => "koi8-r",
        "koi8_u" => "koi8-u",
        "cp866" | "866" | "ibm866" => "ibm866",
        "mac_cyrillic" | "maccyrillic" => "x-mac-cyrillic",
        "shift_jis" | "sjis" | "s_jis" | "shiftjis" => "shift_jis",
        "euc_jp" | "eucjp" | "ujis" => "euc-jp",
        "gbk" | "936" | "cp936" | "ms936" | "gb2312" | "euc_cn" | "euccn" => "gbk",
        "gb18030" => "gb18030",
        "big5" | "big5_tw" | "csbig5" => "big5",
        "euc_kr" | "euckr" => "euc-kr",
        other => {
            let number = other
                .strip_prefix("iso8859_")
                .or_else(|| other.strip_prefix("iso_8859_"))?
                .parse::<u32>()
                .ok()?;
            if !(2..=16).contains(&number) || number == 9 || number == 11 || number == 12 {
                return None;
            }
            return Encoding::for_label(format!("iso-8859-{number}").as_bytes());
        }
    };
    Encoding::for_label(label.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_selects_encoding() {
        let text = decode(b"# -*- coding: latin-1 -*-\nx = '\xe9'\n").unwrap();
        assert!(text.contains('\u{e9}'));
    }

    #[test]
    fn unknown_cookie_is_error() {
        let error = decode(b"# coding: uft-8\n").unwrap_err();
        assert_eq!(
            error,
            "invalid encoding declaration: unknown encoding: uft-8"
        );
    }

    #[test]
    fn invalid_utf8_reports_line() {
        let error = decode(b"x = 1\ny = '\xff'\n").unwrap_err();
        assert_eq!(
            error,
            "invalid utf-8 at line 2 (byte offset 11): invalid start byte"
        );
    }

    #[test]
    fn bom_with_other_cookie_is_error() {
        let error = decode(b"\xef\xbb\xbf# coding: latin-1\n").unwrap_err();
        assert_eq!(
            error,
            "invalid encoding declaration: encoding problem: utf-8"
        );
    }
}
