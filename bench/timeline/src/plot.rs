//! `timeline plot`: one panel per target (successful requests per 100 ms as a line, failed
//! ones as crosses, acknowledged writes that the new master does not have as triangles),
//! sharing the time axis, with the failover's events as dashed vertical
//! lines across all panels and labelled above them.
//!
//! One panel per target rather than three lines in one chart: before and after the failover
//! the three lines sit at the same height and hide each other; stacked, each target's gap
//! reads at a glance and lines up with the events.

use std::fmt::Write as _;
use std::path::PathBuf;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::args::Args;
use crate::load::BUCKET_MS;

const WIDTH: u32 = 1200;
const TITLE_H: u32 = 40;
const PANEL_H: u32 = 190;
const LEGEND_H: u32 = 36;
const LABEL_ROW_H: u32 = 18;
const FONT: &str = "sans-serif";
const LABEL_PX: u32 = 13;
/// Rough width of one character at LABEL_PX, for laying out the event labels (the SVG
/// viewer, not plotters, picks the real font).
const CHAR_PX: f64 = 7.2;

/// Okabe-Ito colors: distinguishable with the common color-vision deficiencies, and dark
/// enough on a white background.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
];
const EVENT_COLOR: RGBColor = RGBColor(60, 60, 60);

pub struct Options {
    csv: PathBuf,
    events: PathBuf,
    lost: Option<PathBuf>,
    out: PathBuf,
    title: String,
}

impl Options {
    pub fn parse(argv: &[String]) -> Result<Options, String> {
        let a = Args::parse(argv, &["--csv", "--events", "--lost", "--out", "--title"])?;
        Ok(Options {
            csv: a.req("--csv")?.into(),
            events: a.req("--events")?.into(),
            lost: a.opt("--lost").map(PathBuf::from),
            out: a.req("--out")?.into(),
            title: a.opt("--title").unwrap_or("Failover timeline").to_string(),
        })
    }
}

struct Series {
    name: String,
    /// (bucket start, unix ms; successful requests; failed requests)
    points: Vec<(f64, u64, u64)>,
    /// (bucket start, unix ms; acknowledged writes the new master does not have)
    lost: Vec<(f64, u64)>,
}

struct Event {
    unix_ms: f64,
    label: String,
    /// Index into the series, when the event belongs to one target (drawn in its color).
    target: Option<usize>,
}

pub fn run(opts: Options) -> Result<(), String> {
    let mut series = read_series(&opts.csv)?;
    if let Some(path) = &opts.lost {
        read_lost(path, &mut series)?;
    }
    let events = read_events(&opts.events, &series)?;
    draw(&opts, &series, &events).map_err(|e| format!("{}: {e}", opts.out.display()))
}

fn read_lines(path: &PathBuf) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // Skip the header.
    Ok(text.lines().skip(1).map(str::to_string).collect())
}

fn read_series(path: &PathBuf) -> Result<Vec<Series>, String> {
    let mut series: Vec<Series> = Vec::new();
    for (n, line) in read_lines(path)?.iter().enumerate() {
        let bad = || format!("{} line {}: cannot parse {line:?}", path.display(), n + 2);
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 5 {
            return Err(bad());
        }
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let point = (num(f[1])? as f64, num(f[2])?, num(f[3])? + num(f[4])?);
        match series.iter_mut().find(|s| s.name == f[0]) {
            Some(s) => s.points.push(point),
            None => series.push(Series {
                name: f[0].to_string(),
                points: vec![point],
                lost: Vec::new(),
            }),
        }
    }
    if series.is_empty() {
        return Err(format!("{}: no data", path.display()));
    }
    Ok(series)
}

/// `target,bucket_start_unix_ms,lost` rows, only buckets with lost writes.
fn read_lost(path: &PathBuf, series: &mut [Series]) -> Result<(), String> {
    for (n, line) in read_lines(path)?.iter().enumerate() {
        let bad = || format!("{} line {}: cannot parse {line:?}", path.display(), n + 2);
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 3 {
            return Err(bad());
        }
        let s = series.iter_mut().find(|s| s.name == f[0]).ok_or_else(bad)?;
        s.lost.push((
            f[1].parse().map_err(|_| bad())?,
            f[2].parse().map_err(|_| bad())?,
        ));
    }
    Ok(())
}

fn read_events(path: &PathBuf, series: &[Series]) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for (n, line) in read_lines(path)?.iter().enumerate() {
        let mut f = line.splitn(3, ',');
        let (Some(t), Some(label)) = (f.next(), f.next()) else {
            return Err(format!(
                "{} line {}: expected unix_ms,label[,target]",
                path.display(),
                n + 2
            ));
        };
        let unix_ms = t
            .parse::<f64>()
            .map_err(|_| format!("{} line {}: bad time {t:?}", path.display(), n + 2))?;
        let target = f
            .next()
            .and_then(|name| series.iter().position(|s| s.name == name));
        events.push(Event {
            unix_ms,
            label: label.to_string(),
            target,
        });
    }
    Ok(events)
}

fn draw(
    opts: &Options,
    series: &[Series],
    events: &[Event],
) -> Result<(), Box<dyn std::error::Error>> {
    // Time zero: the first event (the failover command), else the start of the data.
    let first_bucket = series[0].points[0].0;
    let t0 = events.first().map_or(first_bucket, |e| e.unix_ms);
    let secs = |unix_ms: f64| (unix_ms - t0) / 1000.0;
    let x_desc = match events.first() {
        Some(e) => format!("seconds since {}", e.label),
        None => "seconds".to_string(),
    };
    let x_min = secs(first_bucket);
    let x_max = series
        .iter()
        .filter_map(|s| s.points.last())
        .map(|p| secs(p.0 + BUCKET_MS as f64))
        .fold(x_min + 1.0, f64::max);
    let y_top = series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1.max(p.2))
                .chain(s.lost.iter().map(|l| l.1))
        })
        .max()
        .unwrap_or(1)
        .max(1) as f64
        // Headroom for the panel's name above the line.
        * 1.3;

    // Event labels go in rows above the panels; a label takes the first row where it does
    // not overlap the one before it. Pixel positions are estimated from the layout below
    // (left margin + y label area; right margin), which fixes the plotting width.
    let (plot_left, plot_right) = (10.0 + 64.0, WIDTH as f64 - 24.0);
    let x_px = |t: f64| plot_left + (t - x_min) / (x_max - x_min) * (plot_right - plot_left);
    let mut rows: Vec<f64> = Vec::new(); // right end of the last label in each row
    let mut placed = Vec::new(); // (event, text, left px, row)
    for e in events {
        let t = secs(e.unix_ms);
        if !(x_min..=x_max).contains(&t) {
            continue;
        }
        let text = if t == 0.0 {
            format!("{} (0 s)", e.label)
        } else {
            format!("{} {t:+.2} s", e.label)
        };
        let width = text.chars().count() as f64 * CHAR_PX;
        // Right of the line, unless that runs off the picture.
        let left = if x_px(t) + 4.0 + width < WIDTH as f64 - 4.0 {
            x_px(t) + 4.0
        } else {
            x_px(t) - 4.0 - width
        };
        let row = match rows.iter().position(|&end| end + 10.0 < left) {
            Some(r) => r,
            None => {
                rows.push(0.0);
                rows.len() - 1
            }
        };
        rows[row] = left + width;
        placed.push((e, t, text, left, row));
    }
    let labels_h = rows.len() as u32 * LABEL_ROW_H + 6;
    let height = TITLE_H + labels_h + PANEL_H * series.len() as u32 + 45 + LEGEND_H;

    let root = SVGBackend::new(&opts.out, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title_area, rest) = root.split_vertically(TITLE_H);
    // The label strip: drawn on `root` in absolute pixels, to line up with the panels.
    let (_labels_strip, rest) = rest.split_vertically(labels_h);
    let (panels_area, legend_area) = rest.split_vertically(height - TITLE_H - labels_h - LEGEND_H);
    title_area.draw(&Text::new(
        opts.title.clone(),
        (14, 12),
        (FONT, 18).into_font().style(FontStyle::Bold).color(&BLACK),
    ))?;

    // Panels: the last one is taller by the x axis labels.
    let mut panel_areas = Vec::new();
    let mut area = panels_area;
    for i in 0..series.len() {
        if i + 1 == series.len() {
            panel_areas.push(area.clone());
        } else {
            let (top, bottom) = area.split_vertically(PANEL_H);
            panel_areas.push(top);
            area = bottom;
        }
    }
    let mut event_px: Vec<i32> = Vec::new();
    for (i, (s, area)) in series.iter().zip(&panel_areas).enumerate() {
        let last = i + 1 == series.len();
        let color = PALETTE[i % PALETTE.len()];
        let mut chart = ChartBuilder::on(area)
            .margin_left(10)
            .margin_right(24)
            .margin_top(6)
            .margin_bottom(if last { 4 } else { 0 })
            .x_label_area_size(if last { 45 } else { 0 })
            .y_label_area_size(64)
            .build_cartesian_2d(x_min..x_max, 0.0..y_top)?;
        let mut mesh = chart.configure_mesh();
        mesh.y_desc("req / 100 ms")
            .y_labels(5)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_labels(16)
            .x_label_formatter(&|v| format!("{v:.1}"))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .label_style((FONT, 12))
            .axis_desc_style((FONT, 13));
        if last {
            mesh.x_desc(x_desc.as_str());
        }
        mesh.draw()?;

        for e in events {
            let t = secs(e.unix_ms);
            if (x_min..=x_max).contains(&t) {
                let c = e.target.map_or(EVENT_COLOR, |k| PALETTE[k % PALETTE.len()]);
                chart.draw_series(std::iter::once(DashedPathElement::new(
                    vec![(t, 0.0), (t, y_top)],
                    5,
                    4,
                    c.stroke_width(1),
                )))?;
            }
        }
        let mid = |p: &(f64, u64, u64)| secs(p.0 + BUCKET_MS as f64 / 2.0);
        chart.draw_series(LineSeries::new(
            s.points.iter().map(|p| (mid(p), p.1 as f64)),
            color.stroke_width(2),
        ))?;
        chart.draw_series(
            s.points
                .iter()
                .filter(|p| p.2 > 0)
                .map(|p| Cross::new((mid(p), p.2 as f64), 4, color.stroke_width(2))),
        )?;
        chart.draw_series(s.lost.iter().map(|&(t, n)| {
            TriangleMarker::new(
                (secs(t + BUCKET_MS as f64 / 2.0), n as f64),
                5,
                color.filled(),
            )
        }))?;
        let total_failed: u64 = s.points.iter().map(|p| p.2).sum();
        let mut name = format!("{}: {} failed", s.name, total_failed);
        if opts.lost.is_some() {
            let lost: u64 = s.lost.iter().map(|l| l.1).sum();
            let _ = write!(name, ", {lost} acknowledged then lost");
        }
        let (px, py) = chart.backend_coord(&(x_min, y_top));
        // On white, so the event lines behind it do not cross the text.
        let width = (name.chars().count() as f64 * CHAR_PX * 1.1) as i32;
        root.draw(&Rectangle::new(
            [(px + 4, py + 2), (px + 12 + width, py + 22)],
            WHITE.filled(),
        ))?;
        root.draw(&Text::new(
            name,
            (px + 8, py + 4),
            (FONT, 14).into_font().style(FontStyle::Bold).color(&color),
        ))?;
        if i == 0 {
            event_px = placed
                .iter()
                .map(|(_, t, ..)| chart.backend_coord(&(*t, y_top)).0)
                .collect();
        }
    }

    // Labels, each with a tick down to the panels so it is clear which line it names.
    let labels_top = (TITLE_H) as i32;
    let labels_bottom = (TITLE_H + labels_h) as i32;
    for ((e, _, text, left, row), x) in placed.iter().zip(&event_px) {
        let c = e.target.map_or(EVENT_COLOR, |k| PALETTE[k % PALETTE.len()]);
        let y = labels_top + (*row as u32 * LABEL_ROW_H) as i32 + 2;
        root.draw(&Text::new(
            text.clone(),
            (*left as i32, y),
            (FONT, LABEL_PX).into_font().color(&c),
        ))?;
        root.draw(&DashedPathElement::new(
            vec![(*x, y + LABEL_ROW_H as i32 - 3), (*x, labels_bottom + 6)],
            5,
            4,
            c.stroke_width(1),
        ))?;
    }
    legend(&legend_area, opts.lost.is_some())?;
    root.present()?;
    Ok(())
}

fn legend(
    area: &DrawingArea<SVGBackend, Shift>,
    lost: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let style = (FONT, 13).into_font().color(&BLACK);
    let y = 14;
    let mut x = 80;
    let mut item = |marker: &dyn Fn(i32) -> Result<(), Box<dyn std::error::Error>>,
                    text: &str|
     -> Result<(), Box<dyn std::error::Error>> {
        marker(x)?;
        area.draw(&Text::new(text.to_string(), (x + 38, y - 7), style.clone()))?;
        x += 38 + (text.chars().count() as f64 * CHAR_PX) as i32 + 24;
        Ok(())
    };
    item(
        &|x| {
            Ok(area.draw(&PathElement::new(
                vec![(x, y), (x + 30, y)],
                BLACK.stroke_width(2),
            ))?)
        },
        "successful requests",
    )?;
    item(
        &|x| Ok(area.draw(&Cross::new((x + 15, y), 4, BLACK.stroke_width(2)))?),
        "failed (refused, closed, timed out, error reply)",
    )?;
    if lost {
        item(
            &|x| Ok(area.draw(&TriangleMarker::new((x + 15, y), 5, BLACK.filled()))?),
            "acknowledged, then lost",
        )?;
    }
    item(
        &|x| {
            Ok(area.draw(&DashedPathElement::new(
                vec![(x, y), (x + 30, y)],
                5,
                4,
                EVENT_COLOR.stroke_width(1),
            ))?)
        },
        "event",
    )?;
    Ok(())
}
