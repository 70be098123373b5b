//! One file (or folder) per subcommand: arguments → checked input → an operation → rendering.
//! The layer under [`crate::cli`]'s callers and over [`crate::ops`].
pub mod secret;
