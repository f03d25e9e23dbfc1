//! Histograms as inline SVG, made on the server so the live pages and the static export
//! draw the same picture. The markup is meant to be inlined in HTML (no XML namespace
//! declaration; add `xmlns` to save it as a standalone .svg file). Every bar carries a
//! `<title>` so the browser shows its range and count on hover.

use std::fmt::Write;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A compact number for axis labels and tooltips.
fn short(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (0.01..10_000.0).contains(&a) {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{v:.1e}")
    }
}

/// A bar chart of `counts` over the bins `edges` (`edges.len() == counts.len() + 1`;
/// with any other length the bins are drawn evenly spaced). With `log10_edges` the
/// edges are log10 of the value: the axis is logarithmic and labels show the values.
pub fn histogram_svg(edges: &[f64], counts: &[f64], x_label: &str, log10_edges: bool) -> String {
    let (w, h) = (480.0f64, 190.0f64);
    let (left, right, top, bottom) = (48.0, 12.0, 12.0, 44.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="histogram" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="histogram of {label}">"#,
        label = escape(x_label)
    );
    let total: f64 = counts.iter().sum();
    if counts.is_empty() || total <= 0.0 {
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#777" font-size="13">no activations recorded</text></svg>"##,
            w / 2.0,
            h / 2.0
        );
        return s;
    }
    let mut even = edges.len() != counts.len() + 1 || edges.iter().any(|e| !e.is_finite());
    let (mut edges, mut counts) = (edges, counts);
    if log10_edges && !even {
        // a log-scale histogram over a fixed wide range: show the span that has counts
        let first = counts.iter().position(|&c| c > 0.0).unwrap_or(0);
        let last = counts
            .iter()
            .rposition(|&c| c > 0.0)
            .unwrap_or(counts.len() - 1);
        edges = &edges[first..=last + 1];
        counts = &counts[first..=last];
    }
    even = even || edges.len() != counts.len() + 1;
    let n = counts.len();
    let edge = |i: usize| if even { i as f64 } else { edges[i] };
    let (lo, hi) = (edge(0), edge(n));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let x_of = |v: f64| left + (v - lo) / span * pw;
    let max = counts.iter().copied().fold(0.0f64, f64::max).max(1.0);
    let value = |e: f64| if log10_edges { 10f64.powf(e) } else { e };
    // axes
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#888"/><line x1="{left}" y1="{top}" x2="{left}" y2="{y0}" stroke="#888"/>"##,
        y0 = top + ph,
        x1 = left + pw
    );
    for (i, &c) in counts.iter().enumerate() {
        let (x0, x1) = (x_of(edge(i)), x_of(edge(i + 1)));
        let bh = c / max * ph;
        let range = if even {
            format!("bin {i}")
        } else {
            format!("{} – {}", short(value(edge(i))), short(value(edge(i + 1))))
        };
        let _ = write!(
            s,
            r##"<rect class="bar" x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="#e8790c"><title>{}: {}</title></rect>"##,
            x0 + 0.5,
            top + ph - bh,
            (x1 - x0 - 1.0).max(0.5),
            bh,
            escape(&range),
            c
        );
    }
    // y labels: 0 and the maximum count
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" text-anchor="end" font-size="11" fill="#555">0</text><text x="{}" y="{}" text-anchor="end" font-size="11" fill="#555">{}</text>"##,
        left - 4.0,
        top + ph + 4.0,
        left - 4.0,
        top + 10.0,
        max
    );
    // Where the activation mass lies: each bin's count × its central value, scaled to
    // the tallest bar (as Neuronpedia overlays its density-weighted histogram).
    if log10_edges && !even {
        let mass: Vec<f64> = (0..n)
            .map(|i| counts[i] * value((edge(i) + edge(i + 1)) / 2.0))
            .collect();
        let top_mass = mass.iter().copied().fold(0.0f64, f64::max);
        if top_mass > 0.0 {
            let pts: Vec<String> = (0..n)
                .map(|i| {
                    let x = (x_of(edge(i)) + x_of(edge(i + 1))) / 2.0;
                    format!("{x:.2},{:.2}", top + ph - mass[i] / top_mass * ph)
                })
                .collect();
            let _ = write!(
                s,
                r##"<polyline class="mass" points="{}" fill="none" stroke="#2f6fb0" stroke-width="1.5"><title>activation-weighted (count × activation), scaled to the tallest bar</title></polyline><text x="{}" y="{}" text-anchor="end" font-size="10" fill="#2f6fb0">— count × activation</text>"##,
                pts.join(" "),
                left + pw,
                top + 10.0
            );
        }
    }
    // x ticks: up to five, at bin edges; the end labels anchored inward so that they
    // stay inside the box
    if !even {
        let ticks = 5.min(n);
        for t in 0..=ticks {
            let i = t * n / ticks.max(1);
            let x = x_of(edge(i));
            let anchor = match t {
                0 => "start",
                t if t == ticks => "end",
                _ => "middle",
            };
            let _ = write!(
                s,
                r##"<line x1="{x:.2}" y1="{y}" x2="{x:.2}" y2="{y2}" stroke="#888"/><text x="{x:.2}" y="{ty}" text-anchor="{anchor}" font-size="11" fill="#555">{}</text>"##,
                escape(&short(value(edge(i)))),
                y = top + ph,
                y2 = top + ph + 4.0,
                ty = top + ph + 16.0
            );
        }
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="12" fill="#333">{}</text></svg>"##,
        left + pw / 2.0,
        h - 8.0,
        escape(x_label)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_count_with_titles() {
        let svg = histogram_svg(&[-1.0, 0.0, 1.0], &[3.0, 5.0], "act <x>", true);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("<title>0.1 – 1: 3</title>"), "{svg}");
        assert!(svg.contains("<title>1 – 10: 5</title>"), "{svg}");
        assert!(svg.contains("act &lt;x&gt;"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn log_histograms_drop_empty_end_bins() {
        let edges: Vec<f64> = (0..=8).map(|i| -4.0 + i as f64).collect();
        let counts = [0.0, 0.0, 0.0, 2.0, 0.0, 7.0, 0.0, 0.0];
        let svg = histogram_svg(&edges, &counts, "act", true);
        assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
        assert!(svg.contains("<title>0.1 – 1: 2</title>"), "{svg}");
        assert!(svg.contains("<title>10 – 100: 7</title>"), "{svg}");
        // a linear histogram keeps its full range
        let lin = histogram_svg(&edges, &counts, "x", false);
        assert_eq!(lin.matches("<rect").count(), 8);
    }

    #[test]
    fn empty_histograms_say_so() {
        let svg = histogram_svg(&[], &[], "act", true);
        assert!(svg.contains("no activations"));
        assert!(!svg.contains("<rect"));
    }

    #[test]
    fn mismatched_edges_fall_back_to_even_bins() {
        let svg = histogram_svg(&[0.0], &[1.0, 2.0, 3.0], "x", false);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(!svg.contains("NaN"));
    }
}
