//! SVG plots of a simulation (plotters, SVG backend only): latency over the
//! period per policy, the serving site over time per policy, and demand
//! per client region.

use crate::sim::SimResult;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {msg}")]
pub struct PlotError {
    path: PathBuf,
    msg: String,
}

/// Points are averaged into buckets of this many seconds: a quarter hour
/// shows the day's shape and the moves without a point per step.
const BUCKET_S: f64 = 900.0;

/// Ten distinguishable colours (Tableau 10), so nine client regions and
/// four policies each get their own.
const COLORS: [RGBColor; 10] = [
    RGBColor(89, 89, 89),
    RGBColor(242, 142, 43),
    RGBColor(78, 121, 167),
    RGBColor(89, 161, 79),
    RGBColor(225, 87, 89),
    RGBColor(176, 122, 161),
    RGBColor(118, 183, 178),
    RGBColor(237, 201, 72),
    RGBColor(156, 117, 95),
    RGBColor(255, 157, 167),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// (hour, mean of `values` over the bucket), skipping empty buckets.
fn buckets(values: &[f64], step_s: f64) -> Vec<(f64, f64)> {
    let per = crate::f64_to_usize((BUCKET_S / step_s).round()).max(1);
    values
        .chunks(per)
        .enumerate()
        .filter_map(|(i, c)| {
            let v: Vec<f64> = c.iter().copied().filter(|x| x.is_finite()).collect();
            (!v.is_empty()).then(|| {
                (
                    (i * per) as f64 * step_s / 3600.0,
                    v.iter().sum::<f64>() / v.len() as f64,
                )
            })
        })
        .collect()
}

type Chart<'a> = ChartContext<
    'a,
    SVGBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw(
    path: &Path,
    caption: &str,
    y_desc: &str,
    y_range: std::ops::Range<f64>,
    hours: f64,
    body: impl FnOnce(&mut Chart<'_>) -> Result<(), String>,
    y_names: Option<&[String]>,
) -> Result<(), PlotError> {
    let err = |e: String| PlotError {
        path: path.to_owned(),
        msg: e,
    };
    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(if y_names.is_some() { 110 } else { 60 })
        .build_cartesian_2d(0.0..hours, y_range)
        .map_err(|e| err(e.to_string()))?;
    let fmt = |y: &f64| match y_names {
        Some(n) => {
            let i = y.round();
            let idx = crate::f64_to_usize(i);
            if (y - i).abs() < 1e-6 && i >= 0.0 && idx < n.len() {
                n[idx].clone()
            } else {
                String::new()
            }
        }
        None => format!("{y:.0}"),
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("hours from the start (UTC)")
        .y_desc(y_desc)
        .x_labels(crate::f64_to_usize(hours / 3.0).clamp(8, 25))
        .y_label_formatter(&fmt);
    if let Some(n) = y_names {
        mesh.y_labels(n.len() * 2 + 1);
    }
    mesh.draw().map_err(|e| err(e.to_string()))?;
    body(&mut chart).map_err(err)?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

fn line(chart: &mut Chart<'_>, pts: Vec<(f64, f64)>, i: usize, label: &str) -> Result<(), String> {
    let c = color(i);
    chart
        .draw_series(LineSeries::new(pts, c.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label(label.to_owned())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    Ok(())
}

/// Writes `latency.svg`, `site.svg` and `demand.svg` into `dir`.
pub fn write_all(r: &SimResult, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let hours = f64::from(r.days) * 24.0;
    let mut out = Vec::new();

    let p = dir.join("latency.svg");
    let lat: Vec<Vec<(f64, f64)>> = r
        .policies
        .iter()
        .map(|pol| buckets(&pol.mean_per_step, r.step_s))
        .collect();
    let y_max = lat.iter().flatten().map(|x| x.1).fold(10.0_f64, f64::max) * 1.15;
    draw(
        &p,
        &format!("{}: request-weighted mean latency", r.scenario),
        "ms",
        0.0..y_max,
        hours,
        |c| {
            for (i, (pol, pts)) in r.policies.iter().zip(lat).enumerate() {
                line(c, pts, i, &pol.policy)?;
            }
            Ok(())
        },
        None,
    )?;
    out.push(p);

    let p = dir.join("site.svg");
    let n = r.sites.len();
    draw(
        &p,
        &format!("{}: serving site", r.scenario),
        "site",
        -0.5..(n as f64 - 0.5),
        hours,
        |c| {
            let k_n = r.policies.len() as f64;
            for (i, pol) in r.policies.iter().enumerate() {
                // Policies side by side around each site's line, so
                // identical choices stay visible.
                let off = (i as f64 - (k_n - 1.0) / 2.0) * 0.08;
                let mut pts = Vec::new();
                let mut prev: Option<usize> = None;
                for (k, &s) in pol.site_per_step.iter().enumerate() {
                    let h = k as f64 * r.step_s / 3600.0;
                    if let Some(q) = prev
                        && q != s
                    {
                        pts.push((h, q as f64 + off));
                    }
                    if prev != Some(s) {
                        pts.push((h, s as f64 + off));
                    }
                    prev = Some(s);
                }
                if let Some(q) = prev {
                    pts.push((hours, q as f64 + off));
                }
                line(c, pts, i, &pol.policy)?;
            }
            Ok(())
        },
        Some(&r.sites),
    )?;
    out.push(p);

    let p = dir.join("demand.svg");
    let per_region: Vec<Vec<(f64, f64)>> = (0..r.regions.len())
        .map(|j| {
            let rps: Vec<f64> = r.demand.iter().map(|row| row[j] / r.step_s).collect();
            buckets(&rps, r.step_s)
        })
        .collect();
    let y_max = per_region
        .iter()
        .flatten()
        .map(|x| x.1)
        .fold(1.0_f64, f64::max)
        * 1.15;
    draw(
        &p,
        &format!("{}: demand per client region", r.scenario),
        "requests/s",
        0.0..y_max,
        hours,
        |c| {
            for (i, (name, pts)) in r.regions.iter().zip(per_region).enumerate() {
                line(c, pts, i + 1, name)?;
            }
            Ok(())
        },
        None,
    )?;
    out.push(p);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_average_and_skip_gaps() {
        let v = [1.0, 3.0, f64::NAN, f64::NAN, 5.0, 7.0];
        assert_eq!(buckets(&v, 450.0), vec![(0.0, 2.0), (0.5, 6.0)]);
    }
}
