//! How token texts sit in the CLI's tables: quoted, escapes visible, padded to a column,
//! and isolated from the text around them so that a right-to-left token (Hebrew, Arabic)
//! cannot reorder the columns after it in a terminal that applies the bidi algorithm.

/// First strong right-to-left code points: Hebrew, Arabic, Syriac, Thaana, NKo, …, and
/// their presentation forms.
fn is_rtl(c: char) -> bool {
    matches!(c as u32, 0x0590..=0x08FF | 0xFB1D..=0xFDFF | 0xFE70..=0xFEFF | 0x10800..=0x10FFF | 0x1E800..=0x1EFFF)
}

/// `text` as a table cell of `width` characters: `"text"` (Rust escapes), padded with
/// spaces; wrapped in FIRST STRONG ISOLATE … POP DIRECTIONAL ISOLATE (both zero-width)
/// when it holds right-to-left characters.
pub fn token_cell(text: &str, width: usize) -> String {
    let quoted = format!("{text:?}");
    let pad = " ".repeat(width.saturating_sub(quoted.chars().count()));
    if quoted.chars().any(is_rtl) {
        format!("\u{2068}{quoted}\u{2069}{pad}")
    } else {
        format!("{quoted}{pad}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtl_tokens_are_isolated_and_pad_to_the_same_width() {
        let visible = |s: &str| {
            s.chars()
                .filter(|c| !matches!(c, '\u{2068}' | '\u{2069}'))
                .count()
        };
        for t in [" Paris", " שלום", " مرحبا", "\n", "é"] {
            let cell = token_cell(t, 20);
            assert_eq!(visible(&cell), 20, "{cell:?}");
            assert_eq!(cell.contains('\u{2068}'), t.chars().any(is_rtl), "{cell:?}");
        }
        assert_eq!(token_cell("\n", 0), "\"\\n\"");
    }
}
