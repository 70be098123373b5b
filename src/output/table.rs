//! Tables that stay readable where they are printed. On a terminal comfy-table wraps cells to
//! its width. Piped (no terminal), a table keeps one line per row and fits a fixed width
//! ([`PIPED_WIDTH`], or `COLUMNS` when set): when its natural width is larger, its widest
//! columns after the first move under it, one line per row and column (`KEY  COLUMN: text`),
//! whole, so `grep` finds a row and its error on one line each.

use comfy_table::{presets, ContentArrangement, Table};

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
        kept.iter().map(|&i| widths[i]).sum::<usize>() + 3 * kept.len() + 1 <= width
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
}
