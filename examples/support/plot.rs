//! A picture of a run, for `--plot FILE.svg`: the examples sample a few counters while they
//! run and write one small, self-contained SVG (no script, no fonts, no dependency).
//!
//! The top panel shows records delivered per second against the bound (limit x records per
//! request); the bottom one requests per second: what was sent, the gate's rate, the adaptive
//! controller's rate, 429s and 503s per second, and the server's limit as a dashed line.
//!
//! Shared by `examples/bulk_import.rs` and the benches member's `goodput` example, which both
//! include this file with `#[path]`; it is not part of the library.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the counters are read.
pub const EVERY: Duration = Duration::from_millis(250);

/// Per-second figures are counted over this trailing window.
const WINDOW: f64 = 1.0;

/// What is read at each sample: running totals, and rates as they are at that moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Records delivered so far.
    pub records: u64,
    /// Requests the server received so far.
    pub requests: u64,
    /// Requests answered 429 so far.
    pub rate_limited: u64,
    /// Requests answered 503 so far.
    pub unavailable: u64,
    /// The gate's rate (its bucket's), requests per second.
    pub gate_rate: Option<f64>,
    /// The adaptive controller's rate, requests per second.
    pub adaptive_rate: Option<f64>,
}

/// One reading, `at` seconds into the run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: f64,
    pub counts: Counts,
}

/// Where a run's stack publishes its live rates once it is built (the stack lives inside the
/// run, the sampler outside it).
#[derive(Clone, Default)]
pub struct Rates(Arc<Mutex<Option<RateFn>>>);

type RateFn = Box<dyn Fn() -> (Option<f64>, Option<f64>) + Send>;

impl Rates {
    /// `read` returns (gate rate, adaptive rate), each in requests per second.
    pub fn set(&self, read: impl Fn() -> (Option<f64>, Option<f64>) + Send + 'static) {
        *self.0.lock().expect("not poisoned") = Some(Box::new(read));
    }

    /// (gate rate, adaptive rate), `None` before [`Rates::set`] or where there is none.
    pub fn read(&self) -> (Option<f64>, Option<f64>) {
        self.0
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map_or((None, None), |read| read())
    }
}

/// Runs `work` to its end, reading `sample` every [`EVERY`] meanwhile when `on` (and once at
/// the end); off, it only runs `work`. Sampling happens in the caller's task, between polls.
pub async fn record<T>(
    on: bool,
    mut sample: impl FnMut() -> Counts,
    work: impl Future<Output = T>,
) -> (T, Vec<Sample>) {
    let mut samples = Vec::new();
    if !on {
        return (work.await, samples);
    }
    let start = tokio::time::Instant::now();
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            out = &mut work => {
                samples.push(Sample { at: start.elapsed().as_secs_f64(), counts: sample() });
                return (out, samples);
            }
            _ = tick.tick() => {
                samples.push(Sample { at: start.elapsed().as_secs_f64(), counts: sample() });
            }
        }
    }
}

/// What the picture says around the samples.
pub struct Chart<'a> {
    pub title: &'a str,
    /// The server's limit, requests per second (a dashed line in the bottom panel).
    pub limit: f64,
    /// The most records per second the limit allows (a dashed line in the top panel).
    pub records_bound: f64,
    pub samples: &'a [Sample],
}

/// One line of a panel.
struct Series {
    label: &'static str,
    colour: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

impl Chart<'_> {
    /// Writes the SVG to `path`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.svg())
    }

    /// The picture as an SVG document.
    pub fn svg(&self) -> String {
        let end = self.samples.last().map_or(1.0, |s| s.at).max(1.0);
        let per_second = |count: fn(&Counts) -> u64| per_second(self.samples, count);
        let level = |at_limit: f64| vec![(0.0, at_limit), (end, at_limit)];
        let gauge = |read: fn(&Counts) -> Option<f64>| -> Vec<(f64, f64)> {
            self.samples
                .iter()
                .filter_map(|s| read(&s.counts).map(|r| (s.at, r)))
                .collect()
        };
        let top = vec![
            Series {
                label: "records/s",
                colour: "#2b6cb0",
                dashed: false,
                points: per_second(|c| c.records),
            },
            Series {
                label: "bound",
                colour: "#c53030",
                dashed: true,
                points: level(self.records_bound),
            },
        ];
        let bottom = vec![
            Series {
                label: "sent/s",
                colour: "#a0aec0",
                dashed: false,
                points: per_second(|c| c.requests),
            },
            Series {
                label: "gate rate",
                colour: "#2f855a",
                dashed: false,
                points: gauge(|c| c.gate_rate),
            },
            Series {
                label: "adaptive rate",
                colour: "#d69e2e",
                dashed: false,
                points: gauge(|c| c.adaptive_rate),
            },
            Series {
                label: "429s/s",
                colour: "#e53e3e",
                dashed: false,
                points: per_second(|c| c.rate_limited),
            },
            Series {
                label: "503s/s",
                colour: "#805ad5",
                dashed: false,
                points: per_second(|c| c.unavailable),
            },
            Series {
                label: "limit",
                colour: "#c53030",
                dashed: true,
                points: level(self.limit),
            },
        ];
        let mut svg = String::new();
        let _ = write!(
            svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
             viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
             <text x=\"{LEFT}\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
            escape(self.title)
        );
        panel(&mut svg, TOP, "records/s", end, &top);
        panel(&mut svg, TOP + PANEL + GAP, "requests/s", end, &bottom);
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds</text>\n</svg>",
            LEFT + PLOT_W / 2.0,
            H - 8.0
        );
        svg
    }
}

const W: f64 = 760.0;
const H: f64 = 560.0;
const LEFT: f64 = 64.0;
const PLOT_W: f64 = 540.0;
const TOP: f64 = 40.0;
const PANEL: f64 = 200.0;
const GAP: f64 = 70.0;

/// Draws one panel at `y0`: frame, ticks, series and its legend on the right.
fn panel(svg: &mut String, y0: f64, unit: &str, end: f64, series: &[Series]) {
    let high = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let (y_step, y_max) = ticks(high);
    let (x_step, _) = ticks(end);
    let x = |t: f64| LEFT + PLOT_W * t / end;
    let y = |v: f64| y0 + PANEL - PANEL * v.min(y_max) / y_max;
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{y0}\" width=\"{PLOT_W}\" height=\"{PANEL}\" fill=\"none\" \
         stroke=\"#cbd5e0\"/>"
    );
    let mut v = 0.0;
    while v <= y_max + y_step / 2.0 {
        let yv = y(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{yv:.1}\" y2=\"{yv:.1}\" stroke=\"#edf2f7\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + PLOT_W,
            LEFT - 6.0,
            yv + 4.0,
            number(v),
        );
        v += y_step;
    }
    let mut t = 0.0;
    while t <= end + x_step / 100.0 {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x(t),
            y0 + PANEL + 16.0,
            number(t)
        );
        t += x_step;
    }
    let _ = writeln!(
        svg,
        "<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" \
         text-anchor=\"middle\">{unit}</text>",
        y0 + PANEL / 2.0,
        y0 + PANEL / 2.0
    );
    let mut row = 0.0;
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let mut points = String::new();
        for &(t, v) in &s.points {
            let _ = write!(points, "{:.1},{:.1} ", x(t), y(v));
        }
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"{dash} points=\"{}\"/>",
            s.colour,
            points.trim_end()
        );
        let ly = y0 + 12.0 + row * 18.0;
        let lx = LEFT + PLOT_W + 16.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" \
             stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{:.1}\">{}</text>",
            lx + 22.0,
            s.colour,
            lx + 28.0,
            ly + 4.0,
            s.label
        );
        row += 1.0;
    }
}

/// A counter's increase per second over the trailing [`WINDOW`], at every sample after the
/// first.
fn per_second(samples: &[Sample], count: fn(&Counts) -> u64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(samples.len());
    let mut from = 0;
    for (i, s) in samples.iter().enumerate().skip(1) {
        while samples[from].at < s.at - WINDOW && from + 1 < i {
            from += 1;
        }
        let base = &samples[from];
        let span = s.at - base.at;
        if span > 0.0 {
            let grown = count(&s.counts).saturating_sub(count(&base.counts));
            out.push((s.at, grown as f64 / span));
        }
    }
    out
}

/// A tick step of 1, 2 or 5 times a power of ten giving about five ticks up to `high`, and
/// the axis end (a whole number of steps at or above `high`).
fn ticks(high: f64) -> (f64, f64) {
    let rough = (high / 5.0).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * power);
    (step, (high / step).ceil().max(1.0) * step)
}

/// A tick label: whole numbers without decimals, with thousands as "k".
fn number(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{}k", (v / 1_000.0).round())
    } else if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round())
    } else {
        format!("{v:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
