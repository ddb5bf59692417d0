//! Inline SVG charts: drawn on the server, so the page needs no script and fetches nothing.
//! Geometry is floating point; the figures it draws come in as exact text.

use std::fmt::Write as _;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 88.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 10.0;

/// One column of a [`columns`] chart.
pub struct Column {
    /// Under the column, when shown (every few columns, and the last).
    pub label: String,
    /// Height as a share of the tallest, 0..=1.
    pub height: f64,
    /// The hover text: escaped.
    pub title: String,
    /// Extra attributes of the column's `rect`, escaped: e.g. `data-date="…" data-usd="…"`.
    pub attrs: String,
}

/// A column chart, one column per entry, with the axis top labelled `max` (escaped).
pub fn columns(id: &str, caption: &str, max: &str, cols: &[Column]) -> String {
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let step = plot_w / cols.len().max(1) as f64;
    let bar_w = (step * 0.8).max(1.0);
    let base = TOP + plot_h;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg id="{id}" class="chart" role="img" aria-label="{caption}" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" preserveAspectRatio="xMinYMin meet"><title>{caption}</title>"#
    );
    let _ = write!(
        out,
        r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{x2}" y2="{TOP}"/><line class="axis" x1="{LEFT}" y1="{base}" x2="{x2}" y2="{base}"/><text class="tick" x="{tx}" y="{ty}" text-anchor="end">{max}</text><text class="tick" x="{tx}" y="{base}" text-anchor="end">0</text>"#,
        x2 = WIDTH - 8.0,
        tx = LEFT - 6.0,
        ty = TOP + 10.0,
    );
    // About eight labels whatever the number of columns, and always the last.
    let every = cols.len().div_ceil(8).max(1);
    for (i, c) in cols.iter().enumerate() {
        let h = (c.height.clamp(0.0, 1.0) * plot_h).max(if c.height > 0.0 { 1.0 } else { 0.0 });
        let x = LEFT + step * i as f64 + (step - bar_w) / 2.0;
        let _ = write!(
            out,
            r#"<rect class="col" x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{h:.1}" {attrs}><title>{title}</title></rect>"#,
            y = base - h,
            attrs = c.attrs,
            title = c.title,
        );
        if i % every == 0 || i + 1 == cols.len() {
            let _ = write!(
                out,
                r#"<text class="tick" x="{cx:.1}" y="{ly}" text-anchor="middle">{label}</text>"#,
                cx = x + bar_w / 2.0,
                ly = HEIGHT - 6.0,
                label = c.label,
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// A bar the width of a table cell, filled to `share` (0..=1) of it.
pub fn bar(share: f64) -> String {
    let w = share.clamp(0.0, 1.0) * 100.0;
    format!(
        r#"<svg class="bar" viewBox="0 0 100 10" width="64" height="12" preserveAspectRatio="none"><rect class="track" width="100" height="10"/><rect class="fill" width="{w:.2}" height="10"/></svg>"#
    )
}

/// One horizontal bar split into parts: (share 0..=1, CSS class, escaped hover text),
/// followed by a legend naming each part with that text.
pub fn stacked(id: &str, caption: &str, parts: &[(f64, &str, String)]) -> String {
    let mut out = format!(
        r#"<svg id="{id}" class="stacked" role="img" aria-label="{caption}" viewBox="0 0 100 6" width="100%" height="28" preserveAspectRatio="none"><title>{caption}</title><rect class="track" width="100" height="6"/>"#
    );
    let mut x = 0.0;
    for (share, class, title) in parts {
        let w = share.clamp(0.0, 1.0) * 100.0;
        let w = w.min(100.0 - x);
        let _ = write!(
            out,
            r#"<rect class="{class}" x="{x:.2}" width="{w:.2}" height="6"><title>{title}</title></rect>"#
        );
        x += w;
    }
    out.push_str("</svg><p class=\"legend\">");
    for (_, class, title) in parts {
        let _ = write!(out, "<i class=\"{class}\"></i>{title} ");
    }
    out.push_str("</p>");
    out
}
