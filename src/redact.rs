//! Masking of passwords in every message orgctl prints.
//!
//! Every password orgctl learns (from a database URL, a tenants file, an admin token) is
//! registered here; the error printer and the log writer pass their text through [`mask`], so
//! even a driver message that echoes a connection string cannot leak one.

use std::sync::Mutex;

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remember a secret so that [`mask`] hides it. Empty and very short strings are ignored:
/// masking "a" would garble every message.
pub fn register(secret: &str) {
    if secret.len() < 3 {
        return;
    }
    let mut forms = vec![secret.to_string()];
    // The URL-encoded form too, as it appears inside a connection string.
    let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    if encoded != secret {
        forms.push(encoded);
    }
    if let Ok(mut list) = SECRETS.lock() {
        for f in forms {
            if !list.contains(&f) {
                list.push(f);
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        list.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Replace every registered secret in `text` with `****`.
pub fn mask(text: &str) -> String {
    let mut out = text.to_string();
    if let Ok(list) = SECRETS.lock() {
        for s in list.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "****");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_plain_and_encoded() {
        register("p@ss w0rd");
        let m = mask("url postgres://u:p%40ss+w0rd@h/db and p@ss w0rd");
        assert!(!m.contains("w0rd"), "{m}");
    }
}
