//! Per-path goodput over time as an SVG, with the scenario's events marked.

use crate::scenario::Report;

const W: f64 = 900.0;
const H: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn nice_max(v: f64) -> f64 {
    let v = v.max(1.0);
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Draw one or more reports of the same scenario (one panel each, stacked).
pub fn svg(reports: &[&Report]) -> String {
    let total_h = H * reports.len() as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{total_h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, r) in reports.iter().enumerate() {
        out.push_str(&panel(r, i as f64 * H));
    }
    out.push_str("</svg>\n");
    out
}

fn panel(r: &Report, y0: f64) -> String {
    let mut s = String::new();
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let t_max = (r.series_total_mbps.len().max(1) as f64) * 0.1;
    let y_max = nice_max(r.series_total_mbps.iter().cloned().fold(0.0, f64::max) * 1.1);
    let x = |t: f64| LEFT + t / t_max * pw;
    let y = |v: f64| y0 + TOP + ph - v / y_max * ph;
    s.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"14\" font-weight=\"bold\">{} with --pm {}{}{}</text>\n",
        y0 + 20.0,
        esc(r.scenario),
        esc(r.pm),
        if r.via == "direct" {
            String::new()
        } else {
            format!(" --via {}", esc(r.via))
        },
        if r.survived { "" } else { " (connection did not survive)" }
    ));
    // Axes and grid.
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let (x2, yy, tx, ty) = (LEFT + pw, y(v), LEFT - 6.0, y(v) + 4.0);
        s.push_str(&format!(
            "<line x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{v:.0}</text>\n"
        ));
    }
    let step = if t_max > 20.0 {
        5.0
    } else if t_max > 8.0 {
        2.0
    } else {
        1.0
    };
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{t:.0}</text>\n",
            x(t),
            y0 + TOP + ph + 16.0
        ));
        t += step;
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">time (s)</text><text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">goodput (Mbit/s)</text>\n",
        LEFT + pw / 2.0,
        y0 + TOP + ph + 34.0,
        y0 + TOP + ph / 2.0,
        y0 + TOP + ph / 2.0
    ));
    s.push_str(&format!(
        "<rect x=\"{LEFT}\" y=\"{}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n",
        y0 + TOP
    ));
    let line = |series: &[f64], color: &str, width: f64, dash: &str| {
        let pts: Vec<String> = series
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x((i as f64 + 0.5) * 0.1), y(*v)))
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\" stroke-dasharray=\"{dash}\" points=\"{}\"/>\n",
            pts.join(" ")
        )
    };
    s.push_str(&line(&r.series_total_mbps, "#000", 1.5, "4 2"));
    for (k, series) in r.series_path_mbps.iter().enumerate() {
        s.push_str(&line(series, COLORS[k % COLORS.len()], 2.0, "none"));
    }
    // Events.
    for (i, e) in r.events.iter().enumerate() {
        let ex = x(e.t_ms / 1000.0);
        s.push_str(&format!(
            "<line x1=\"{ex}\" x2=\"{ex}\" y1=\"{}\" y2=\"{}\" stroke=\"#c00\" stroke-dasharray=\"3 3\"/><text x=\"{}\" y=\"{}\" fill=\"#c00\">{}</text>\n",
            y0 + TOP,
            y0 + TOP + ph,
            ex + 4.0,
            y0 + TOP + 14.0 + 14.0 * i as f64,
            esc(&e.what)
        ));
    }
    // Legend.
    let mut lx = LEFT + pw - 260.0;
    let ly = y0 + 20.0;
    s.push_str(&format!("<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"#000\" stroke-dasharray=\"4 2\"/><text x=\"{}\" y=\"{}\">total</text>\n", lx + 20.0, lx + 24.0, ly + 4.0));
    lx += 60.0;
    for k in 0..r.series_path_mbps.len() {
        s.push_str(&format!(
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">path {k}</text>\n",
            lx + 20.0,
            COLORS[k % COLORS.len()],
            lx + 24.0,
            ly + 4.0
        ));
        lx += 70.0;
    }
    s
}
