//! glassbox-plot: small SVG plots written by hand, with no plotting library: a
//! [`Heatmap`] (the patching grids of `glassbox patch` and `glassbox ioi`) and a
//! [`LinePlot`] (probe sweeps over layers). Every cell and point carries a `<title>`, so
//! a browser shows its exact value on hover. [`png_from_svg`] rasterises such a picture
//! (and the dashboards' SVG) with resvg, for reports that want a bitmap.
//!
//! ```
//! use glassbox_plot::Heatmap;
//!
//! // a patching grid: 2 layers × 3 positions
//! let values = vec![vec![0.0, 0.5, 1.0], vec![-0.25, f32::NAN, 0.1]];
//! let rows = vec!["0".to_string(), "1".to_string()];
//! let cols = vec!["0:<s>".to_string(), "1:The".to_string(), "2:cat".to_string()];
//! let svg = Heatmap {
//!     title: "resid_pre patching",
//!     values: &values,
//!     row_labels: &rows,
//!     col_labels: &cols,
//!     row_axis: "layer",
//!     col_axis: "position",
//! }
//! .to_svg();
//! assert!(svg.starts_with("<svg xmlns="));
//! // one hovered value per cell, labels escaped
//! assert_eq!(svg.matches("<title>").count(), 6);
//! assert!(svg.contains("<title>layer 0, position 2:cat: 1.0000</title>"));
//! assert!(svg.contains("0:&lt;s&gt;"));
//! ```

#![deny(missing_docs)]

use std::fmt::Write;

/// A grid of values as coloured cells: diverging blue–white–red, symmetric about zero
/// and saturating at the largest finite |value| of the grid; NaN and infinite cells are
/// grey. Draw it with [`Heatmap::to_svg`].
pub struct Heatmap<'a> {
    /// the heading above the grid
    pub title: &'a str,
    /// `values[row][col]`; the number of columns is that of the first row
    pub values: &'a [Vec<f32>],
    /// one per row, drawn left of it (a missing one shows the row index)
    pub row_labels: &'a [String],
    /// one per column, drawn below it rotated 60° and cut to 24 characters (a missing
    /// one shows the column index in the hover text only)
    pub col_labels: &'a [String],
    /// what the rows are (e.g. `layer`): drawn vertically at the left and named in
    /// each cell's hover text
    pub row_axis: &'a str,
    /// what the columns are (e.g. `position`, `head`): named in each cell's hover text
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
    /// The heatmap as a standalone SVG document (with its XML namespace): 22 px cells,
    /// margins sized to the labels, and a colour bar labelled ±the scale. Each cell's
    /// `<title>` reads `{row_axis} {row label}, {col_axis} {col label}: {value:.4}`.
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

/// Lines over a shared x axis, y in a fixed range (e.g. accuracy in [0, 1]). Draw it
/// with [`LinePlot::to_svg`].
pub struct LinePlot<'a> {
    /// the heading above the plot
    pub title: &'a str,
    /// the x axis's name, below it
    pub x_label: &'a str,
    /// the y axis's name, drawn vertically at the left
    pub y_label: &'a str,
    /// the x positions every series shares (e.g. layers), each labelled on the axis;
    /// the axis spans their minimum to their maximum
    pub x: &'a [f64],
    /// `(name, values)`, one per line: `values[i]` is drawn at `x[i]`, non-finite values
    /// are left out (the line joins the points around them); names go in the legend
    pub series: &'a [(&'a str, Vec<f64>)],
    /// `(low, high)` of the y axis (`high > low`); values outside are drawn clamped to it
    pub y_range: (f64, f64),
}

const PALETTE: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

impl LinePlot<'_> {
    /// The plot as a standalone 640 × 360 px SVG document: five horizontal grid lines,
    /// one polyline and one dot per finite point in each series (colours cycle through
    /// six), and a legend on the right. Each dot's `<title>` reads `{name} at {x}: {y:.4}`.
    pub fn to_svg(&self) -> String {
        let (w, h, left, top, right, bottom) = (640.0f64, 360.0f64, 56.0, 36.0, 140.0, 44.0);
        let (pw, ph) = (w - left - right, h - top - bottom);
        let (x0, x1) = (
            self.x.iter().copied().fold(f64::INFINITY, f64::min),
            self.x.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        let span = if x1 > x0 { x1 - x0 } else { 1.0 };
        let (y0, y1) = self.y_range;
        let px = |x: f64| left + (x - x0) / span * pw;
        let py = |y: f64| top + (1.0 - (y.clamp(y0, y1) - y0) / (y1 - y0)) * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="20" font-size="14">{}</text>"#,
            escape(self.title)
        );
        for i in 0..=4 {
            let y = y0 + (y1 - y0) * i as f64 / 4.0;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{x2}" y1="{yy}" y2="{yy}" stroke="#dddddd"/><text x="{tx}" y="{ty}" text-anchor="end">{y:.2}</text>"##,
                x2 = left + pw,
                yy = py(y),
                tx = left - 4.0,
                ty = py(y) + 4.0
            );
        }
        for &x in self.x {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{x}</text>"#,
                px(x),
                top + ph + 16.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + pw / 2.0,
            h - 6.0,
            escape(self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="14" y="{0}" transform="rotate(-90 14 {0})" text-anchor="middle">{1}</text>"#,
            top + ph / 2.0,
            escape(self.y_label)
        );
        for (k, (name, ys)) in self.series.iter().enumerate() {
            let colour = PALETTE[k % PALETTE.len()];
            let pts: Vec<String> = self
                .x
                .iter()
                .zip(ys)
                .filter(|(_, y)| y.is_finite())
                .map(|(&x, &y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
            for (&x, &y) in self.x.iter().zip(ys).filter(|(_, y)| y.is_finite()) {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{} at {x}: {y:.4}</title></circle>"#,
                    px(x),
                    py(y),
                    escape(name)
                );
            }
            let ly = top + 10.0 + 16.0 * k as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="12" height="3" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
                left + pw + 12.0,
                ly - 3.0,
                left + pw + 28.0,
                ly + 1.0,
                escape(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Rasterises an SVG (as this crate and the dashboards write them) to PNG bytes, at
/// `scale` × its own size. Text uses the system's fonts; without any, shapes still render.
/// An SVG without the XML namespace (as the dashboards inline it) is accepted. The error
/// is a message: `not a valid SVG: …`, or a size that scales to nothing or cannot be
/// allocated.
pub fn png_from_svg(svg: &str, scale: f32) -> Result<Vec<u8>, String> {
    use resvg::{tiny_skia, usvg};
    // pages embed SVG without the namespace; a standalone file needs it
    let svg = if svg.contains("xmlns=") {
        svg.to_string()
    } else {
        svg.replacen("<svg", "<svg xmlns=\"http://www.w3.org/2000/svg\"", 1)
    };
    let mut opt = usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    // the dashboards style text with CSS the file does not carry: use a font that exists
    let family = {
        let db = &opt.fontdb;
        let has = |name: &str| {
            db.faces()
                .any(|f| f.families.iter().any(|(n, _)| n == name))
        };
        ["DejaVu Sans", "Liberation Sans", "Noto Sans"]
            .into_iter()
            .find(|n| has(n))
            .map(String::from)
            .or_else(|| {
                db.faces()
                    .next()
                    .and_then(|f| f.families.first().map(|(n, _)| n.clone()))
            })
    };
    if let Some(f) = family {
        opt.fontdb_mut().set_sans_serif_family(f.clone());
        opt.font_family = f;
    }
    let tree = usvg::Tree::from_str(&svg, &opt).map_err(|e| format!("not a valid SVG: {e}"))?;
    let size = tree
        .size()
        .to_int_size()
        .scale_by(scale)
        .ok_or("empty picture")?;
    let mut pixmap =
        tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("picture too large")?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| e.to_string())
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

    #[test]
    fn line_plot_draws_a_point_per_value_and_a_legend() {
        let series = [
            ("accuracy", vec![0.5, 0.9, 1.0]),
            ("auroc", vec![0.6, f64::NAN, 0.99]),
        ];
        let svg = LinePlot {
            title: "sweep",
            x_label: "layer",
            y_label: "score",
            x: &[0.0, 5.0, 10.0],
            series: &series,
            y_range: (0.0, 1.0),
        }
        .to_svg();
        assert_eq!(svg.matches("<circle").count(), 5, "NaN points are skipped");
        assert!(svg.contains("accuracy at 5: 0.9000"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
