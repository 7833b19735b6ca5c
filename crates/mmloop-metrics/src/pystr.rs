//! Python 3 `str` semantics that the reference scripts rely on: `split()`/`strip()`
//! whitespace, `\d` and `\w` in `re` patterns, `lower()`, and `len(s.upper())`.
//!
//! Rust's `char::is_whitespace` and `char::is_alphanumeric` use other Unicode properties
//! than CPython, so parity needs these. Character classes follow the Unicode version of
//! the `unicode-properties` crate (16.0); CPython 3.11 uses 14.0, so only characters
//! assigned after Unicode 14 can classify differently. Only `push_lower` on non-ASCII
//! text allocates.

use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// `str.isspace()` for one character: Rust's `White_Space` set plus the ASCII
/// information separators U+001C..U+001F, which CPython also counts as whitespace.
#[inline]
pub fn is_space(c: char) -> bool {
    if c.is_ascii() {
        matches!(c, ' ' | '\t' | '\n' | '\u{0b}' | '\u{0c}' | '\r' | '\u{1c}'..='\u{1f}')
    } else {
        c.is_whitespace()
    }
}

/// `\d` in a Python 3 `str` pattern: any character of general category Nd.
#[inline]
pub fn is_decimal(c: char) -> bool {
    if c.is_ascii() { c.is_ascii_digit() } else { c.general_category() == GeneralCategory::DecimalNumber }
}

/// `\w` in a Python 3 `str` pattern: `str.isalnum()` (letters L*, numbers N*) or `_`.
#[inline]
pub fn is_word(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric() || c == '_'
    } else {
        matches!(c.general_category_group(), GeneralCategoryGroup::Letter | GeneralCategoryGroup::Number)
    }
}

/// `s.strip()` with no argument.
#[inline]
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// `s.split()` with no argument: runs of whitespace separate, no empty pieces.
#[inline]
pub fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_space).filter(|w| !w.is_empty())
}

/// Appends `s.lower()` to `out`. Python and Rust both apply the full (SpecialCasing)
/// mapping and the final-sigma rule, so this is `str::to_lowercase` without its allocation
/// in the ASCII case.
pub fn push_lower(s: &str, out: &mut String) {
    if s.is_ascii() {
        out.extend(s.chars().map(|c| c.to_ascii_lowercase()));
    } else {
        out.push_str(&s.to_lowercase());
    }
}

/// `len(s.upper())` in code points: full uppercase mapping can grow a string (`ß` → `SS`).
pub fn upper_len(s: &str) -> usize {
    if s.is_ascii() { s.len() } else { s.chars().map(|c| c.to_uppercase().count()).sum() }
}

/// `len(s)`: code points.
#[inline]
pub fn char_len(s: &str) -> usize {
    if s.is_ascii() { s.len() } else { s.chars().count() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_matches_cpython() {
        // Values from CPython 3.11 `str.isspace` over all code points.
        let py_space: Vec<u32> = vec![
            0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002,
            0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
        ];
        let ours: Vec<u32> =
            (0..=0x10ffffu32).filter_map(char::from_u32).filter(|&c| is_space(c)).map(|c| c as u32).collect();
        assert_eq!(ours, py_space);
    }

    #[test]
    fn split_strip_upper() {
        assert_eq!(split(" a\u{1f}b  c\u{a0}").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(strip("\u{3000} x \n"), "x");
        assert_eq!(upper_len("straße"), 7);
        assert!(is_decimal('٣') && !is_decimal('²') && !is_decimal('a'));
        assert!(is_word('é') && is_word('²') && !is_word('\u{301}') && !is_word('-'));
    }
}
