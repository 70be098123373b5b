//! The shard of a tenant is the first 8 bytes of `sha256(NAME as UTF-8)` read as a big-endian
//! u64, modulo N; `--shard I/N` takes the tenants whose value is `I-1`. It depends on the name
//! only, so it is the same on every machine and every orgctl version.

use sha2::Digest;

use crate::error::{Error, Result};
use crate::ops::backfill::tenants::Tenant;

/// `--shard I/N`: 1 ≤ I ≤ N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::usage(format!(
                "--shard '{s}' is not I/N with 1 <= I <= N (for example 2/8)"
            ))
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u64 = i.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    pub fn contains(&self, name: &str) -> bool {
        shard_hash(name) % self.count == self.index - 1
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The shard options of run, status and rollback: `--shard I/N` (`shard`), or `--shards N`
    /// (`shards`) with I from `JOB_COMPLETION_INDEX` (0-based), or none (every tenant).
    pub fn from_options(shard: Option<&str>, shards: Option<u64>) -> Result<Option<Shard>> {
        if let Some(s) = shard {
            return Shard::parse(s).map(Some);
        }
        let Some(n) = shards else {
            return Ok(None);
        };
        if n == 0 {
            return Err(Error::usage("--shards must be at least 1"));
        }
        let raw = std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
            Error::usage(
                "--shards N takes this worker's shard from JOB_COMPLETION_INDEX, which is not set; pass --shard I/N instead",
            )
        })?;
        let index: u64 = raw.trim().parse().map_err(|_| {
            Error::usage(format!(
                "JOB_COMPLETION_INDEX '{}' is not a number (0-based shard index)",
                crate::error::sanitize(&raw)
            ))
        })?;
        if index >= n {
            return Err(Error::usage(format!(
                "JOB_COMPLETION_INDEX {index} is out of range for --shards {n} (0 to {})",
                n - 1
            )));
        }
        Ok(Some(Shard {
            index: index + 1,
            count: n,
        }))
    }

    /// The tenants of this shard (all without one).
    pub fn select(shard: Option<Shard>, all: Vec<Tenant>) -> Vec<Tenant> {
        match shard {
            Some(s) => all.into_iter().filter(|t| s.contains(&t.name)).collect(),
            None => all,
        }
    }
}

/// The stable shard hash: the first 8 bytes of sha256(name) as a big-endian u64.
pub fn shard_hash(name: &str) -> u64 {
    let d = sha2::Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_parsing() {
        assert_eq!(Shard::parse("2/8").ok(), Some(Shard { index: 2, count: 8 }));
        assert_eq!(Shard::parse("1/1").ok(), Some(Shard { index: 1, count: 1 }));
        for bad in ["0/4", "5/4", "1/0", "x/2", "2", "/", "-1/3", "1/2/3", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    /// The hash is a contract: shards must be the same on every machine and version.
    #[test]
    fn shard_hash_is_pinned() {
        // Computed independently: python3 -c "import hashlib;
        //   print(int.from_bytes(hashlib.sha256(b'acme').digest()[:8], 'big'))"
        assert_eq!(shard_hash("acme"), 9_379_647_469_329_139_872);
        assert_eq!(shard_hash("tenant-001"), 9_072_019_910_754_927_139);
        assert!(Shard { index: 1, count: 4 }.contains("acme"));
        assert!(Shard { index: 4, count: 4 }.contains("tenant-001"));
    }

    #[test]
    fn shards_are_disjoint_and_cover() {
        let names: Vec<String> = (0..500).map(|i| format!("tenant-{i:03}")).collect();
        for n in [1u64, 2, 3, 7] {
            let mut count = 0;
            for name in &names {
                let hits = (1..=n)
                    .filter(|i| {
                        Shard {
                            index: *i,
                            count: n,
                        }
                        .contains(name)
                    })
                    .count();
                assert_eq!(hits, 1, "{name} in {hits} of {n} shards");
                count += hits;
            }
            assert_eq!(count, names.len());
        }
    }
}
