//! What the CLI prints: tables and short summaries for people, or the API's JSON for scripts
//! (`--json`), and what its exit status says.

use std::io::Write;

use anyhow::Result;

/// How answers are printed: the global `--json` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// How a command that ran ends, beyond succeeding or failing to run (README, "Exit status").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Done,
    /// Exit 3: a scrub found problems it did not repair, or a task failed.
    Problems,
}

impl Outcome {
    pub fn exit_code(self) -> std::process::ExitCode {
        match self {
            Outcome::Done => std::process::ExitCode::SUCCESS,
            Outcome::Problems => std::process::ExitCode::from(3),
        }
    }
}

/// Writes a line to stdout. A reader that went away (EPIPE, as in `| head -1`) is no error:
/// the rest of the output is dropped and the command still ends with its own status.
pub fn out(text: &str) -> Result<()> {
    quietly(&mut std::io::stdout().lock(), text)
}

/// A line for people on stderr (progress, confirmations, warnings).
pub fn note(text: &str) {
    let _ = quietly(&mut std::io::stderr().lock(), text);
}

fn quietly(w: &mut impl Write, text: &str) -> Result<()> {
    match writeln!(w, "{text}").and_then(|()| w.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// Prints an API answer as indented JSON, keys in the order the API sends them.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    out(&serde_json::to_string_pretty(&serde_json::to_value(v)?)?)
}

/// The one table style of the CLI: a header in capitals, columns two spaces apart.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Table { header: header.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text; the last column is not padded.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|row| {
                let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
                cells.join("  ").trim_end().to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Prints the table, or `empty` on stderr when it has no rows.
    pub fn print(&self, empty: &str) -> Result<()> {
        if self.rows.is_empty() {
            note(empty);
            return Ok(());
        }
        out(&self.render())
    }
}

/// A list from the API: as JSON, or as a table with a row per item (`empty` when there is none).
pub fn print_list<T: serde::Serialize>(
    list: &[T],
    format: Format,
    header: &[&'static str],
    empty: &str,
    row: impl Fn(&T) -> Vec<String>,
) -> Result<()> {
    if format == Format::Json {
        return print_json(&list);
    }
    let mut table = Table::new(header);
    for item in list {
        table.row(row(item));
    }
    table.print(empty)
}

/// One thing shown in detail: a field name, then its value, aligned like a table's columns.
#[derive(Default)]
pub struct Fields(Vec<(&'static str, String)>);

impl Fields {
    pub fn add(&mut self, name: &'static str, value: impl Into<String>) {
        self.0.push((name, value.into()));
    }

    pub fn render(&self) -> String {
        let width = self.0.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let lines: Vec<String> =
            self.0.iter().map(|(n, v)| format!("{n:<width$}  {v}").trim_end().to_string()).collect();
        lines.join("\n")
    }
}

/// How long ago a time in Unix milliseconds was, roughly: `5s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(unix_ms: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(unix_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// A list, or `none`.
pub fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}
