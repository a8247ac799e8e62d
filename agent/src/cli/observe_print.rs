//! How `sluice observe` prints what the Observer streams, in `hubble observe`'s formats:
//! `compact` (one line a flow, the default), `json` (one `GetFlowsResponse` a line), `table`
//! (TIMESTAMP SOURCE DESTINATION TYPE VERDICT SUMMARY) and `dict` (one block a flow). Lost
//! events and node status changes are printed in every format: a loss is never silent.

use sluice_observer::pb::observer::{GetFlowsResponse, get_flows_response::ResponseTypes};

use super::observe_time::rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Compact,
    Json,
    Table,
    Dict,
}

const HEADER: [&str; 6] = ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"];
/// Widths of the first five columns while following: rows print as they come, so they cannot
/// be measured first (without --follow the table is aligned to its widest cell).
const FOLLOW_WIDTHS: [usize; 5] = [32, 30, 30, 14, 10];

/// One response as table cells: a flow's columns, or a notice (lost events, a node's state).
pub fn cells(r: &GetFlowsResponse) -> Option<[String; 6]> {
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => {
            let time = rfc3339(f.time.as_ref());
            Some(match sluice_observer::convert::flow_back(f) {
                Some(core) => {
                    let c = sluice_core::flow::compact::columns(&core);
                    [time, c.source, c.destination, c.kind, c.verdict.to_string(), c.summary]
                }
                None => [time, "-".into(), "-".into(), "-".into(), "-".into(), "a flow this build cannot print".into()],
            })
        }
        Some(ResponseTypes::LostEvents(l)) => Some([
            rfc3339(r.time.as_ref()),
            "-".into(),
            "-".into(),
            "lost-events".into(),
            "-".into(),
            format!("{} flows this reader did not get in time", l.num_events_lost),
        ]),
        Some(ResponseTypes::NodeStatus(n)) => Some([
            rfc3339(r.time.as_ref()),
            "-".into(),
            "-".into(),
            "node-status".into(),
            state(n.state_change).into(),
            format!("{} {}", n.node_names.join(", "), n.message).trim().to_string(),
        ]),
        _ => None,
    }
}

fn state(s: i32) -> &'static str {
    sluice_observer::pb::relay::NodeState::try_from(s).map(|s| s.as_str_name()).unwrap_or("UNKNOWN_NODE_STATE")
}

/// The compact line of one response.
pub fn compact(r: &GetFlowsResponse) -> Option<String> {
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => {
            let time = rfc3339(f.time.as_ref());
            Some(match sluice_observer::convert::flow_back(f) {
                Some(core) => sluice_core::flow::compact::line(&time, &core),
                None => format!("{time}: (a flow this build cannot print: {f:?})"),
            })
        }
        Some(ResponseTypes::LostEvents(l)) => {
            Some(format!("EVENTS LOST: {} flows this reader did not get in time", l.num_events_lost))
        }
        Some(ResponseTypes::NodeStatus(n)) => {
            Some(format!("{}: {} {}", state(n.state_change), n.node_names.join(", "), n.message))
        }
        _ => None,
    }
}

/// One block of `-o dict`.
pub fn dict(c: &[String; 6]) -> String {
    HEADER.iter().zip(c).map(|(k, v)| format!("{k:>11}: {v}\n")).collect()
}

/// Rows aligned to the widest cell of each column (the last column is not padded).
pub fn table(rows: &[[String; 6]]) -> String {
    let mut widths = HEADER.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let header = HEADER.map(String::from);
    std::iter::once(&header).chain(rows).map(|r| line(r, &widths[..5])).collect()
}

fn line(r: &[String; 6], widths: &[usize]) -> String {
    let mut s = String::new();
    for (c, w) in r.iter().zip(widths) {
        s += &format!("{c:<w$}   ");
    }
    s += &r[5];
    s.push('\n');
    s
}

/// Prints responses as they arrive; `finish` prints what waited for the end (a table's rows).
pub struct Printer {
    format: Format,
    follow: bool,
    rows: Vec<[String; 6]>,
    printed: usize,
}

impl Printer {
    pub fn new(format: Format, follow: bool) -> Self {
        Printer { format, follow, rows: Vec::new(), printed: 0 }
    }

    /// What to print now for one response (possibly nothing).
    pub fn push(&mut self, r: &GetFlowsResponse) -> String {
        let out = match self.format {
            Format::Json => format!("{}\n", super::observe::json_line(r)),
            Format::Compact => compact(r).map(|l| format!("{l}\n")).unwrap_or_default(),
            Format::Dict => match cells(r) {
                Some(c) => format!("{}{}", if self.printed > 0 { "------------\n" } else { "" }, dict(&c)),
                None => String::new(),
            },
            Format::Table => match cells(r) {
                Some(c) if self.follow => {
                    let header =
                        if self.printed == 0 { line(&HEADER.map(String::from), &FOLLOW_WIDTHS) } else { String::new() };
                    header + &line(&c, &FOLLOW_WIDTHS)
                }
                Some(c) => {
                    self.rows.push(c);
                    return String::new();
                }
                None => String::new(),
            },
        };
        if !out.is_empty() {
            self.printed += 1;
        }
        out
    }

    /// The table of everything received (without --follow); nothing in other formats.
    pub fn finish(&mut self) -> String {
        if self.format == Format::Table && !self.follow {
            return table(&std::mem::take(&mut self.rows));
        }
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(src: &str, summary: &str) -> [String; 6] {
        [
            "2026-12-06T10:00:00.000Z".into(),
            src.into(),
            "default/b:8080".into(),
            "to-endpoint".into(),
            "FORWARDED".into(),
            summary.into(),
        ]
    }

    #[test]
    fn a_table_is_aligned_to_its_widest_cell_with_hubbles_header() {
        let t = table(&[row("default/a:1", "TCP Flags: SYN"), row("default/a-long-name:40000", "x")]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TIMESTAMP") && lines[0].ends_with("SUMMARY"), "{t}");
        let col = |l: &str| l.find("default/b:8080");
        assert_eq!(col(lines[1]), col(lines[2]), "DESTINATION starts at the same column:\n{t}");
        assert_eq!(lines[0].find("DESTINATION"), col(lines[1]), "{t}");
    }

    #[test]
    fn a_dict_block_names_every_field_right_aligned() {
        let d = dict(&row("default/a:1", "TCP Flags: SYN"));
        assert_eq!(
            d,
            "  TIMESTAMP: 2026-12-06T10:00:00.000Z\n     SOURCE: default/a:1\nDESTINATION: default/b:8080\n       TYPE: to-endpoint\n    VERDICT: FORWARDED\n    SUMMARY: TCP Flags: SYN\n"
        );
    }

    #[test]
    fn lost_events_are_printed_in_every_format() {
        use sluice_observer::pb::flow::LostEvent;
        let r = GetFlowsResponse {
            response_types: Some(ResponseTypes::LostEvents(LostEvent { num_events_lost: 7, ..Default::default() })),
            ..Default::default()
        };
        for format in [Format::Compact, Format::Json, Format::Dict] {
            let out = Printer::new(format, false).push(&r);
            assert!(out.contains('7'), "{format:?}: {out}");
        }
        let mut p = Printer::new(Format::Table, false);
        assert_eq!(p.push(&r), "");
        let t = p.finish();
        assert!(t.contains("lost-events") && t.contains("7 flows"), "{t}");
        let mut p = Printer::new(Format::Table, true);
        let t = p.push(&r);
        assert!(t.starts_with("TIMESTAMP") && t.contains("lost-events"), "{t}");
    }
}
