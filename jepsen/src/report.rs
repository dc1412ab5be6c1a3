//! A run's report for a person: one self-contained HTML page (inline CSS and SVG, nothing
//! fetched) with the verdicts, the op counts, latency and throughput plots with the nemesis
//! intervals shaded behind them, and for a failing key a timeline of its operations.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::ops::Range;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::history::{NemesisEvent, Op, Outcome, Record, Results, Validity};

/// Width of every plot, pixels.
const PLOT_W: u32 = 1200;
/// Height of every plotters plot, pixels.
const PLOT_H: u32 = 400;
/// Width of the legend panel at the right of each plotters plot, pixels.
const LEGEND_W: u32 = 175;
/// The most points drawn in the all-operations latency scatter (after merging points that
/// land on the same 2-pixel cell).
const SCATTER_MAX_POINTS: usize = 12_000;
/// The most points drawn in each per-workload latency scatter.
const WORKLOAD_SCATTER_MAX_POINTS: usize = 4_000;
/// The most one-second (or wider) buckets in the throughput plot.
const MAX_BUCKETS: u64 = 1_000;
/// The most rows in a failing key's table of operations.
const KEY_TABLE_MAX_ROWS: usize = 400;
/// The most operations drawn in a failing key's timeline.
const KEY_TIMELINE_MAX_OPS: usize = 1_000;
/// The most failing keys given a section of their own.
const MAX_FAILING_KEYS: usize = 5;
/// The most rows in the nemesis table.
const NEMESIS_TABLE_MAX_ROWS: usize = 1_000;

/// Outcome colours: ok blue, fail red, info orange.
const OK_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const FAIL_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const INFO_COLOR: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

/// Nemesis band colours, chosen to stay apart from the outcome colours; cycled by name.
const NEMESIS_COLORS: [RGBColor; 7] = [
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
];
/// How opaque a nemesis band is in the plots.
const BAND_ALPHA: f64 = 0.18;

/// The outcomes in drawing order: the rarer, more interesting ones last so they end up on top.
const OUTCOMES: [Outcome; 3] = [Outcome::Ok, Outcome::Info, Outcome::Fail];

const STYLE: &str = "
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1260px;padding:0 1em;color:#222;background:#fff}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555;margin:.2em 0}
.verdict{display:inline-block;font-size:2.4em;font-weight:bold;color:#fff;padding:.15em .6em;border-radius:.2em;margin:.4em 0}
.v-valid{background:#2b8a3e}.v-invalid{background:#c92a2a}.v-unknown{background:#e8590c}
.t-valid{color:#2b8a3e;font-weight:bold}.t-invalid{color:#c92a2a;font-weight:bold}.t-unknown{color:#e8590c;font-weight:bold}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pre{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.95em}
.o-ok{color:#1f77b4}.o-fail{color:#d62728;font-weight:bold}.o-info{color:#e07000;font-weight:bold}
.caption{color:#555;font-size:.9em;margin:.2em 0 1em}
.err{color:#c92a2a}
svg{max-width:100%;height:auto;display:block}
";

/// Renders a run's results and history as one self-contained HTML page for a person to read.
/// Never panics on odd data (empty history, zero or inverted times, huge values).
pub fn render(results: &Results, records: &[Record]) -> String {
    let ops: Vec<&Op> = records
        .iter()
        .filter_map(|r| match r {
            Record::Op(op) => Some(op),
            Record::Nemesis(_) => None,
        })
        .collect();
    let nemeses: Vec<&NemesisEvent> = records
        .iter()
        .filter_map(|r| match r {
            Record::Nemesis(n) => Some(n),
            Record::Op(_) => None,
        })
        .collect();
    let palette = NemesisPalette::new(&nemeses);
    let x_max = run_span_s(&ops, &nemeses);

    let mut page = String::with_capacity(64 * 1024);
    write_head(&mut page, results);
    write_summary(&mut page, results, &ops, &nemeses);
    write_checkers(&mut page, results);
    write_counts(&mut page, results, &ops);
    write_plots(&mut page, &ops, &nemeses, &palette, x_max);
    write_failing_keys(&mut page, results, &ops, &nemeses, &palette);
    write_nemesis_table(&mut page, &nemeses, &palette);
    page.push_str("</body>\n</html>\n");
    page
}

// ---------------------------------------------------------------------------------------------
// Page sections
// ---------------------------------------------------------------------------------------------

fn write_head(page: &mut String, results: &Results) {
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{} — seed {} — {}</title>\n<style>{}</style>\n</head>\n<body>\n",
        esc(&results.test),
        results.seed,
        validity_word(results.valid),
        STYLE
    );
}

fn write_summary(page: &mut String, results: &Results, ops: &[&Op], nemeses: &[&NemesisEvent]) {
    let _ = writeln!(page, "<h1>{}</h1>", esc(&results.test));
    let _ = writeln!(
        page,
        "<p class=\"meta\">seed <b>{}</b> · {} nodes, {} managers · {} s · nemeses: {} · workloads: {}</p>",
        results.seed,
        results.nodes,
        results.managers,
        results.time_s,
        list_or_none(&results.nemeses),
        list_or_none(&results.workloads),
    );
    let _ = writeln!(
        page,
        "<p class=\"meta\">history: {} operations, {} nemesis intervals</p>",
        ops.len(),
        nemeses.len()
    );
    let _ = writeln!(
        page,
        "<div class=\"verdict v-{0}\">{1}</div>\n<p>exit code <b>{2}</b>: {3}</p>",
        validity_word(results.valid),
        validity_word(results.valid).to_uppercase(),
        results.valid.exit_code(),
        exit_meaning(results.valid)
    );
}

fn write_checkers(page: &mut String, results: &Results) {
    page.push_str("<h2>Checkers</h2>\n");
    if results.checkers.is_empty() {
        page.push_str("<p>No checker verdicts recorded.</p>\n");
        return;
    }
    page.push_str(
        "<table>\n<tr><th>checker</th><th>valid</th><th>anomaly</th><th>detail</th>\
         <th>failing key</th></tr>\n",
    );
    for v in &results.checkers {
        let _ = writeln!(
            page,
            "<tr><td>{checker}</td><td class=\"t-{valid}\">{valid}</td><td>{anomaly}</td>\
             <td class=\"pre\">{detail}</td><td>{key}</td></tr>",
            checker = esc(&v.checker),
            valid = validity_word(v.valid),
            anomaly = esc(v.anomaly.as_deref().unwrap_or("")),
            detail = esc(&v.detail),
            key = esc(v.failing_key.as_deref().unwrap_or("")),
        );
    }
    page.push_str("</table>\n");
}

fn write_counts(page: &mut String, results: &Results, ops: &[&Op]) {
    page.push_str("<h2>Operations</h2>\n");
    page.push_str(
        "<table>\n<tr><th>outcome</th><th>count (results)</th><th>in history</th>\
         <th>p50 latency ms</th><th>p99 latency ms</th><th>max latency ms</th></tr>\n",
    );
    for outcome in [Outcome::Ok, Outcome::Fail, Outcome::Info] {
        let mut lat: Vec<u64> = ops
            .iter()
            .filter(|o| o.outcome == outcome)
            .map(|o| latency_ns(o))
            .collect();
        lat.sort_unstable();
        let counted = match outcome {
            Outcome::Ok => results.ops.ok,
            Outcome::Fail => results.ops.fail,
            Outcome::Info => results.ops.info,
        };
        let cell = |p: Option<u64>| p.map(|ns| fmt_ms(ns as f64 / 1e6)).unwrap_or_default();
        let _ = writeln!(
            page,
            "<tr><td class=\"o-{0}\">{0}</td><td class=\"num\">{1}</td><td class=\"num\">{2}</td>\
             <td class=\"num\">{3}</td><td class=\"num\">{4}</td><td class=\"num\">{5}</td></tr>",
            outcome_word(outcome),
            counted,
            lat.len(),
            cell(percentile(&lat, 0.5)),
            cell(percentile(&lat, 0.99)),
            cell(lat.last().copied()),
        );
    }
    page.push_str("</table>\n");
    let inverted = ops.iter().filter(|o| o.end_ns < o.start_ns).count();
    if inverted > 0 {
        let _ = writeln!(
            page,
            "<p class=\"caption\">{inverted} operations were recorded as ending before they \
             started; their latency is taken as 0.</p>"
        );
    }

    page.push_str("<h3>Failover</h3>\n");
    let f = &results.failover;
    if f.samples_ms.is_empty() && f.median_ms.is_none() && f.p99_ms.is_none() {
        page.push_str("<p>No failover measurements.</p>\n");
    } else {
        let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "–".into());
        let _ = writeln!(
            page,
            "<p>Time from a leader kill to a new leader's committed write: median <b>{}</b>, \
             p99 <b>{}</b>, {} samples.</p>",
            ms(f.median_ms),
            ms(f.p99_ms),
            f.samples_ms.len()
        );
    }
}

fn write_plots(
    page: &mut String,
    ops: &[&Op],
    nemeses: &[&NemesisEvent],
    palette: &NemesisPalette,
    x_max: f64,
) {
    page.push_str("<h2>Latency</h2>\n");
    if ops.is_empty() {
        page.push_str("<p>No operations recorded: nothing to plot.</p>\n");
        return;
    }
    let (svg, caption) = latency_plot(
        "Latency of every operation",
        ops,
        nemeses,
        palette,
        x_max,
        SCATTER_MAX_POINTS,
    );
    page.push_str(&svg);
    let _ = writeln!(page, "<p class=\"caption\">{}</p>", caption);

    page.push_str("<h2>Throughput</h2>\n");
    let (svg, caption) = throughput_plot(ops, nemeses, palette, x_max);
    page.push_str(&svg);
    let _ = writeln!(page, "<p class=\"caption\">{}</p>", caption);

    let workloads: BTreeSet<&str> = ops.iter().map(|o| o.workload.as_str()).collect();
    if workloads.len() > 1 {
        page.push_str("<h2>Latency by workload</h2>\n");
        for w in workloads {
            let wops: Vec<&Op> = ops.iter().copied().filter(|o| o.workload == w).collect();
            let (svg, caption) = latency_plot(
                &format!("Latency: {w}"),
                &wops,
                nemeses,
                palette,
                x_max,
                WORKLOAD_SCATTER_MAX_POINTS,
            );
            let _ = writeln!(page, "<h3>{}</h3>", esc(w));
            page.push_str(&svg);
            let _ = writeln!(page, "<p class=\"caption\">{}</p>", caption);
        }
    }
}

fn write_failing_keys(
    page: &mut String,
    results: &Results,
    ops: &[&Op],
    nemeses: &[&NemesisEvent],
    palette: &NemesisPalette,
) {
    let mut keys: Vec<&str> = Vec::new();
    for v in &results.checkers {
        if let Some(k) = v.failing_key.as_deref() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    if keys.len() > MAX_FAILING_KEYS {
        let _ = writeln!(
            page,
            "<p class=\"caption\">{} failing keys; only the first {MAX_FAILING_KEYS} are shown \
             below.</p>",
            keys.len()
        );
        keys.truncate(MAX_FAILING_KEYS);
    }
    for key in keys {
        let _ = writeln!(page, "<h2>Failing key {}</h2>", esc(key));
        let flagged: Vec<String> = results
            .checkers
            .iter()
            .filter(|v| v.failing_key.as_deref() == Some(key))
            .map(|v| match &v.anomaly {
                Some(a) => format!("{} ({})", esc(&v.checker), esc(a)),
                None => esc(&v.checker),
            })
            .collect();
        let _ = writeln!(page, "<p>Flagged by {}.</p>", flagged.join(", "));

        let mut kops: Vec<&Op> = ops
            .iter()
            .copied()
            .filter(|o| o.key.as_deref() == Some(key))
            .collect();
        kops.sort_by_key(|o| (o.start_ns, o.end_ns, o.process));
        if kops.is_empty() {
            page.push_str("<p>The history holds no operations on this key.</p>\n");
            continue;
        }

        let shown = &kops[..kops.len().min(KEY_TIMELINE_MAX_OPS)];
        page.push_str(&key_timeline(shown, nemeses, palette));
        let mut caption = format!(
            "{} operations on this key; one row per process, bars from invocation to completion; \
             the time axis spans this key's operations. Hover a bar for its details.",
            kops.len()
        );
        if shown.len() < kops.len() {
            let _ = write!(
                caption,
                " Only the first {} (by invocation) are drawn.",
                shown.len()
            );
        }
        let _ = writeln!(page, "<p class=\"caption\">{caption}</p>");

        write_key_table(page, &kops);
    }
}

fn write_key_table(page: &mut String, kops: &[&Op]) {
    page.push_str(
        "<table>\n<tr><th>process</th><th>node</th><th>f</th><th>value</th><th>expected</th>\
         <th>result</th><th>start ms</th><th>end ms</th><th>outcome</th><th>error</th></tr>\n",
    );
    for o in kops.iter().take(KEY_TABLE_MAX_ROWS) {
        let is_read = o.f == "read";
        let is_cas = o.f == "cas";
        let _ = writeln!(
            page,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"o-{outcome}\">{outcome}</td><td class=\"pre\">{}</td></tr>",
            o.process,
            o.node,
            esc(&o.f),
            opt_cell(o.value, false),
            opt_cell(o.expected, is_cas),
            opt_cell(o.result, is_read && o.outcome == Outcome::Ok),
            fmt_fixed(o.start_ns as f64 / 1e6, 3),
            fmt_fixed(o.end_ns as f64 / 1e6, 3),
            esc(o.error.as_deref().unwrap_or("")),
            outcome = outcome_word(o.outcome),
        );
    }
    page.push_str("</table>\n");
    if kops.len() > KEY_TABLE_MAX_ROWS {
        let _ = writeln!(
            page,
            "<p class=\"caption\">Table shows the first {KEY_TABLE_MAX_ROWS} of {} operations \
             (by invocation); the full list is in history.jsonl.</p>",
            kops.len()
        );
    }
}

fn write_nemesis_table(page: &mut String, nemeses: &[&NemesisEvent], palette: &NemesisPalette) {
    page.push_str("<h2>Nemesis</h2>\n");
    if nemeses.is_empty() {
        page.push_str("<p>No faults were injected.</p>\n");
        return;
    }
    let mut sorted: Vec<&NemesisEvent> = nemeses.to_vec();
    sorted.sort_by_key(|n| (n.start_ns, n.end_ns));
    page.push_str(
        "<table>\n<tr><th>name</th><th>detail</th><th>start s</th><th>end s</th>\
         <th>duration s</th></tr>\n",
    );
    for n in sorted.iter().take(NEMESIS_TABLE_MAX_ROWS) {
        let _ = writeln!(
            page,
            "<tr><td><span style=\"color:{}\">■</span> {}</td><td class=\"pre\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            hex(palette.color(&n.name)),
            esc(&n.name),
            esc(&n.detail),
            fmt_fixed(n.start_ns as f64 / 1e9, 3),
            fmt_fixed(n.end_ns as f64 / 1e9, 3),
            fmt_fixed(n.end_ns.saturating_sub(n.start_ns) as f64 / 1e9, 3),
        );
    }
    page.push_str("</table>\n");
    if sorted.len() > NEMESIS_TABLE_MAX_ROWS {
        let _ = writeln!(
            page,
            "<p class=\"caption\">Showing the first {NEMESIS_TABLE_MAX_ROWS} of {} intervals.</p>",
            sorted.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Plots (plotters, SVG backend)
// ---------------------------------------------------------------------------------------------

/// Colours for nemesis names, assigned in name order so a name keeps its colour in every plot.
struct NemesisPalette {
    names: Vec<String>,
}

impl NemesisPalette {
    fn new(nemeses: &[&NemesisEvent]) -> Self {
        let set: BTreeSet<&str> = nemeses.iter().map(|n| n.name.as_str()).collect();
        NemesisPalette {
            names: set.into_iter().map(String::from).collect(),
        }
    }

    fn color(&self, name: &str) -> RGBColor {
        let i = self.names.iter().position(|n| n == name).unwrap_or(0);
        NEMESIS_COLORS[i % NEMESIS_COLORS.len()]
    }
}

/// Draws a chart into an SVG string; a drawing error (or a panic inside plotters) becomes a
/// short message in the page instead.
fn plot_svg<F>(what: &str, draw: F) -> String
where
    F: FnOnce(
        &DrawingArea<SVGBackend<'_>, Shift>,
        &DrawingArea<SVGBackend<'_>, Shift>,
    ) -> Result<(), String>,
{
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut buf = String::new();
        let res = {
            let root = SVGBackend::with_string(&mut buf, (PLOT_W, PLOT_H)).into_drawing_area();
            let drawn = root.fill(&WHITE).map_err(err_text).and_then(|()| {
                let (chart, legend) = root.split_horizontally(PLOT_W - LEGEND_W);
                draw(&chart, &legend)
            });
            let presented = root.present().map_err(err_text);
            drawn.and(presented)
        };
        res.map(|()| buf)
    }));
    match outcome {
        Ok(Ok(svg)) => svg,
        Ok(Err(e)) => format!(
            "<p class=\"err\">The {} plot could not be drawn: {}</p>\n",
            esc(what),
            esc(&e)
        ),
        Err(_) => format!(
            "<p class=\"err\">The {} plot could not be drawn (plotting library panicked).</p>\n",
            esc(what)
        ),
    }
}

fn err_text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Shades each nemesis interval as a translucent band over the whole y range; returns the
/// legend entries (one per nemesis name drawn).
fn draw_bands<Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    nemeses: &[&NemesisEvent],
    palette: &NemesisPalette,
    x_range: Range<f64>,
    y_range: Range<f64>,
) -> Result<Vec<LegendEntry>, String>
where
    Y: Ranged<ValueType = f64>,
{
    let mut entries = Vec::new();
    let min_w = (x_range.end - x_range.start) * 0.002;
    for name in &palette.names {
        let color = palette.color(name);
        let bands: Vec<(f64, f64)> = nemeses
            .iter()
            .filter(|n| &n.name == name)
            .filter_map(|n| {
                let a = n.start_ns as f64 / 1e9;
                let b = (n.end_ns.max(n.start_ns) as f64 / 1e9).max(a + min_w);
                let (a, b) = (a.max(x_range.start), b.min(x_range.end));
                (a < b).then_some((a, b))
            })
            .collect();
        if bands.is_empty() {
            continue;
        }
        let (y0, y1) = (y_range.start, y_range.end);
        let style = color.mix(BAND_ALPHA).filled();
        chart
            .draw_series(
                bands
                    .into_iter()
                    .map(|(a, b)| Rectangle::new([(a, y0), (b, y1)], style)),
            )
            .map_err(err_text)?;
        entries.push(LegendEntry {
            label: name.clone(),
            color,
            swatch: Swatch::Band,
        });
    }
    Ok(entries)
}

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
enum Swatch {
    Band,
    Dot,
    Line,
}

/// One line of a plot's legend.
struct LegendEntry {
    label: String,
    color: RGBColor,
    swatch: Swatch,
}

/// Draws the legend in its own panel beside the chart, so it never hides data.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[LegendEntry],
) -> Result<(), String> {
    const ROW: i32 = 20;
    const MAX_ROWS: usize = 16;
    let font = ("sans-serif", 13)
        .into_font()
        .into_text_style(area)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let mut y = 50;
    for (i, e) in entries.iter().enumerate() {
        if i == MAX_ROWS {
            area.draw(&Text::new(
                format!("… {} more", entries.len() - MAX_ROWS),
                (8, y),
                font.clone(),
            ))
            .map_err(err_text)?;
            break;
        }
        match e.swatch {
            Swatch::Band => area.draw(&Rectangle::new(
                [(6, y - 7), (22, y + 7)],
                e.color.mix(BAND_ALPHA * 2.5).filled(),
            )),
            Swatch::Dot => area.draw(&Circle::new((14, y), 4, e.color.filled())),
            Swatch::Line => area.draw(&PathElement::new(
                vec![(6, y), (22, y)],
                e.color.stroke_width(2),
            )),
        }
        .map_err(err_text)?;
        area.draw(&Text::new(e.label.clone(), (28, y), font.clone()))
            .map_err(err_text)?;
        y += ROW;
    }
    Ok(())
}

/// The latency scatter: x = invocation time (s), y = latency (ms, log scale), one series per
/// outcome, nemesis bands behind. Returns the SVG (or an error note) and a caption.
fn latency_plot(
    title: &str,
    ops: &[&Op],
    nemeses: &[&NemesisEvent],
    palette: &NemesisPalette,
    x_max: f64,
    max_points: usize,
) -> (String, String) {
    // The lower end of the log axis: a little below the fastest op, never below 0.1 ms (faster
    // ops, and those recorded with end < start, sit on the floor).
    let fastest = ops
        .iter()
        .map(|o| latency_ns(o))
        .min()
        .map(|l| l as f64 / 1e6)
        .unwrap_or(0.1);
    let floor = (fastest / 1.5).max(0.1);
    let max_lat = ops
        .iter()
        .map(|o| latency_ns(o) as f64 / 1e6)
        .fold(floor, f64::max);
    // Ops on the floor stay just above the x axis.
    let y_range = floor / 1.25..(max_lat * 1.5).max(floor * 10.0);
    let x_range = 0.0..x_max;

    let mut caption = String::new();
    let svg = plot_svg("latency", |root, legend_area| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                x_range.clone(),
                y_range
                    .clone()
                    .log_scale()
                    .with_key_points(log_ticks(y_range.clone())),
            )
            .map_err(err_text)?;
        chart
            .configure_mesh()
            .x_desc("time since start (s)")
            .y_desc("latency (ms, log)")
            .x_label_formatter(&|v| fmt_axis(*v))
            .y_label_formatter(&|v| fmt_ms(*v))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err_text)?;
        let mut legend = draw_bands(
            &mut chart,
            nemeses,
            palette,
            x_range.clone(),
            y_range.clone(),
        )?;

        // Points per outcome, merged by the 2-pixel cell they land on (drawn once: same picture).
        let mut per_outcome: Vec<Scatter> = Vec::new();
        for outcome in OUTCOMES {
            let mut seen: HashSet<(i32, i32)> = HashSet::new();
            let mut pts = Vec::new();
            let mut slowest: Option<(f64, f64)> = None;
            let mut total = 0usize;
            for o in ops.iter().filter(|o| o.outcome == outcome) {
                total += 1;
                let p = (
                    o.start_ns as f64 / 1e9,
                    (latency_ns(o) as f64 / 1e6).max(floor),
                );
                if slowest.is_none_or(|s| p.1 > s.1) {
                    slowest = Some(p);
                }
                let (px, py) = chart.backend_coord(&p);
                if seen.insert((px.div_euclid(2), py.div_euclid(2))) {
                    pts.push(p);
                }
            }
            // The slowest op goes last, where thinning always keeps it.
            if let Some(s) = slowest {
                if let Some(pos) = pts.iter().position(|&p| p == s) {
                    pts.remove(pos);
                }
                pts.push(s);
            }
            per_outcome.push(Scatter {
                outcome,
                pts,
                total,
            });
        }
        let drawn_before: usize = per_outcome.iter().map(|g| g.pts.len()).sum();
        let sampled = thin(&mut per_outcome, max_points);
        let drawn: usize = per_outcome.iter().map(|g| g.pts.len()).sum();

        for Scatter {
            outcome,
            pts,
            total,
        } in &per_outcome
        {
            if *total == 0 {
                continue;
            }
            let color = outcome_color(*outcome);
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 2, color.filled())))
                .map_err(err_text)?;
            legend.push(LegendEntry {
                label: format!("{} ({})", outcome_word(*outcome), total),
                color,
                swatch: Swatch::Dot,
            });
        }
        draw_legend(legend_area, &legend)?;

        caption = format!(
            "{} operations; x: invocation time, y: latency (completion − invocation), log scale. \
             Shaded bands: nemesis intervals.",
            ops.len()
        );
        if drawn < ops.len() {
            let _ = write!(
                caption,
                " {drawn} points drawn: operations landing on the same 2-pixel cell are drawn once"
            );
            if sampled {
                let _ = write!(
                    caption,
                    ", and the remaining {drawn_before} were thinned by an even, deterministic \
                     sample per outcome (proportional, but rare outcomes keep a minimum share; \
                     each outcome's slowest op always kept)"
                );
            }
            caption.push('.');
        }
        Ok(())
    });
    (svg, caption)
}

/// One outcome's points in a latency scatter.
struct Scatter {
    outcome: Outcome,
    /// (invocation s, latency ms), in history order; the slowest op last.
    pts: Vec<(f64, f64)>,
    /// How many ops it stands for.
    total: usize,
}

/// Thins the points so at most `max` remain, keeping the outcomes' proportions except that
/// each outcome keeps at least `max / 8` points (all of them if it has fewer), so rare
/// outcomes stay visible. Each group is sampled evenly by index (deterministic), always keeping
/// its last point (the slowest op). Returns whether anything was dropped.
fn thin(groups: &mut [Scatter], max: usize) -> bool {
    let total: usize = groups.iter().map(|g| g.pts.len()).sum();
    if total <= max {
        return false;
    }
    let guaranteed: Vec<usize> = groups.iter().map(|g| g.pts.len().min(max / 8)).collect();
    let rest = max.saturating_sub(guaranteed.iter().sum());
    let beyond: usize = groups
        .iter()
        .zip(&guaranteed)
        .map(|(group, g)| group.pts.len() - g)
        .sum();
    for (group, &g) in groups.iter_mut().zip(&guaranteed) {
        let pts = &mut group.pts;
        let extra = (rest as u128 * (pts.len() - g) as u128 / beyond.max(1) as u128) as usize;
        let budget = (g + extra).min(pts.len());
        if budget < pts.len() {
            let len = pts.len();
            let last = pts.last().copied();
            let mut kept: Vec<(f64, f64)> = (0..budget.saturating_sub(1))
                .filter_map(|j| pts.get(j * len / budget).copied())
                .collect();
            kept.extend(last);
            *pts = kept;
        }
    }
    true
}

/// Completions per second per outcome (bucketed by completion time), with nemesis bands.
fn throughput_plot(
    ops: &[&Op],
    nemeses: &[&NemesisEvent],
    palette: &NemesisPalette,
    x_max: f64,
) -> (String, String) {
    const NS: u64 = 1_000_000_000;
    let last_s = ops.iter().map(|o| o.end_ns / NS).max().unwrap_or(0);
    let width_s = (last_s / MAX_BUCKETS + 1).max(1);
    let buckets = (last_s / width_s + 1) as usize;
    let mut counts: Vec<[u64; 3]> = vec![[0; 3]; buckets];
    for o in ops {
        let b = ((o.end_ns / NS) / width_s) as usize;
        if let Some(c) = counts.get_mut(b.min(buckets - 1)) {
            c[outcome_index(o.outcome)] += 1;
        }
    }
    let rate = |c: u64| c as f64 / width_s as f64;
    let y_top = counts
        .iter()
        .flat_map(|c| c.iter().copied())
        .map(rate)
        .fold(1.0, f64::max)
        * 1.1;
    let x_range = 0.0..x_max;
    let y_range = 0.0..y_top;

    let svg = plot_svg("throughput", |root, legend_area| {
        let mut chart = ChartBuilder::on(root)
            .caption("Throughput", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range.clone(), y_range.clone())
            .map_err(err_text)?;
        chart
            .configure_mesh()
            .x_desc("time since start (s)")
            .y_desc("completed ops / s")
            .x_label_formatter(&|v| fmt_axis(*v))
            .y_label_formatter(&|v| fmt_axis(*v))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err_text)?;
        let mut legend = draw_bands(
            &mut chart,
            nemeses,
            palette,
            x_range.clone(),
            y_range.clone(),
        )?;
        for outcome in OUTCOMES {
            let i = outcome_index(outcome);
            let total: u64 = counts.iter().map(|c| c[i]).sum();
            if total == 0 {
                continue;
            }
            let color = outcome_color(outcome);
            let line = counts.iter().enumerate().map(|(b, c)| {
                let mid = (b as f64 + 0.5) * width_s as f64;
                (mid.min(x_max), rate(c[i]))
            });
            chart
                .draw_series(
                    // A line through one or two points can vanish: mark the points then.
                    LineSeries::new(line, color.stroke_width(2)).point_size(if buckets <= 2 {
                        3
                    } else {
                        0
                    }),
                )
                .map_err(err_text)?;
            legend.push(LegendEntry {
                label: format!("{} ({})", outcome_word(outcome), total),
                color,
                swatch: Swatch::Line,
            });
        }
        draw_legend(legend_area, &legend)?;
        Ok(())
    });
    let caption = if width_s == 1 {
        "Operations completed per second, by outcome (1 s buckets by completion time). \
         Shaded bands: nemesis intervals."
            .to_string()
    } else {
        format!(
            "Operations completed per second, by outcome ({width_s} s buckets by completion \
             time, averaged per second). Shaded bands: nemesis intervals."
        )
    };
    (svg, caption)
}

// ---------------------------------------------------------------------------------------------
// Failing key timeline (hand-written SVG: one row per process, hover titles on every bar)
// ---------------------------------------------------------------------------------------------

fn key_timeline(kops: &[&Op], nemeses: &[&NemesisEvent], palette: &NemesisPalette) -> String {
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 34.0;
    const BOTTOM: f64 = 44.0;
    const MAX_ROWS_H: f64 = 320.0;

    let processes: BTreeSet<u64> = kops.iter().map(|o| o.process).collect();
    let rows: BTreeMap<u64, usize> = processes.iter().enumerate().map(|(i, &p)| (p, i)).collect();
    let n_rows = rows.len().max(1);
    let row_h = (MAX_ROWS_H / n_rows as f64).min(26.0);
    let width = PLOT_W as f64;
    let height = TOP + row_h * n_rows as f64 + BOTTOM;
    let plot_w = width - LEFT - RIGHT;

    // The window: the key's operations, padded; at least 1 ms wide.
    let t0 = kops.iter().map(|o| o.start_ns).min().unwrap_or(0) as f64 / 1e9;
    let t1 = kops
        .iter()
        .map(|o| o.end_ns.max(o.start_ns))
        .max()
        .unwrap_or(0) as f64
        / 1e9;
    let span = (t1 - t0).max(1e-3);
    let pad = span * 0.02;
    let (w0, w1) = ((t0 - pad).max(0.0), t1 + pad);
    let w1 = if w1 > w0 { w1 } else { w0 + 1e-3 };
    let x_of = |t: f64| LEFT + (t - w0) / (w1 - w0) * plot_w;

    let mut s = String::with_capacity(kops.len() * 300 + 4096);
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h:.0}\" \
         viewBox=\"0 0 {w} {h:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h:.0}\" fill=\"#fff\"/>",
        w = PLOT_W,
        h = height
    );

    // Nemesis bands, clipped to the window.
    let mut present: Vec<&str> = Vec::new();
    for n in nemeses {
        let a = (n.start_ns as f64 / 1e9).max(w0);
        let b = (n.end_ns.max(n.start_ns) as f64 / 1e9).min(w1);
        if b < a {
            continue;
        }
        let (xa, xb) = (x_of(a), x_of(b).max(x_of(a) + 1.0));
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{TOP:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" \
             fill-opacity=\"{BAND_ALPHA}\"><title>{}: {} ({}–{} s)</title></rect>",
            xa,
            xb - xa,
            row_h * n_rows as f64,
            hex(palette.color(&n.name)),
            esc(&n.name),
            esc(&n.detail),
            fmt_fixed(n.start_ns as f64 / 1e9, 3),
            fmt_fixed(n.end_ns as f64 / 1e9, 3),
        );
        if !present.contains(&n.name.as_str()) {
            present.push(&n.name);
        }
    }

    // Row stripes and process labels.
    for (&p, &i) in &rows {
        let y = TOP + row_h * i as f64;
        if i % 2 == 1 {
            let _ = writeln!(
                s,
                "<rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{plot_w:.1}\" height=\"{row_h:.1}\" \
                 fill=\"#000\" fill-opacity=\"0.035\"/>"
            );
        }
        if row_h >= 9.0 {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">p{}</text>",
                LEFT - 6.0,
                y + row_h / 2.0,
                p
            );
        }
    }

    // Bars. A label is drawn when it fits before the next bar on the same row.
    let mut by_row: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for o in kops {
        if let Some(&r) = rows.get(&o.process) {
            by_row.entry(r).or_default().push(o);
        }
    }
    let bar_h = (row_h * 0.7).max(1.0);
    for (r, row_ops) in &by_row {
        let y = TOP + row_h * *r as f64 + (row_h - bar_h) / 2.0;
        for (j, o) in row_ops.iter().enumerate() {
            let xa = x_of(o.start_ns as f64 / 1e9);
            let xb = x_of(o.end_ns.max(o.start_ns) as f64 / 1e9).max(xa + 2.0);
            let label = op_label(o);
            let _ = writeln!(
                s,
                "<rect x=\"{xa:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bar_h:.1}\" fill=\"{}\" \
                 fill-opacity=\"0.75\" stroke=\"{}\" stroke-width=\"0.5\"><title>p{} {} · {} · \
                 {}–{} ms{}{}</title></rect>",
                xb - xa,
                hex(outcome_color(o.outcome)),
                hex(outcome_color(o.outcome)),
                o.process,
                esc(&label),
                outcome_word(o.outcome),
                fmt_fixed(o.start_ns as f64 / 1e6, 3),
                fmt_fixed(o.end_ns as f64 / 1e6, 3),
                if o.error.is_some() { " · " } else { "" },
                esc(o.error.as_deref().unwrap_or("")),
            );
            let room = row_ops
                .get(j + 1)
                .map(|n| x_of(n.start_ns as f64 / 1e9))
                .unwrap_or(width - RIGHT)
                - xa;
            let text_w = label.chars().count() as f64 * 6.2 + 4.0;
            if row_h >= 12.0 && text_w <= room {
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" dominant-baseline=\"middle\" fill=\"#111\">{}</text>",
                    xa + 2.0,
                    y + bar_h / 2.0,
                    esc(&label)
                );
            }
        }
    }

    // Time axis.
    let axis_y = TOP + row_h * n_rows as f64;
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{axis_y:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\" stroke=\"#333\"/>",
        width - RIGHT
    );
    let step = nice_step(w1 - w0, 10.0);
    let decimals = (-step.log10().floor()).clamp(0.0, 9.0) as usize;
    let mut k = (w0 / step).ceil();
    let mut ticks = 0;
    while k * step <= w1 && ticks < 50 {
        let t = k * step;
        let x = x_of(t);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{axis_y:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            axis_y + 5.0,
            axis_y + 17.0,
            if t.abs() >= 1e6 {
                format!("{t:.2e}")
            } else {
                fmt_fixed(t, decimals)
            }
        );
        k += 1.0;
        ticks += 1;
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time since start (s)</text>",
        LEFT + plot_w / 2.0,
        axis_y + 35.0
    );

    // Legend along the top.
    let mut lx = LEFT;
    let mut entries: Vec<(String, RGBColor, f64)> = [Outcome::Ok, Outcome::Fail, Outcome::Info]
        .iter()
        .map(|&o| (outcome_word(o).to_string(), outcome_color(o), 0.75))
        .collect();
    entries.extend(
        present
            .iter()
            .map(|n| (n.to_string(), palette.color(n), BAND_ALPHA * 2.0)),
    );
    for (name, color, alpha) in entries {
        let _ = writeln!(
            s,
            "<rect x=\"{lx:.1}\" y=\"10\" width=\"14\" height=\"12\" fill=\"{}\" fill-opacity=\"{alpha}\"/>\
             <text x=\"{:.1}\" y=\"16\" dominant-baseline=\"middle\">{}</text>",
            hex(color),
            lx + 18.0,
            esc(&name)
        );
        lx += 30.0 + name.chars().count() as f64 * 6.5;
        if lx > width - 100.0 {
            break;
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A short label for an op: `w 3`, `cas 2→5`, `r 4`, `r nil`, or `f value` for other functions.
fn op_label(o: &Op) -> String {
    let v = |x: Option<u64>| x.map(|x| x.to_string()).unwrap_or_else(|| "nil".into());
    match o.f.as_str() {
        "read" => match o.outcome {
            Outcome::Ok => format!("r {}", v(o.result)),
            _ => "r ?".to_string(),
        },
        "write" => format!("w {}", v(o.value)),
        "cas" => format!("cas {}→{}", v(o.expected), v(o.value)),
        f => match o.value {
            Some(x) => format!("{f} {x}"),
            None => f.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        esc(&items.join(", "))
    }
}

fn validity_word(v: Validity) -> &'static str {
    match v {
        Validity::True => "valid",
        Validity::False => "invalid",
        Validity::Unknown => "unknown",
    }
}

fn exit_meaning(v: Validity) -> &'static str {
    match v {
        Validity::True => "every checker found the history valid",
        Validity::False => "at least one checker found an anomaly",
        Validity::Unknown => {
            "no anomaly was found, but at least one checker could not decide (budget or deadline \
             ran out)"
        }
    }
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "info",
    }
}

fn outcome_color(o: Outcome) -> RGBColor {
    match o {
        Outcome::Ok => OK_COLOR,
        Outcome::Fail => FAIL_COLOR,
        Outcome::Info => INFO_COLOR,
    }
}

fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Ok => 0,
        Outcome::Fail => 1,
        Outcome::Info => 2,
    }
}

fn hex(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// Completion minus invocation; 0 when recorded the wrong way round.
fn latency_ns(o: &Op) -> u64 {
    o.end_ns.saturating_sub(o.start_ns)
}

/// The run's length in seconds as the plots' x range: the latest time in the history, at
/// least 1 s, plus a little room.
fn run_span_s(ops: &[&Op], nemeses: &[&NemesisEvent]) -> f64 {
    let last = ops
        .iter()
        .map(|o| o.start_ns.max(o.end_ns))
        .chain(nemeses.iter().map(|n| n.start_ns.max(n.end_ns)))
        .max()
        .unwrap_or(0);
    (last as f64 / 1e9).max(1.0) * 1.02
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Ticks for a log axis: 1, 2, 5 per decade over up to four decades, else powers of ten
/// (every n-th one over very wide ranges, so about ten at most).
fn log_ticks(range: Range<f64>) -> Vec<f64> {
    if !(range.start > 0.0 && range.end > range.start && range.end.is_finite()) {
        return Vec::new();
    }
    let lo = range.start.log10().floor() as i32;
    let hi = range.end.log10().ceil() as i32;
    let decades = (range.end / range.start).log10();
    let (mults, every): (&[f64], i32) = if decades <= 4.0 {
        (&[1.0, 2.0, 5.0], 1)
    } else {
        (&[1.0], (decades / 10.0).ceil().max(1.0) as i32)
    };
    let mut ticks = Vec::new();
    for d in lo..=hi {
        if d.rem_euclid(every) != 0 {
            continue;
        }
        for m in mults {
            let t = m * 10f64.powi(d);
            if t >= range.start * 0.999_999 && t <= range.end * 1.000_001 {
                ticks.push(t);
            }
        }
    }
    ticks
}

/// A tick step of 1, 2 or 5 times a power of ten giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn fmt_fixed(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

/// Milliseconds for a table or a log axis: no trailing zeros, exponent form when huge.
fn fmt_ms(v: f64) -> String {
    if v >= 1e6 {
        format!("{v:.1e}")
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() {
            "0".to_string()
        } else {
            s.to_string()
        }
    }
}

/// A linear axis label: short, exponent form when huge.
fn fmt_axis(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{v:.1e}")
    } else {
        fmt_ms(v)
    }
}

fn opt_cell(v: Option<u64>, none_means_nil: bool) -> String {
    match v {
        Some(x) => x.to_string(),
        None if none_means_nil => "nil".to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Failover, OpCounts, Verdict};

    fn op(process: u64, f: &str, key: &str, start_ms: u64, end_ms: u64, outcome: Outcome) -> Op {
        Op {
            process,
            workload: "register".into(),
            f: f.into(),
            key: Some(key.into()),
            value: Some(process + 1),
            expected: if f == "cas" { Some(process) } else { None },
            result: if f == "read" { Some(3) } else { None },
            node: 1 + (process as usize % 5),
            start_ns: start_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
            outcome,
            error: match outcome {
                Outcome::Ok => None,
                Outcome::Fail => Some("cas mismatch: <expected> & \"got\"".into()),
                Outcome::Info => Some("timeout <5s>".into()),
            },
        }
    }

    fn nemesis(name: &str, detail: &str, start_ms: u64, end_ms: u64) -> Record {
        Record::Nemesis(NemesisEvent {
            name: name.into(),
            detail: detail.into(),
            start_ns: start_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
        })
    }

    fn results(valid: Validity, failing_key: Option<&str>) -> Results {
        Results {
            test: "register-<partition>".into(),
            seed: 42,
            nodes: 5,
            managers: 3,
            time_s: 10,
            nemeses: vec!["partition-halves".into(), "kill".into()],
            workloads: vec!["register".into()],
            valid,
            checkers: vec![
                Verdict {
                    checker: "linearizable-registers".into(),
                    valid,
                    anomaly: Some("nonlinearizable-read".into()),
                    detail: "line one\nline two <b>".into(),
                    failing_key: failing_key.map(String::from),
                },
                Verdict {
                    checker: "no-panics".into(),
                    valid: Validity::True,
                    anomaly: None,
                    detail: "no agent panicked".into(),
                    failing_key: None,
                },
            ],
            ops: OpCounts {
                ok: 6,
                fail: 2,
                info: 2,
            },
            failover: Failover {
                samples_ms: vec![800, 1200, 950],
                median_ms: Some(950),
                p99_ms: Some(1200),
            },
        }
    }

    fn small_history() -> Vec<Record> {
        let mut r = vec![
            Record::Op(op(0, "write", "n1/r7", 100, 130, Outcome::Ok)),
            Record::Op(op(1, "read", "n1/r7", 120, 140, Outcome::Ok)),
            Record::Op(op(2, "cas", "n1/r7", 150, 400, Outcome::Fail)),
            Record::Op(op(0, "write", "n1/r2", 200, 5200, Outcome::Info)),
            Record::Op(op(1, "read", "n1/r7", 2000, 2010, Outcome::Ok)),
            Record::Op(op(3, "cas", "n1/r7", 2500, 2600, Outcome::Ok)),
            Record::Op(op(2, "read", "n1/r2", 3000, 3001, Outcome::Fail)),
            Record::Op(op(4, "write", "n1/r7", 4000, 9000, Outcome::Info)),
            Record::Op(op(3, "read", "n1/r7", 6000, 6003, Outcome::Ok)),
            Record::Op(op(1, "write", "n1/r2", 7000, 7100, Outcome::Ok)),
        ];
        r.push(nemesis("partition-halves", "n1 n2 | n3 n4 n5", 1000, 4000));
        r.push(nemesis("kill", "kill n3", 5000, 8000));
        r
    }

    #[test]
    fn small_history_has_every_section() {
        let page = render(&results(Validity::False, Some("n1/r7")), &small_history());
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        assert!(page.contains("v-invalid\">INVALID</div>"));
        assert!(page.contains("exit code <b>1</b>"));
        assert!(page.contains("<td>linearizable-registers</td>"));
        assert!(page.contains("<td>no-panics</td>"));
        assert!(page.contains("nonlinearizable-read"));
        assert!(page.contains("line one\nline two &lt;b&gt;"));
        assert!(page.contains("register-&lt;partition&gt;"));
        assert!(page.contains("<svg"));
        assert!(
            page.matches("<svg").count() >= 3,
            "latency, throughput, timeline"
        );
        assert!(page.contains("Failing key n1/r7"));
        assert!(page.contains("cas 2→3"));
        assert!(page.contains("cas mismatch: &lt;expected&gt; &amp; &quot;got&quot;"));
        assert!(page.contains("timeout &lt;5s&gt;"));
        assert!(!page.contains("<expected>"));
        assert!(page.contains("partition-halves"));
        assert!(page.contains("kill n3"));
        assert!(page.contains("median <b>950 ms</b>"));
        assert!(!page.contains("could not be drawn"));
        // Only the failing key's ops are in its table: 7 ops on n1/r7.
        assert!(page.contains("7 operations on this key"));
    }

    #[test]
    fn verdict_colours() {
        let valid = render(&results(Validity::True, None), &small_history());
        assert!(valid.contains("v-valid\">VALID</div>"));
        assert!(!valid.contains("Failing key"));
        let unknown = render(&results(Validity::Unknown, None), &small_history());
        assert!(unknown.contains("v-unknown\">UNKNOWN</div>"));
        assert!(unknown.contains("exit code <b>2</b>"));
    }

    #[test]
    fn empty_history() {
        let mut res = results(Validity::Unknown, Some("missing"));
        res.checkers.clear();
        res.failover = Failover::default();
        res.nemeses.clear();
        let page = render(&res, &[]);
        assert!(page.contains("UNKNOWN"));
        assert!(page.contains("No operations recorded"));
        assert!(page.contains("No faults were injected"));
        assert!(page.contains("No failover measurements"));
        assert!(page.trim_end().ends_with("</html>"));

        // A failing key with no ops in the history.
        let page = render(&results(Validity::False, Some("gone")), &[]);
        assert!(page.contains("Failing key gone"));
        assert!(page.contains("no operations on this key"));
    }

    #[test]
    fn degenerate_times_do_not_panic() {
        let res = results(Validity::False, Some("k"));
        // All zero.
        let zero = vec![
            Record::Op(op(0, "write", "k", 0, 0, Outcome::Ok)),
            Record::Op(op(1, "read", "k", 0, 0, Outcome::Info)),
            nemesis("pause", "pause n1", 0, 0),
        ];
        // End before start, a nemesis healed before it started.
        let inverted = vec![
            Record::Op(op(0, "cas", "k", 500, 100, Outcome::Fail)),
            nemesis("clock", "skew", 900, 10),
        ];
        // Huge values.
        let mut huge_op = op(0, "write", "k", 0, 0, Outcome::Ok);
        huge_op.start_ns = u64::MAX - 5;
        huge_op.end_ns = u64::MAX;
        huge_op.value = Some(u64::MAX);
        let mut long_op = op(1, "read", "k", 0, 0, Outcome::Info);
        long_op.end_ns = u64::MAX;
        let huge = vec![
            Record::Op(huge_op),
            Record::Op(long_op),
            Record::Op(op(2, "write", "k", 1, 2, Outcome::Ok)),
            Record::Nemesis(NemesisEvent {
                name: "netem".into(),
                detail: "delay".into(),
                start_ns: 0,
                end_ns: u64::MAX,
            }),
        ];
        // A single op.
        let single = vec![Record::Op(op(0, "read", "k", 10, 11, Outcome::Ok))];
        // Many processes on one key.
        let crowd: Vec<Record> = (0..300)
            .map(|p| Record::Op(op(p, "read", "k", p, p + 1, Outcome::Ok)))
            .collect();
        for (name, recs) in [
            ("zero", zero),
            ("inverted", inverted),
            ("huge", huge),
            ("single", single),
            ("crowd", crowd),
        ] {
            let page = render(&res, &recs);
            assert!(page.contains("<svg"), "{name}: no svg");
            assert!(page.contains("Failing key k"), "{name}: no key section");
            assert!(
                !page.contains("could not be drawn"),
                "{name}: a plot failed"
            );
            assert!(page.trim_end().ends_with("</html>"), "{name}: truncated");
        }
    }

    #[test]
    fn large_history_stays_small() {
        // A deterministic pseudo-random history: 50 000 ops over 10 minutes, 3 workloads.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut recs = Vec::new();
        for i in 0..50_000u64 {
            let start = i * 12_000_000 + next() % 1_000_000;
            let lat = 200_000 + next() % 2_000_000_000 / (1 + next() % 200);
            let outcome = match next() % 20 {
                0 => Outcome::Fail,
                1 => Outcome::Info,
                _ => Outcome::Ok,
            };
            let workload = ["register", "services", "membership"][(i % 3) as usize];
            let mut o = op(i % 40, "write", &format!("n1/r{}", i % 50), 0, 0, outcome);
            o.workload = workload.into();
            o.start_ns = start;
            o.end_ns = start + lat;
            recs.push(Record::Op(o));
        }
        for j in 0..20u64 {
            let name = ["partition-halves", "kill", "pause"][(j % 3) as usize];
            recs.push(nemesis(name, "x", j * 30_000, j * 30_000 + 10_000));
        }
        let page = render(&results(Validity::False, Some("n1/r7")), &recs);
        assert!(page.len() < 3_000_000, "page is {} bytes", page.len());
        assert!(page.contains("points drawn"));
        assert!(page.contains("Table shows the first 400 of 1000"));
        assert!(!page.contains("could not be drawn"));
        // Deterministic.
        assert_eq!(
            page,
            render(&results(Validity::False, Some("n1/r7")), &recs)
        );
    }

    fn scatter(outcome: Outcome, pts: Vec<(f64, f64)>) -> Scatter {
        let total = pts.len();
        Scatter {
            outcome,
            pts,
            total,
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(esc("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[5], 0.99), Some(5));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(nice_step(0.0, 10.0), 1.0);
        assert_eq!(
            log_ticks(0.08..300.0),
            vec![0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0]
        );
        assert_eq!(log_ticks(0.08..2e13).len(), 7);
        assert!(log_ticks(0.0..1.0).is_empty());
        assert!(log_ticks(5.0..1.0).is_empty());
        assert_eq!(nice_step(100.0, 10.0), 10.0);
        assert_eq!(fmt_ms(0.1), "0.1");
        assert_eq!(fmt_ms(12.5), "12.5");
        assert_eq!(fmt_ms(250.0), "250");
        let mut groups = vec![
            scatter(Outcome::Ok, (0..1000).map(|i| (i as f64, 1.0)).collect()),
            scatter(Outcome::Fail, vec![(1.0, 2.0); 10]),
        ];
        assert!(thin(&mut groups, 100));
        assert_eq!(groups[1].pts.len(), 10, "a rare outcome is kept whole");
        assert_eq!(groups[0].pts.len(), 90);
        assert_eq!(
            groups[0].pts.last(),
            Some(&(999.0, 1.0)),
            "the slowest is kept"
        );
        let mut groups = vec![
            scatter(Outcome::Ok, vec![(0.0, 1.0); 9000]),
            scatter(Outcome::Fail, vec![(0.0, 1.0); 1000]),
        ];
        assert!(thin(&mut groups, 1000));
        let kept: Vec<usize> = groups.iter().map(|g| g.pts.len()).collect();
        assert!(kept.iter().sum::<usize>() <= 1000, "{kept:?}");
        assert!(kept[0] > 800 && kept[1] >= 125, "{kept:?}");
        let mut small = vec![scatter(Outcome::Info, vec![(0.0, 1.0); 3])];
        assert!(!thin(&mut small, 10));
        assert!(thin(&mut small, 1));
    }
}
