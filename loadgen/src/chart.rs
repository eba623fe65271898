//! The percentile-distribution chart as SVG: x is the percentile on a log
//! "nines" axis (0 %, 90 %, 99 % ... 99.999 %), y the latency in ms, one line
//! per broker. plotters' SVG backend writes `<text>` elements itself, so no
//! font files are needed.

use std::path::Path;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Nines shown: up to 99.999 %.
const MAX_NINES: f64 = 5.0;
/// Points per line.
const STEPS: usize = 250;

pub struct Series<'a> {
    pub name: &'a str,
    pub hist: &'a Histogram<u64>,
}

/// `x` nines as a percentile: 1 -> 90 %, 2 -> 99 %.
pub fn quantile_at(nines: f64) -> f64 {
    1.0 - 10f64.powf(-nines)
}

/// Axis label for `x` nines.
pub fn nines_label(nines: f64) -> String {
    let pct = quantile_at(nines) * 100.0;
    let digits = (nines.round() as usize).saturating_sub(2);
    format!("{pct:.digits$}%")
}

/// (nines, ms) points of one histogram's distribution.
pub fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    (0..=STEPS)
        .map(|i| {
            let x = MAX_NINES * i as f64 / STEPS as f64;
            (x, h.value_at_quantile(quantile_at(x)) as f64 / 1e6)
        })
        .collect()
}

pub fn write_svg(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|s| !s.hist.is_empty())
        .map(|s| (s.name, points(s.hist)))
        .collect();
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.1;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..MAX_NINES, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_labels(MAX_NINES as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .draw()
        .map_err(plot_err)?;
    for (i, (name, pts)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn labels_name_the_nines() {
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(5.0), "99.999%");
    }

    #[test]
    fn svg_has_a_line_and_text_per_broker() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in 1..=10_000u64 {
            a.record(v * 100).unwrap();
            b.record(v * 300).unwrap();
        }
        let path = std::env::temp_dir().join(format!("loadgen-chart-{}.svg", std::process::id()));
        let series = [
            Series {
                name: "ringmq",
                hist: &a,
            },
            Series {
                name: "mosquitto",
                hist: &b,
            },
        ];
        write_svg(&path, "p2p latency", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert!(svg.contains("<svg"));
        assert!(
            svg.contains("ringmq") && svg.contains("mosquitto"),
            "legend text"
        );
        assert!(svg.contains("99.9%"), "nines axis labels");
        assert!(svg.matches("<polyline").count() >= 2, "one line per broker");
    }
}
