//! The platform's vendor keys: for a workspace whose model is platform-managed (the platform
//! supplies the model and its credentials), the platform's own API refuses to write these
//! secrets, compared upper-cased and trimmed.
//!
//! Whether a workspace's model is platform-managed is decided by the platform, not stored in
//! the tenant database: no column of `workspaces`, no table (`workspace_config.data` is opaque
//! JSON, `agents.model` only names a model) says it, and the MODEL secret's value names a model,
//! not who manages it. So orgctl cannot tell, never refuses on a guess, and warns on every
//! write of one of these keys ([`vendor_key_warning`]).

/// The keys the platform refuses on a workspace whose model is platform-managed.
pub const VENDOR_KEYS: [&str; 23] = [
    "AI_GATEWAY_API_KEY",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ARCEEAI_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CODEX_AUTH_JSON",
    "DASHSCOPE_API_KEY",
    "DEEPSEEK_API_KEY",
    "GEMINI_API_KEY",
    "GLM_API_KEY",
    "HERMES_CUSTOM_API_KEY",
    "HERMES_CUSTOM_BASE_URL",
    "HF_TOKEN",
    "KIMI_API_KEY",
    "KIMI_CN_API_KEY",
    "MINIMAX_API_KEY",
    "MINIMAX_CN_API_KEY",
    "NOUS_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENROUTER_API_KEY",
    "XAI_API_KEY",
    "ZAI_API_KEY",
];

/// Whether `key` is one of [`VENDOR_KEYS`], compared as the platform compares: upper-cased and
/// trimmed.
pub fn is_vendor_key(key: &str) -> bool {
    let k = key.trim().to_ascii_uppercase();
    VENDOR_KEYS.contains(&k.as_str())
}

/// The warning for writing vendor key `key` (`workspace`: the target, `None` for a global
/// secret), or `None` when `key` is not a vendor key.
pub fn vendor_key_warning(key: &str, workspace: Option<uuid::Uuid>) -> Option<String> {
    if !is_vendor_key(key) {
        return None;
    }
    Some(match workspace {
        Some(id) => format!(
            "{key} is a vendor key: the platform refuses to store it for a workspace whose model is platform-managed, and orgctl cannot tell from the tenant database whether workspace {id}'s model is; check before relying on this value (orgctl writes it either way)"
        ),
        None => format!(
            "{key} is a vendor key: as a global secret it applies to every inheriting workspace, also those whose model is platform-managed, for which the platform itself refuses this key; orgctl cannot tell from the tenant database which workspaces those are (orgctl writes it either way)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_keys_compare_upper_cased_and_trimmed() {
        for k in [
            "OPENAI_API_KEY",
            "openai_api_key",
            " Codex_Auth_Json ",
            "HF_TOKEN",
        ] {
            assert!(is_vendor_key(k), "{k}");
        }
        for k in ["OPENAI_API_KEYS", "MODEL", "LOG_LEVEL", "OPENAI", ""] {
            assert!(!is_vendor_key(k), "{k}");
        }
        assert_eq!(VENDOR_KEYS.len(), 23);
        assert!(vendor_key_warning("LOG_LEVEL", None).is_none());
        let w = vendor_key_warning("anthropic_api_key", None).unwrap_or_default();
        assert!(w.contains("every inheriting workspace"), "{w}");
        assert!(w.contains("cannot tell"), "{w}");
    }
}
