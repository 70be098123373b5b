//! The tenants file.
//!
//! One tenant per line, `NAME DATABASE_URL [PLATFORM_URL] [org_id=ID | self-hosted]`, separated
//! by spaces or tabs (the platform URL is what `backfill run --provision` asks to provision the
//! tenant's agent; `org_id=ID` is the org id the control plane knows the tenant by, and
//! `self-hosted` marks a self-hosted tenant: either says which id a new agent gets). The fields
//! after the database URL may come in any order: `org_id=` is a key (a URL has `://` first),
//! `self-hosted` a word, anything else the platform URL. Blank lines and lines
//! starting with `#` are ignored, and so is a trailing comment: from a `#` that follows
//! whitespace to the end of the line. A malformed line or a duplicate name is a usage error (exit 2)
//! naming the line. Messages never quote a line: a URL (or a URL pasted where the name goes)
//! carries a password. Every URL goes through [`DbUrl::parse`], which registers its password
//! for masking before anything can print it.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::db::DbUrl;
use crate::error::{Error, Result};

pub use crate::ops::backfill::shard::{shard_hash, Shard};

const MAX_NAME_LEN: usize = 128;

/// One tenant of the fleet.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub name: String,
    pub url: DbUrl,
    /// 1-based line in the tenants file.
    pub line: usize,
    /// The tenant's platform API (the optional third field), for `--provision`. Checked when
    /// the file is read; its password, if any, is registered for masking.
    pub platform_url: Option<String>,
    /// `org_id=ID` on the line (trimmed).
    pub org_id: Option<String>,
    /// `self-hosted` on the line.
    pub self_hosted: bool,
}

/// The marker of a self-hosted tenant on its line.
pub const SELF_HOSTED_FIELD: &str = "self-hosted";
/// The key of the org id field on a tenant's line.
pub const ORG_ID_KEY: &str = "org_id";

/// The line's format, for messages.
const FORMAT: &str = "NAME DATABASE_URL [PLATFORM_URL] [org_id=ID | self-hosted]";

impl Tenant {
    /// `host:port/dbname` for summaries and reports: no user, no password, and masked, since a
    /// mistyped line can carry a password inside the database name.
    pub fn database(&self) -> String {
        crate::redact::mask(self.url.target())
    }
}

/// The largest tenants file orgctl reads (a line is a name and a URL: this is far beyond any
/// fleet), so `/dev/zero` or a runaway pipe is a clear refusal, not unbounded memory.
pub const MAX_TENANTS_FILE: u64 = 16 * 1024 * 1024;

/// Read the tenants file (`-` is stdin) and parse it. The read runs on a thread of its own, so
/// Ctrl-C or SIGTERM still ends the command while it waits on a pipe that never closes.
pub async fn read(path: &Path) -> Result<Vec<Tenant>> {
    let owned = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread (not the runtime's blocking pool, which would be waited for at exit).
    std::thread::spawn(move || {
        let _ = tx.send(read_text(&owned));
    });
    // Nothing has started yet: an interrupt while reading simply ends the command.
    let (text, source) = tokio::select! {
        r = rx => r.map_err(|_| Error::failed("reading the tenants file stopped unexpectedly"))??,
        _ = crate::interrupt::reached(1) => return Err(Error::interrupted()),
    };
    let tenants = parse(&text, &source)?;
    if tenants.is_empty() {
        return Err(Error::usage(format!(
            "the tenants file {source} lists no tenant (one `NAME DATABASE_URL` per line)"
        )));
    }
    refuse_one_database_twice(&tenants, &source).await?;
    Ok(tenants)
}

/// How long resolving one host name may take, and all of them together; a host that does not
/// resolve in time is left to the connection, which reports it. A fleet of hosts that never
/// answer costs the run at most the total before it starts.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
const RESOLVE_TOTAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Two lines that reach one database under different spellings of its host (`localhost` and
/// `127.0.0.1`, a host name and its address) would install and report it twice: compare the
/// resolved addresses (with the port and database name) before anything starts. Each distinct
/// host is resolved once, a few at a time.
async fn refuse_one_database_twice(tenants: &[Tenant], source: &str) -> Result<()> {
    use futures_util::stream::{self, StreamExt};
    let mut hosts: Vec<(String, u16)> = tenants
        .iter()
        .map(|t| {
            let o = t.url.options();
            (o.get_host().to_ascii_lowercase(), o.get_port())
        })
        .filter(|(h, _)| !h.starts_with('/'))
        .collect();
    hosts.sort();
    hosts.dedup();
    let deadline = tokio::time::Instant::now() + RESOLVE_TOTAL;
    let resolved: HashMap<(String, u16), Vec<std::net::IpAddr>> = stream::iter(hosts)
        .map(|(host, port)| async move {
            let until = deadline.min(tokio::time::Instant::now() + RESOLVE_TIMEOUT);
            let addrs =
                tokio::time::timeout_at(until, tokio::net::lookup_host((host.clone(), port)))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .map(|a| a.map(|s| s.ip()).collect::<Vec<_>>())
                    .unwrap_or_default();
            ((host, port), addrs)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    // (address, port, database) → (line, name)
    let mut seen: HashMap<(std::net::IpAddr, u16, String), (usize, &str)> = HashMap::new();
    for t in tenants {
        let o = t.url.options();
        let key = (o.get_host().to_ascii_lowercase(), o.get_port());
        let db = o.get_database().unwrap_or("").to_string();
        let Some(addrs) = resolved.get(&key) else {
            continue;
        };
        for ip in addrs {
            let k = (*ip, key.1, db.clone());
            if let Some((line, other)) = seen.get(&k) {
                if *other == t.name {
                    continue;
                }
                return Err(Error::usage(format!(
                    "{source} line {}: tenant '{}' reaches the same database as tenant '{other}' on line {line} ({} resolves to {ip}, port {}, database {db}); each tenant needs its own database: remove one of the two lines",
                    t.line,
                    t.name,
                    crate::redact::mask(t.url.target()),
                    key.1
                )));
            }
            seen.insert(k, (t.line, &t.name));
        }
    }
    Ok(())
}

/// The file's text, at most [`MAX_TENANTS_FILE`] bytes, and how messages name it.
fn read_text(path: &Path) -> Result<(String, String)> {
    let stdin = path.as_os_str() == "-";
    let source = if stdin {
        "stdin".to_string()
    } else {
        path.display().to_string()
    };
    let cannot = |e: std::io::Error| {
        if stdin {
            Error::usage(format!("could not read the tenants from stdin: {e}"))
        } else {
            Error::usage(format!("could not read the tenants file {source}: {e}"))
        }
    };
    let reader: Box<dyn Read> = if stdin {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(cannot)?)
    };
    let mut s = String::new();
    reader
        .take(MAX_TENANTS_FILE + 1)
        .read_to_string(&mut s)
        .map_err(cannot)?;
    if s.len() as u64 > MAX_TENANTS_FILE {
        return Err(Error::usage(format!(
            "the tenants file {source} is larger than {} MiB: that is not a list of tenants (one `NAME DATABASE_URL` per line); split the fleet, or check the path",
            MAX_TENANTS_FILE / (1024 * 1024)
        )));
    }
    Ok((s, source))
}

/// Parse the tenants file's text. `source` names it in messages.
pub fn parse(text: &str, source: &str) -> Result<Vec<Tenant>> {
    let mut tenants: Vec<Tenant> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    // host:port/dbname → (line, name): two names for one database would install and report
    // it twice, each run under its own name.
    let mut databases: HashMap<String, (usize, String)> = HashMap::new();
    // Editors on Windows save UTF-8 with a byte order mark; it is not part of the first name.
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // A trailing comment starts at a `#` preceded by whitespace: a field of its own that
        // starts with `#`. A `#` inside a field (a URL's fragment, or a password someone did
        // not percent-encode) is part of that field.
        let fields: Vec<&str> = trimmed
            .split_whitespace()
            .take_while(|f| !f.starts_with('#'))
            .collect();
        if !(2..=4).contains(&fields.len()) {
            return Err(Error::usage(format!(
                "{source} line {line}: expected `{FORMAT}`, found {} field(s)",
                fields.len()
            )));
        }
        let (name, url) = (fields[0], fields[1]);
        // Parse the URL first: it registers the password for masking, whatever comes next.
        let url = DbUrl::parse(url).map_err(|e| {
            Error::usage(format!(
                "{source} line {line}: {}",
                crate::redact::mask(&e.message)
            ))
        })?;
        if !valid_name(name) {
            return Err(Error::usage(format!(
                "{source} line {line}: the tenant name must be 1 to {MAX_NAME_LEN} letters, digits, '.', '_' or '-' and come first on the line"
            )));
        }
        if let Some(first) = seen.get(name) {
            return Err(Error::usage(format!(
                "{source} line {line}: duplicate tenant name '{name}' (first on line {first})"
            )));
        }
        let mut platform_field: Option<(usize, &str)> = None;
        let mut org_id: Option<String> = None;
        let mut self_hosted = false;
        for (i, f) in fields.iter().enumerate().skip(2) {
            if *f == SELF_HOSTED_FIELD {
                if self_hosted {
                    return Err(Error::usage(format!(
                        "{source} line {line}: `{SELF_HOSTED_FIELD}` is given twice"
                    )));
                }
                self_hosted = true;
            } else if let Some((key, value)) = key_field(f) {
                if key != ORG_ID_KEY {
                    return Err(Error::usage(format!(
                        "{source} line {line}: unknown field `{}=` (expected `{FORMAT}`)",
                        crate::error::sanitize(key)
                    )));
                }
                if org_id.is_some() {
                    return Err(Error::usage(format!(
                        "{source} line {line}: `{ORG_ID_KEY}=` is given twice"
                    )));
                }
                org_id = Some(crate::platform::agent::check_org_id(
                    value,
                    &format!("{source} line {line}: `{ORG_ID_KEY}=`"),
                )?);
            } else if platform_field.is_some() {
                return Err(Error::usage(format!(
                    "{source} line {line}: more than one platform URL field (after the database URL come PLATFORM_URL, {ORG_ID_KEY}=ID and {SELF_HOSTED_FIELD}, each at most once)"
                )));
            } else {
                platform_field = Some((i, *f));
            }
        }
        crate::platform::agent::identity(
            org_id.clone(),
            self_hosted,
            &format!("{source} line {line}: `{ORG_ID_KEY}=`"),
        )?;
        let platform_url = match platform_field {
            None => None,
            Some((i, raw)) => {
                let which = if i == 2 { "third" } else { "fourth" };
                // Validated (and its password registered for masking) as --platform-url is.
                crate::platform::restart::Platform::new(Some(raw), None, false).map_err(|e| {
                    Error::usage(format!(
                        "{source} line {line}: the {which} field is not a platform URL: {}",
                        crate::redact::mask(&e.message)
                    ))
                })?;
                Some(raw.to_string())
            }
        };
        seen.insert(name.to_string(), line);
        let database = database_key(&url);
        if let Some((first, other)) = databases.get(&database) {
            return Err(Error::usage(format!(
                "{source} line {line}: tenant '{name}' has the same database ({}) as tenant '{other}' on line {first}; each tenant needs its own database: remove one of the two lines",
                crate::redact::mask(url.target())
            )));
        }
        databases.insert(database, (line, name.to_string()));
        tenants.push(Tenant {
            name: name.to_string(),
            url,
            line,
            platform_url,
            org_id,
            self_hosted,
        });
    }
    Ok(tenants)
}

/// `key=value` when the field starts with a key (letters, digits, `_`, `-`; a URL has `:` or
/// `/` before any `=`).
fn key_field(f: &str) -> Option<(&str, &str)> {
    let (key, value) = f.split_once('=')?;
    let is_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    is_key.then_some((key, value))
}

/// The database a URL names, for duplicate detection: host (case-insensitive), port, name.
fn database_key(url: &DbUrl) -> String {
    let o = url.options();
    format!(
        "{}:{}/{}",
        o.get_host().to_ascii_lowercase(),
        o.get_port(),
        o.get_database().unwrap_or("")
    )
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<Tenant> {
        match parse(text, "tenants") {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    fn err(text: &str) -> Error {
        match parse(text, "tenants") {
            Ok(t) => panic!("accepted: {t:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_trailing_comment_after_the_fields_is_ignored_but_a_hash_inside_a_url_is_not() {
        let t = ok(
            "acme postgres://u:p@h/acme https://acme.example # the EU one\n\
                    globex postgres://u:p@h/globex\tself-hosted\t#tab before it\n\
                    initech postgres://u:p@h/initech #\n",
        );
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].platform_url.as_deref(), Some("https://acme.example"));
        assert!(t[1].self_hosted);
        assert_eq!(t[2].url.target(), "h:5432/initech");
        // A `#` inside a field is not a comment: the URL is judged whole (and refused).
        let e = err("acme postgres://u:pa#ss@h/acme\n");
        assert!(
            e.message.contains("invalid database URL") && !e.message.contains("pa#ss"),
            "{}",
            e.message
        );
        // A comment does not make up for a missing field.
        let e = err("acme # postgres://h/acme\n");
        assert!(
            e.message.contains("line 1") && e.message.contains("found 1 field"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_name() {
        let t = ok("\u{FEFF}acme postgres://h/acme\n");
        assert_eq!(t[0].name, "acme");
        // Anywhere else it is still an invalid name.
        let e = err("acme postgres://h/acme\n\u{FEFF}globex postgres://h/globex\n");
        assert!(e.message.contains("line 2"), "{}", e.message);
    }

    #[test]
    fn one_database_under_two_names_is_refused_naming_both_lines() {
        let e = err(
            "acme postgres://u:pw1@DB.example:5432/t1\n\nglobex postgres://v:pw2@db.example/t1\n",
        );
        assert_eq!(e.exit, crate::error::Exit::Usage);
        assert!(e.message.contains("line 3"), "{}", e.message);
        assert!(e.message.contains("'acme' on line 1"), "{}", e.message);
        assert!(
            !e.message.contains("pw2") && !e.message.contains("pw1"),
            "{}",
            e.message
        );
        // Another database on the same server is fine.
        assert_eq!(
            ok("a postgres://h/t1\nb postgres://h/t2\nc postgres://h:5433/t1\n").len(),
            3
        );
    }

    #[test]
    fn parses_names_urls_comments_and_blanks() {
        let t = ok("# fleet\n\nacme postgres://u:pw1234@h:5432/acme\n  \t\nglobex\tpostgresql://h/globex  \n# end\n");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].name, "acme");
        assert_eq!(t[0].line, 3);
        assert_eq!(t[1].name, "globex");
        assert_eq!(t[1].line, 5);
        assert!(!format!("{:?}", t[0]).contains("pw1234"));
        assert_eq!(t[0].platform_url, None);
    }

    #[test]
    fn a_third_field_is_the_platform_url() {
        let t = ok("acme postgres://h/acme https://acme.example.com/api
globex postgres://h/g
");
        assert_eq!(
            t[0].platform_url.as_deref(),
            Some("https://acme.example.com/api")
        );
        assert_eq!(t[1].platform_url, None);
        for (text, needle) in [
            (
                "a postgres://h/a ftp://x
",
                "third field",
            ),
            (
                "a postgres://h/a not-a-url
",
                "third field",
            ),
            (
                "a postgres://h/a https://h/?q=1
",
                "third field",
            ),
        ] {
            let e = err(text);
            assert_eq!(e.exit, crate::error::Exit::Usage);
            assert!(e.message.contains("line 1:"), "{}", e.message);
            assert!(e.message.contains(needle), "{}", e.message);
        }
    }

    #[test]
    fn malformed_lines_name_the_line_and_not_the_password() {
        for (text, line, needle) in [
            (
                "acme\n",
                1,
                "expected `NAME DATABASE_URL [PLATFORM_URL] [org_id=ID | self-hosted]`",
            ),
            (
                "a postgres://h/a\nb postgres://u:hunter22@h/b http://x extra self-hosted\n",
                2,
                "5 field(s)",
            ),
            (
                "a postgres://h/a\nb postgres://u:hunter22@h/b http://x extra\n",
                2,
                "more than one platform URL field",
            ),
            ("\n\nacme mysql://u:hunter22@h/db\n", 3, "scheme"),
            (
                "postgres://u:hunter22@h/db acme\n",
                1,
                "invalid database URL",
            ),
            ("ac/me postgres://u:hunter22@h/db\n", 1, "tenant name"),
            (
                "acme postgres://u:hunter22@h/a\n# x\nacme postgres://h/b\n",
                3,
                "duplicate tenant name 'acme' (first on line 1)",
            ),
        ] {
            let e = err(text);
            assert_eq!(e.exit, crate::error::Exit::Usage, "{text}");
            assert!(
                e.message.contains(&format!("line {line}:")),
                "{text}: {}",
                e.message
            );
            assert!(e.message.contains(needle), "{text}: {}", e.message);
            assert!(!e.message.contains("hunter22"), "{}", e.message);
        }
    }

    #[test]
    fn org_id_and_self_hosted_fields_in_any_order() {
        let t = ok("a postgres://h/a org_id=o-1\nb postgres://h/b self-hosted https://b.example\nc postgres://h/c https://c.example org_id=o-3\nd postgres://h/d\n");
        assert_eq!(t[0].org_id.as_deref(), Some("o-1"));
        assert!(!t[0].self_hosted && t[0].platform_url.is_none());
        assert!(t[1].self_hosted && t[1].org_id.is_none());
        assert_eq!(t[1].platform_url.as_deref(), Some("https://b.example"));
        assert_eq!(t[2].org_id.as_deref(), Some("o-3"));
        assert_eq!(t[2].platform_url.as_deref(), Some("https://c.example"));
        assert!(t[3].org_id.is_none() && !t[3].self_hosted);
        for (text, needle) in [
            ("a postgres://h/a org_id=o self-hosted\n", "both given"),
            ("a postgres://h/a org_id=\n", "must not be empty"),
            ("a postgres://h/a org_id=o org_id=p\n", "given twice"),
            ("a postgres://h/a self-hosted self-hosted\n", "given twice"),
            ("a postgres://h/a orgid=o\n", "unknown field `orgid=`"),
        ] {
            let e = err(text);
            assert_eq!(e.exit, crate::error::Exit::Usage, "{text}");
            assert!(e.message.contains("line 1:"), "{text}: {}", e.message);
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
    }

    /// Arbitrary input never panics and never echoes a password in an error.
    #[test]
    fn fuzz_never_panics_or_leaks() {
        const PIECES: &[&str] = &[
            "acme",
            "globex",
            "tenant-1",
            "postgres://u:Sekr3tPw@h:5432/db",
            "postgresql://u:Sekr3tPw@[::1]:5/db?sslmode=require",
            "postgres://u:Sekr3t%40Pw@h/db",
            "postgres://h/db?password=Sekr3tPw",
            "mysql://u:Sekr3tPw@h/db",
            "postgres://u:Sekr3tPw@h:99999/db",
            "postgres://u:Sekr3tPw@",
            "#",
            "# comment Sekr3tPw",
            " ",
            "\t",
            "\n",
            "\r\n",
            "é",
            "\u{1b}[31m",
            "\0",
            "a/b",
            ":",
            "@",
            "Sekr3tPw",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64*: deterministic, no dependency.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(next() % 12) {
                text.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                if next() % 3 == 0 {
                    text.push(' ');
                }
                if next() % 4 == 0 {
                    text.push('\n');
                }
            }
            match parse(&text, "fuzz") {
                Ok(tenants) => {
                    for t in tenants {
                        // What orgctl prints: the URL's own forms, masked as every output is.
                        let shown =
                            crate::redact::mask(&format!("{} {:?} {}", t.url, t.url, t.database()));
                        assert!(!shown.contains("Sekr3t"), "{shown}");
                    }
                }
                Err(e) => {
                    assert_eq!(e.exit, crate::error::Exit::Usage);
                    assert!(!e.message.contains("Sekr3t"), "{text:?}: {}", e.message);
                    assert!(e.message.contains("line "), "{}", e.message);
                }
            }
        }
    }
}
