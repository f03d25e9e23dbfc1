//! glassbox-plot: small, dependency-free SVG plots. Every cell carries a `<title>` so
//! a browser shows the exact value on hover.

use std::fmt::Write;

pub struct Heatmap<'a> {
    pub title: &'a str,
    /// `values[row][col]`
    pub values: &'a [Vec<f32>],
    pub row_labels: &'a [String],
    pub col_labels: &'a [String],
    pub row_axis: &'a str,
    pub col_axis: &'a str,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Diverging blue–white–red, symmetric about zero, saturating at ±`scale`.
fn colour(v: f32, scale: f32) -> String {
    if !v.is_finite() {
        return "#999999".into();
    }
    let t = (v / scale).clamp(-1.0, 1.0);
    let (r, g, b) = if t >= 0.0 {
        (255.0, 255.0 * (1.0 - t), 255.0 * (1.0 - t))
    } else {
        (255.0 * (1.0 + t), 255.0 * (1.0 + t), 255.0)
    };
    format!("#{:02x}{:02x}{:02x}", r as u8, g as u8, b as u8)
}

impl Heatmap<'_> {
    pub fn to_svg(&self) -> String {
        let rows = self.values.len();
        let cols = self.values.first().map_or(0, Vec::len);
        let cell = 22.0f32;
        let left = 12.0
            + 7.0
                * self
                    .row_labels
                    .iter()
                    .map(|l| l.chars().count())
                    .max()
                    .unwrap_or(2) as f32
            + 30.0;
        let top = 40.0;
        let bottom = 20.0
            + 7.0
                * self
                    .col_labels
                    .iter()
                    .map(|l| l.chars().count())
                    .max()
                    .unwrap_or(2)
                    .min(24) as f32
            + 30.0;
        let width = left + cols as f32 * cell + 90.0;
        let height = top + rows as f32 * cell + bottom;
        let scale = self
            .values
            .iter()
            .flatten()
            .filter(|v| v.is_finite())
            .fold(0f32, |a, &v| a.max(v.abs()))
            .max(1e-6);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="20" font-size="14">{}</text>"#,
            escape(self.title)
        );
        for (r, row) in self.values.iter().enumerate() {
            let y = top + r as f32 * cell;
            let label = self
                .row_labels
                .get(r)
                .cloned()
                .unwrap_or_else(|| r.to_string());
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                left - 6.0,
                y + cell * 0.7,
                escape(&label)
            );
            for (c, &v) in row.iter().enumerate() {
                let x = left + c as f32 * cell;
                let col = self
                    .col_labels
                    .get(c)
                    .cloned()
                    .unwrap_or_else(|| c.to_string());
                let _ = writeln!(
                    s,
                    r##"<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{}" stroke="#eeeeee"><title>{} {label}, {} {}: {v:.4}</title></rect>"##,
                    colour(v, scale),
                    escape(self.row_axis),
                    escape(self.col_axis),
                    escape(&col)
                );
            }
        }
        let y0 = top + rows as f32 * cell + 6.0;
        for (c, label) in self.col_labels.iter().enumerate() {
            let x = left + c as f32 * cell + cell * 0.6;
            let shown: String = label.chars().take(24).collect();
            let _ = writeln!(
                s,
                r#"<text transform="translate({x},{y0}) rotate(60)">{}</text>"#,
                escape(&shown)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="12" y="{}" transform="rotate(-90 12 {})">{}</text>"#,
            top + 40.0,
            top + 40.0,
            escape(self.row_axis)
        );
        // colour bar
        let bx = left + cols as f32 * cell + 20.0;
        for i in 0..=20 {
            let v = scale * (1.0 - i as f32 / 10.0);
            let _ = writeln!(
                s,
                r#"<rect x="{bx}" y="{}" width="14" height="6" fill="{}"/>"#,
                top + i as f32 * 6.0,
                colour(v, scale)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{:+.3}</text>"#,
            bx + 18.0,
            top + 8.0,
            scale
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">0</text>"#, bx + 18.0, top + 64.0);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{:+.3}</text>"#,
            bx + 18.0,
            top + 126.0,
            -scale
        );
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_has_one_cell_per_value_with_its_value_on_hover() {
        let values = vec![vec![0.5, -1.0], vec![0.0, 2.0], vec![f32::NAN, 1.0]];
        let rows: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        let cols = vec!["<a>".to_string(), "b".to_string()];
        let svg = Heatmap {
            title: "t",
            values: &values,
            row_labels: &rows,
            col_labels: &cols,
            row_axis: "layer",
            col_axis: "pos",
        }
        .to_svg();
        assert_eq!(svg.matches("<title>").count(), 6);
        assert!(svg.contains("layer 1, pos b: 2.0000"));
        assert!(svg.contains("&lt;a&gt;"), "labels are escaped");
        assert!(svg.contains("#ff0000"), "the maximum saturates red");
        assert!(svg.contains("#999999"), "NaN is grey");
    }
}
