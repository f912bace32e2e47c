//! `modbroker plot`: [`plot_svg`] draws a boot's record ([`crate::report::BootRecord`]) as an
//! SVG timeline in the manner of `systemd-analyze plot`.
//!
//! Its title gives the boot's totals as [`crate::blame::Blame`] counts them, and its labels
//! write durations and requesters as `modbroker blame` does.
//!
//! Everything here is a pure function of the record: the same record gives the same bytes
//! (maps are ordered, ties are broken by name, no clock is read).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::blame::{add, answered, format_us, requester_text, Blame};
use crate::model::OutcomeKind;
use crate::model::{Method, Requester};
use crate::record::{LoadRecord, Phase};
use crate::report::{BootRecord, Instance};

/// Height of one module's row, px.
const ROW_H: f64 = 16.0;
/// Height of a bar within its row, px.
const BAR_H: f64 = 10.0;
/// Font size, px (monospace, so a label's width is known: [`CHAR_W`] per character).
const FONT: f64 = 11.0;
const CHAR_W: f64 = 0.6 * FONT;
/// Left margin, px.
const LEFT: f64 = 24.0;
/// Where the first row starts, px (title, legend, axis labels and phase labels above it).
const TOP: f64 = 84.0;
/// Below the last row: the axis labels again.
const BOTTOM: f64 = 30.0;
/// Pixels per second aimed at: a boot's loading fits in about [`TARGET_AXIS_W`] px...
const TARGET_AXIS_W: f64 = 1200.0;
/// ...but no fewer than this many px per second (a long boot gets wider)...
const MIN_PX_PER_S: f64 = 25.0;
/// ...and no more (a short one gets narrower).
const MAX_PX_PER_S: f64 = 2000.0;
/// The axis never gets wider than this (renderers cap images at 32767 px); only a record
/// spanning more than 20 minutes goes below [`MIN_PX_PER_S`].
const MAX_AXIS_W: f64 = 30000.0;
/// Gridlines at least this far apart, px.
const MIN_TICK_PX: f64 = 80.0;
/// The narrowest picture, px (the legend's width).
const MIN_W: f64 = 820.0;

/// One row of the plot: a module name over the whole boot.
struct Row<'a> {
    module: &'a str,
    first_request_us: u64,
    arrivals: Vec<u64>,
    loads: Vec<&'a LoadRecord>,
    phases: Vec<Phase>,
    requests: u64,
    merged: u64,
    from_sysfs: u64,
    requester: &'a Requester,
}

impl Row<'_> {
    fn call_us(&self) -> u64 {
        self.loads
            .iter()
            .map(|l| l.call_us())
            .fold(0, u64::saturating_add)
    }

    fn wait_us(&self) -> u64 {
        self.loads
            .iter()
            .map(|l| l.wait_us())
            .fold(0, u64::saturating_add)
    }

    /// The last load (by end), if any.
    fn last_load(&self) -> Option<&LoadRecord> {
        self.loads.iter().copied().max_by_key(|l| l.end_us)
    }

    /// The latest time anything in the row happened.
    fn end_us(&self) -> u64 {
        let loads = self.loads.iter().map(|l| l.end_us.max(l.queued_us));
        let arrivals = self.arrivals.iter().copied();
        loads.chain(arrivals).fold(self.first_request_us, u64::max)
    }

    /// `nvme 812.3ms`, `acpi_cpufreq 3.1ms ENODEV`, `fat already loaded` (no call: live when
    /// its turn came, or every request answered from sysfs).
    fn label(&self) -> String {
        match self.last_load() {
            Some(last) => {
                let what = match (last.method, last.outcome) {
                    (Method::None, outcome) => outcome.in_words().to_string(),
                    _ => format_us(self.call_us()),
                };
                let mut label = format!("{} {what}", self.module);
                match (last.outcome, &last.errno_name) {
                    (OutcomeKind::Failed, Some(errno)) => label = format!("{label} {errno}"),
                    (OutcomeKind::Failed, None) if last.method != Method::None => {
                        label.push_str(" failed")
                    }
                    _ => {}
                }
                label
            }
            None if self.from_sysfs > 0 => format!("{} already loaded", self.module),
            None => self.module.to_string(),
        }
    }

    fn title(&self) -> String {
        let phases: Vec<&str> = self.phases.iter().map(|p| p.as_str()).collect();
        format!(
            "{} ({}): load {}, wait {}, {} requests ({} merged), first request at {} by {}",
            self.module,
            phases.join(", "),
            format_us(self.call_us()),
            format_us(self.wait_us()),
            self.requests,
            self.merged,
            format_us(self.first_request_us),
            requester_text(self.requester)
        )
    }
}

/// Text safe inside an XML element or attribute: the five special characters escaped, and
/// characters XML 1.0 cannot carry at all replaced by U+FFFD.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Gridline spacing in µs: the smallest of 1, 2, 5 × 10^k µs at least [`MIN_TICK_PX`] apart.
fn tick_step_us(px_per_s: f64) -> u64 {
    let mut magnitude = 1u64;
    loop {
        for m in [1, 2, 5] {
            let step = m * magnitude;
            if step as f64 * px_per_s / 1e6 >= MIN_TICK_PX || magnitude >= 1_000_000_000_000_000_000
            {
                return step;
            }
        }
        magnitude *= 10;
    }
}

fn tick_label(t_us: u64, step_us: u64) -> String {
    let digits = match step_us {
        s if s >= 1_000_000 => 0,
        s if s >= 100_000 => 1,
        s if s >= 10_000 => 2,
        _ => 3,
    };
    format!("{:.*}s", digits, t_us as f64 / 1e6)
}

/// The SVG timeline of `record`: one row per module name (ordered by first request), the
/// axis in seconds since boot (CLOCK_MONOTONIC 0), the initramfs as a shaded band and the
/// root phase's start as a line. Each row has its request arrivals (ticks), each load's wait
/// (light) and call (coloured by outcome), and the name with the call time right of the row's
/// last load (or, when that would overlap a later mark of the row, right of its last mark). Row
/// height and font are fixed: more modules make the picture taller.
pub fn plot_svg(record: &BootRecord) -> String {
    let mut by_name = BTreeMap::<&str, Row>::new();
    for Instance { record: r, .. } in &record.instances {
        for m in &r.modules {
            let row = by_name.entry(&m.module).or_insert_with(|| Row {
                module: &m.module,
                first_request_us: m.first_request_us,
                arrivals: Vec::new(),
                loads: Vec::new(),
                phases: Vec::new(),
                requests: 0,
                merged: 0,
                from_sysfs: 0,
                requester: &m.first_requester,
            });
            if m.first_request_us < row.first_request_us {
                row.first_request_us = m.first_request_us;
                row.requester = &m.first_requester;
            }
            row.arrivals.extend(&m.arrivals_us);
            row.loads.extend(&m.loads);
            if !row.phases.contains(&r.phase) {
                row.phases.push(r.phase);
            }
            let c = &m.requests;
            add(&mut row.requests, answered(c));
            add(&mut row.merged, c.merged.saturating_add(c.failure_window));
            add(&mut row.from_sysfs, c.already_loaded);
        }
    }
    let mut rows: Vec<Row> = by_name.into_values().collect();
    rows.sort_by(|a, b| (a.first_request_us, a.module).cmp(&(b.first_request_us, b.module)));

    // Phases: the initramfs from its first instance's start to its last one's end; the root
    // phase's start.
    let initramfs = record
        .instances
        .iter()
        .filter(|i| i.record.phase == Phase::Initramfs)
        .map(|i| {
            let r = &i.record;
            (
                r.started_us,
                r.stopped_us.unwrap_or(r.updated_us).max(r.started_us),
            )
        })
        .reduce(|(s1, e1), (s2, e2)| (s1.min(s2), e1.max(e2)));
    let root_start = record
        .instances
        .iter()
        .filter(|i| i.record.phase == Phase::Root)
        .map(|i| i.record.started_us)
        .min();

    let end_us = rows
        .iter()
        .map(Row::end_us)
        .chain(initramfs.map(|(_, end)| end))
        .chain(root_start)
        .max()
        .unwrap_or(0)
        .max(1);
    let end_s = end_us as f64 / 1e6;
    let mut px_per_s = (TARGET_AXIS_W / end_s).clamp(MIN_PX_PER_S, MAX_PX_PER_S);
    if end_s * px_per_s > MAX_AXIS_W {
        px_per_s = MAX_AXIS_W / end_s;
    }
    let step_us = tick_step_us(px_per_s);
    let axis_end_us = end_us.div_ceil(step_us).saturating_mul(step_us);
    let x = |t_us: u64| LEFT + t_us as f64 * px_per_s / 1e6;

    let labels: Vec<String> = rows.iter().map(Row::label).collect();
    // A row's label goes right of its last load, as systemd-analyze puts a unit's name right of
    // its bar, when it fits there before the row's next mark (a later request answered from
    // sysfs, typically in the root phase); else right of the row's last mark. Rows never share
    // a line, so a label can only collide with marks of its own row.
    let label_x = |row: &Row, label: &str| {
        let after_last = x(row.end_us()) + 4.0;
        let Some(load_end) = row.loads.iter().map(|l| l.end_us).max() else {
            return after_last;
        };
        let at = x(load_end) + 4.0;
        // Marks left of where the label starts (requests that came as the load ended) are not
        // in its way.
        let next_mark = row.arrivals.iter().filter(|&&a| x(a) >= at - 1.0).min();
        match next_mark {
            Some(&next) if x(next) < at + label.chars().count() as f64 * CHAR_W + 4.0 => after_last,
            _ => at,
        }
    };
    let width = rows
        .iter()
        .zip(&labels)
        .map(|(row, label)| label_x(row, label) + label.chars().count() as f64 * CHAR_W)
        .fold(x(axis_end_us), f64::max)
        .max(MIN_W)
        + LEFT;
    let width = width.ceil();
    let rows_bottom = TOP + rows.len() as f64 * ROW_H;
    let height = (rows_bottom + BOTTOM).ceil();

    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">"#
    );
    s.push_str(concat!(
        "<style>\n",
        "text { font-family: monospace; font-size: 11px; fill: #222; }\n",
        "text.title { font-size: 13px; font-weight: bold; }\n",
        "text.axis { fill: #666; text-anchor: middle; }\n",
        "line.grid { stroke: #ddd; stroke-width: 1; }\n",
        "rect.stripe { fill: #f4f4f4; }\n",
        "rect.initramfs { fill: #e8e0f4; }\n",
        "line.phase { stroke: #7b4fb0; stroke-width: 1.5; stroke-dasharray: 4 2; }\n",
        "text.phase { fill: #7b4fb0; }\n",
        "path.arrival { stroke: #333; stroke-width: 1; fill: none; }\n",
        "rect.wait { fill: #fce7a6; }\n",
        "rect.loaded { fill: #2c7fb8; }\n",
        "rect.present { fill: #a0a0a0; }\n",
        "rect.failed { fill: #d7301f; }\n",
        "</style>\n",
        "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n",
    ));
    let blame = Blame::new(record);
    let _ = writeln!(
        s,
        r#"<text class="title" x="{LEFT}" y="16">{}</text>"#,
        xml_escape(&format!(
            "Module loading: {} modules, {} load calls, {} duplicate loads avoided, {} failed ({} daemon instances)",
            rows.len(),
            blame.boot.totals.load_calls,
            blame.boot.duplicate_loads_avoided,
            blame.boot.totals.failed_loads,
            record.instances.len()
        ))
    );
    legend(&mut s);

    // Phase band and line, under everything else.
    if let Some((start, end)) = initramfs {
        let _ = writeln!(
            s,
            r#"<rect class="initramfs" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/>"#,
            x(start),
            TOP - 14.0,
            (x(end) - x(start)).max(1.0),
            rows_bottom - TOP + 14.0
        );
        let _ = writeln!(
            s,
            r#"<text class="phase" x="{:.1}" y="{:.1}">initramfs</text>"#,
            x(start) + 2.0,
            TOP - 4.0
        );
    }
    // Gridlines and axis labels, top and bottom.
    let mut t = 0;
    while t <= axis_end_us {
        let gx = x(t);
        let label = tick_label(t, step_us);
        let _ = writeln!(
            s,
            r#"<line class="grid" x1="{gx:.1}" y1="{:.1}" x2="{gx:.1}" y2="{rows_bottom:.1}"/><text class="axis" x="{gx:.1}" y="{:.1}">{label}</text><text class="axis" x="{gx:.1}" y="{:.1}">{label}</text>"#,
            TOP - 30.0,
            TOP - 34.0,
            rows_bottom + 16.0,
        );
        match t.checked_add(step_us) {
            Some(next) => t = next,
            None => break,
        }
    }
    if let Some(start) = root_start {
        let rx = x(start);
        let _ = writeln!(
            s,
            r#"<line class="phase" x1="{rx:.1}" y1="{:.1}" x2="{rx:.1}" y2="{rows_bottom:.1}"/><text class="phase" x="{:.1}" y="{:.1}">root</text>"#,
            TOP - 14.0,
            rx + 3.0,
            TOP - 4.0
        );
    }

    for (i, (row, label)) in rows.iter().zip(&labels).enumerate() {
        let top = TOP + i as f64 * ROW_H;
        let bar_y = top + (ROW_H - BAR_H) / 2.0;
        let _ = writeln!(s, r#"<g class="row" id="row-{i}">"#);
        let _ = writeln!(s, "<title>{}</title>", xml_escape(&row.title()));
        if i % 2 == 1 {
            let _ = writeln!(
                s,
                r#"<rect class="stripe" x="0" y="{top:.1}" width="{width}" height="{ROW_H}" opacity="0.6"/>"#
            );
        }
        for load in &row.loads {
            let call_start = load.call_start_us.unwrap_or(load.end_us);
            let (q, c) = (x(load.queued_us), x(call_start.max(load.queued_us)));
            if c - q >= 0.1 {
                let _ = writeln!(
                    s,
                    r#"<rect class="wait" x="{q:.1}" y="{bar_y:.1}" width="{:.1}" height="{BAR_H}"/>"#,
                    c - q
                );
            }
            let class = match load.outcome {
                OutcomeKind::Loaded => "loaded",
                OutcomeKind::AlreadyLoaded | OutcomeKind::Builtin => "present",
                // A load's record holds only the four kinds above and failed.
                _ => "failed",
            };
            // A load without a call is a 2 px mark at its end; a call is at least 1 px wide.
            let (start, min_w) = match load.call_start_us {
                Some(start) => (start, 1.0),
                None => (load.end_us, 2.0),
            };
            let _ = writeln!(
                s,
                r#"<rect class="{class}" x="{:.1}" y="{bar_y:.1}" width="{:.1}" height="{BAR_H}"/>"#,
                x(start),
                (x(load.end_us) - x(start)).max(min_w)
            );
        }
        if !row.arrivals.is_empty() {
            let mut arrivals = row.arrivals.clone();
            arrivals.sort_unstable();
            arrivals.dedup();
            let mut d = String::new();
            for a in arrivals {
                let _ = write!(d, "M{:.1} {:.1}v{} ", x(a), top + 1.0, ROW_H - 2.0);
            }
            let _ = writeln!(s, r#"<path class="arrival" d="{}"/>"#, d.trim_end());
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            label_x(row, label),
            top + ROW_H - 4.0,
            xml_escape(label)
        );
        s.push_str("</g>\n");
    }
    s.push_str("</svg>\n");
    s
}

/// The legend, below the title.
fn legend(s: &mut String) {
    let y = 26.0;
    let mut x = LEFT;
    for (class, text) in [
        ("arrival", "request arrival"),
        ("wait", "waiting (dependencies, load slot)"),
        ("loaded", "load call: loaded"),
        ("present", "already loaded / built in"),
        ("failed", "failed"),
    ] {
        if class == "arrival" {
            let _ = writeln!(
                s,
                r#"<path class="arrival" d="M{:.1} {y:.1}v{BAR_H}"/>"#,
                x + 5.0
            );
        } else {
            let _ = writeln!(
                s,
                r#"<rect class="{class}" x="{x:.1}" y="{y:.1}" width="12" height="{BAR_H}"/>"#
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{text}</text>"#,
            x + 16.0,
            y + BAR_H - 1.0
        );
        x += 16.0 + text.len() as f64 * CHAR_W + 16.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_xml() {
        assert_eq!(
            xml_escape("a<b>&\"c'\u{1}\u{FFFF}\tz"),
            "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}\u{FFFD}\tz"
        );
    }

    /// Gridlines at least 80 px apart, at 1, 2 or 5 times a power of ten.
    #[test]
    fn gridlines_are_round_and_apart() {
        assert_eq!(tick_step_us(MAX_PX_PER_S), 50_000);
        assert_eq!(tick_step_us(333.0), 500_000);
        assert_eq!(tick_step_us(MIN_PX_PER_S), 5_000_000);
        assert_eq!(tick_label(1_500_000, 500_000), "1.5s");
        assert_eq!(tick_label(20_000_000, 5_000_000), "20s");
        assert_eq!(tick_label(50_000, 50_000), "0.05s");
    }
}
