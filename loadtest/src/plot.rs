//! SVG plots of the per-second series: `rate.svg` (started, succeeded and
//! failed operations per second) and `latency.svg` (p50 and p99 of
//! REGISTER → final and INVITE → 200, milliseconds).

use std::path::Path;

use plotters::prelude::*;

use crate::stats::SeriesPoint;

type Res = Result<(), Box<dyn std::error::Error>>;
/// One line of a chart: its legend, colour and points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

pub fn write_all(dir: &Path, series: &[SeriesPoint], title: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--svg-out {}: {e}", dir.display()))?;
    rate(&dir.join("rate.svg"), series, title).map_err(|e| format!("rate.svg: {e}"))?;
    latency(&dir.join("latency.svg"), series, title).map_err(|e| format!("latency.svg: {e}"))?;
    Ok(())
}

fn lines(path: &Path, caption: &str, y_desc: &str, series: &[Line<'_>]) -> Res {
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|q| q.0))
        .fold(1.0f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|q| q.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start of the measured phase")
        .y_desc(y_desc)
        .draw()?;
    for (name, color, pts) in series {
        let c = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn rate(path: &Path, s: &[SeriesPoint], title: &str) -> Res {
    let pts = |f: fn(&SeriesPoint) -> u64| -> Vec<(f64, f64)> {
        s.iter().map(|p| (p.t as f64, f(p) as f64)).collect()
    };
    lines(
        path,
        &format!("{title}: operations per second"),
        "operations / s",
        &[
            ("started", BLUE, pts(|p| p.started)),
            ("succeeded", GREEN, pts(|p| p.succeeded)),
            ("failed", RED, pts(|p| p.failed)),
            ("retransmissions", MAGENTA, pts(|p| p.retransmissions)),
        ],
    )
}

fn latency(path: &Path, s: &[SeriesPoint], title: &str) -> Res {
    let pts = |f: fn(&SeriesPoint) -> u64| -> Vec<(f64, f64)> {
        s.iter()
            .filter(|p| p.succeeded > 0 || f(p) > 0)
            .map(|p| (p.t as f64, f(p) as f64 / 1000.0))
            .collect()
    };
    lines(
        path,
        &format!("{title}: latency (REGISTER → final, INVITE → 200)"),
        "milliseconds",
        &[
            ("p50", BLUE, pts(|p| p.p50_us)),
            ("p99", RED, pts(|p| p.p99_us)),
        ],
    )
}
