//! Tables that stay readable where they are printed. On a terminal comfy-table wraps cells to
//! its width. Piped (no terminal), a table keeps one line per row and fits a fixed width
//! ([`PIPED_WIDTH`], or `COLUMNS` when set): when its natural width is larger, its widest
//! columns after the first move under it, one line per row and column (`KEY  COLUMN: text`),
//! whole, so `grep` finds a row and its error on one line each.

use comfy_table::{presets, ContentArrangement, Table};

use super::Output;
use crate::error::Result;

/// The width a piped table fits when `COLUMNS` does not say otherwise.
pub const PIPED_WIDTH: usize = 100;

/// `table` laid out to fit `width` columns without a terminal (see the module's comment).
pub fn piped(table: &Table, width: usize) -> String {
    let natural = table.to_string();
    if natural.lines().all(|l| l.chars().count() <= width) {
        return natural;
    }
    let cells =
        |row: &comfy_table::Row| -> Vec<String> { row.cell_iter().map(|c| c.content()).collect() };
    let header: Vec<String> = table.header().map(cells).unwrap_or_default();
    let rows: Vec<Vec<String>> = table.row_iter().map(cells).collect();
    let columns = rows
        .iter()
        .map(Vec::len)
        .chain([header.len()])
        .max()
        .unwrap_or(0);
    if columns < 2 {
        return natural;
    }
    let cell = |r: &[String], i: usize| r.get(i).cloned().unwrap_or_default();
    let text_width = |s: &str| s.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| text_width(&cell(r, i)))
                .chain([text_width(&cell(&header, i))])
                .max()
                .unwrap_or(0)
        })
        .collect();
    // Borders: "| " + " | " between columns + " |".
    let fits = |kept: &[usize]| -> bool {
        kept.iter().map(|&i| widths[i]).sum::<usize>() + 3 * kept.len() < width
    };
    let mut kept: Vec<usize> = (0..columns).collect();
    let mut moved: Vec<usize> = Vec::new();
    while !fits(&kept) && kept.len() > 1 {
        let widest = kept[1..]
            .iter()
            .copied()
            .max_by_key(|&i| (widths[i], std::cmp::Reverse(i)));
        let Some(w) = widest else { break };
        kept.retain(|&i| i != w);
        moved.push(w);
    }
    moved.sort_unstable();
    let mut t = Table::new();
    t.load_preset(presets::ASCII_BORDERS_ONLY_CONDENSED);
    t.set_content_arrangement(ContentArrangement::Disabled);
    if !header.is_empty() {
        t.set_header(kept.iter().map(|&i| cell(&header, i)));
    }
    for r in &rows {
        t.add_row(kept.iter().map(|&i| cell(r, i)));
    }
    let mut out = t.to_string();
    for &i in &moved {
        let name = cell(&header, i);
        let lines: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                let text = cell(r, i);
                let text = text.trim();
                if text.is_empty() || text == "-" {
                    return None;
                }
                let text = text.lines().collect::<Vec<_>>().join(" / ");
                Some(format!("{}  {name}: {text}", cell(r, 0)))
            })
            .collect();
        if !lines.is_empty() {
            out.push_str("\n\n");
            out.push_str(&lines.join("\n"));
        }
    }
    out
}

impl Output {
    /// A table on stdout: wrapped to the terminal's width, or, piped, one line per row within
    /// [`table::PIPED_WIDTH`] columns (`COLUMNS` when set), long columns following it.
    pub fn table(&self, table: &Table) -> Result<()> {
        self.stdout(&format!("{}\n", self.render_table(table)))
    }

    /// A table's text as [`Output::table`] prints it (no final newline).
    pub fn render_table(&self, table: &Table) -> String {
        if self.stdout_tty {
            return table.to_string();
        }
        piped(table, self.width().map_or(PIPED_WIDTH, usize::from))
    }

    /// A new table with a header, styled for the terminal or plain for pipes.
    pub fn new_table<I, S>(&self, header: I) -> Table
    where
        I: IntoIterator<Item = S>,
        S: Into<comfy_table::Cell>,
    {
        let mut t = Table::new();
        if self.stdout_tty {
            t.load_preset(presets::UTF8_FULL_CONDENSED);
            // Wrap to the terminal only when its width is known: a terminal that reports 0x0
            // (some CI runners, `docker exec` without a size) counts as 80 columns, and one
            // whose size cannot be read gets no wrapping at all, never 1-character columns.
            match self.width() {
                Some(w) => {
                    t.set_content_arrangement(ContentArrangement::Dynamic);
                    t.set_width(w);
                }
                None => {
                    t.set_content_arrangement(ContentArrangement::Disabled);
                }
            }
        } else {
            t.load_preset(presets::ASCII_BORDERS_ONLY_CONDENSED);
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
        t.set_header(header);
        t
    }

    /// The width of the terminal on stdout: `COLUMNS` when set, else the terminal's own size
    /// (0 columns counts as 80); None when stdout is not a terminal or its size is unknown.
    pub fn width(&self) -> Option<u16> {
        if let Some(w) = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse::<u16>().ok())
            .filter(|w| *w > 0)
        {
            return Some(w);
        }
        if !self.stdout_tty {
            return None;
        }
        match dialoguer::console::Term::stdout().size_checked() {
            Some((_, 0)) => Some(80),
            Some((_, cols)) => Some(cols),
            None => None,
        }
    }

    /// The width a compact table must fit: the terminal's, else 80.
    pub fn compact_width(&self) -> usize {
        usize::from(self.width().unwrap_or(80)).max(40)
    }
}

/// A borderless table (columns two spaces apart) that fits `width` columns: the columns in
/// `flex` (names, labels) are cut with '…' as needed, the others (handles, dates) never are,
/// so every handle stays whole and copyable.
pub fn compact_table(
    header: &[&str],
    rows: &[Vec<String>],
    flex: &[usize],
    width: usize,
) -> String {
    let n = header.len();
    let len = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| len(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            widths[i] = widths[i].max(len(c));
        }
    }
    let fixed: usize = (0..n)
        .filter(|i| !flex.contains(i))
        .map(|i| widths[i])
        .sum();
    let seps = 2 * n.saturating_sub(1);
    let mut budget = width.saturating_sub(fixed + seps);
    // Share what is left between the flexible columns, narrowest first, each at least 6.
    let mut order: Vec<usize> = flex.to_vec();
    order.sort_by_key(|&i| widths[i]);
    for (k, &i) in order.iter().enumerate() {
        let share = (budget / (order.len() - k)).max(6);
        widths[i] = widths[i].min(share);
        budget = budget.saturating_sub(widths[i]);
    }
    let cut = |s: &str, w: usize| -> String {
        if len(s) <= w {
            s.to_string()
        } else {
            let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
            t.push('…');
            t
        }
    };
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let parts: Vec<String> = cells
            .enumerate()
            .map(|(i, c)| {
                let c = cut(c, widths[i]);
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        let mut l = parts.join("  ");
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    let mut out = line(&mut header.iter().copied());
    for r in rows {
        out.push_str(&line(&mut r.iter().map(|s| s.as_str())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(error: &str) -> Table {
        let mut t = Table::new();
        t.load_preset(presets::ASCII_BORDERS_ONLY_CONDENSED);
        t.set_content_arrangement(ContentArrangement::Disabled);
        t.set_header(["tenant", "outcome", "ms", "error / note"]);
        t.add_row(["alpha", "applied", "120", "-"]);
        t.add_row(["beta", "failed", "3", error]);
        t
    }

    #[test]
    fn a_narrow_table_is_left_as_it_is() {
        let t = sample("connection refused");
        assert_eq!(piped(&t, 100), t.to_string());
    }

    #[test]
    fn a_wide_table_fits_and_its_long_text_follows_whole_on_the_rows_line() {
        let long = "could not connect to the tenant database at db.internal:5432 (connection refused): check the address and that PostgreSQL is running there";
        let t = sample(long);
        let out = piped(&t, 100);
        let (table, rest) = out.split_once("\n\n").unwrap_or((&out, ""));
        assert!(table.lines().all(|l| l.chars().count() <= 100), "{out}");
        assert!(table.contains("beta") && table.contains("failed"), "{out}");
        assert!(!table.contains("error / note"), "{out}");
        assert_eq!(rest, format!("beta  error / note: {long}"), "{out}");
    }

    #[test]
    fn only_as_many_columns_move_as_needed() {
        let mut t = Table::new();
        t.set_header(["k", "a", "b"]);
        t.add_row(["x", &"a".repeat(60), &"b".repeat(30)]);
        let out = piped(&t, 60);
        let table = out.split("\n\n").next().unwrap_or_default();
        assert!(table.contains(&"b".repeat(30)), "{out}");
        assert!(out.contains(&format!("x  a: {}", "a".repeat(60))), "{out}");
    }

    #[test]
    fn compact_tables_fit_and_keep_handles_whole() {
        let rows = vec![vec![
            "abcdefgh".to_string(),
            "a very long token name that goes on and on".to_string(),
            "org-token:abcdefgh-and-a-long-label".to_string(),
            "2024-03-01".to_string(),
        ]];
        let t = compact_table(
            &["PREFIX", "NAME", "CREATED_BY", "CREATED"],
            &rows,
            &[1, 2],
            50,
        );
        for l in t.lines() {
            assert!(l.chars().count() <= 50, "{l}");
        }
        assert!(t.contains("abcdefgh  ") && t.contains("2024-03-01") && t.contains('…'));
    }
}
