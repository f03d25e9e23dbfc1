//! How units are written on the command line, the same in every flag and every output,
//! so that what one command prints the next accepts (`L29/23@10`, `#26`, `0..30`).

use anyhow::{bail, Context, Result};

/// `--layers`: `A..B` (half-open, as Rust and Python count: `0..30` is every layer of a
/// 30-layer model), `A..=B` (inclusive), a list `3,7,11`, or a mix (`0..4,10`).
/// Absent: every layer.
pub fn parse_layers(spec: Option<&str>, n_layers: usize) -> Result<Vec<usize>> {
    match spec {
        None => Ok((0..n_layers).collect()),
        Some(spec) => parse_ranges("--layers", spec, n_layers, "layer"),
    }
}

/// A set of indices below `n` written as `parse_layers` reads them, for `flag` (e.g.
/// `--features`), whose items are `noun`s; sorted, without repeats.
pub fn parse_ranges(flag: &str, spec: &str, n: usize, noun: &str) -> Result<Vec<usize>> {
    let bad = || {
        format!("{flag} `{spec}`: use A..B (B excluded, e.g. 0..{n} for every {noun}), A..=B, or a list like 3,7,11")
    };
    let mut items = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| {
            let s = s.trim();
            s.strip_prefix('#')
                .unwrap_or(s)
                .parse::<usize>()
                .with_context(bad)
        };
        if let Some((a, b)) = part.split_once("..=") {
            let (a, b) = (number(a)?, number(b)?);
            items.extend(a..=b);
        } else if let Some((a, b)) = part.split_once("..") {
            let (a, b) = (number(a)?, number(b)?);
            if a >= b {
                bail!(
                    "{flag} `{spec}`: `{part}` is empty (B is excluded; `{a}..={b}` includes it)"
                );
            }
            items.extend(a..b);
        } else {
            items.push(number(part)?);
        }
    }
    if items.is_empty() {
        bail!("{}", bad());
    }
    if let Some(i) = items.iter().find(|&&i| i >= n) {
        bail!(
            "{flag} `{spec}`: {noun} {i} does not exist (there are {noun}s 0..{n}, i.e. 0 to {})",
            n.saturating_sub(1)
        );
    }
    items.sort_unstable();
    items.dedup();
    Ok(items)
}

/// A feature or neuron id as the dashboards print it (`#26`) or bare (`26`): clap's
/// value parser for `--feature`, `--features`, `--neuron`.
pub fn unit_id(s: &str) -> Result<usize, String> {
    let t = s.trim();
    t.strip_prefix('#')
        .unwrap_or(t)
        .parse()
        .map_err(|_| format!("`{s}` is not a feature or neuron id (a number, e.g. 26 or #26)"))
}

/// [`unit_id`] for flags stored as `u32`.
pub fn unit_id_u32(s: &str) -> Result<u32, String> {
    let id = unit_id(s)?;
    u32::try_from(id).map_err(|_| format!("`{s}` is larger than any feature id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_ranges_are_half_open_unless_written_inclusive() {
        assert_eq!(parse_layers(Some("0..3"), 30).unwrap(), vec![0, 1, 2]);
        assert_eq!(parse_layers(Some("0..=3"), 30).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_layers(Some("0..2, 7,1"), 30).unwrap(), vec![0, 1, 7]);
        assert_eq!(parse_layers(Some("0..30"), 30).unwrap().len(), 30);
        assert_eq!(parse_layers(None, 4).unwrap(), vec![0, 1, 2, 3]);
        let e = parse_layers(Some("0..31"), 30).unwrap_err().to_string();
        assert!(
            e.contains("layer 30 does not exist") && e.contains("0 to 29"),
            "{e}"
        );
        let e = parse_layers(Some("5..5"), 30).unwrap_err().to_string();
        assert!(e.contains("is empty") && e.contains("5..=5"), "{e}");
        let e = parse_layers(Some("a..b"), 30).unwrap_err().to_string();
        assert!(e.contains("use A..B"), "{e}");
        assert!(parse_layers(Some(","), 30).is_err());
    }

    #[test]
    fn ids_are_accepted_as_the_dashboards_print_them() {
        assert_eq!(unit_id("#26"), Ok(26));
        assert_eq!(unit_id(" 26 "), Ok(26));
        assert!(unit_id("L3").unwrap_err().contains("26 or #26"));
        assert_eq!(unit_id_u32("#7"), Ok(7));
    }
}
