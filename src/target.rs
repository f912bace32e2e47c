//! Validation and canonical form of what clients may ask for: module names, modaliases and
//! module parameters.
//!
//! Everything here is a pure function over strings, so it is cheap to test and to fuzz. The rules
//! are deliberately narrow: a target is a module name or a modalias, never a path; a parameter is
//! `name` or `name=value` with a value drawn from a small safe character set, because parameters
//! can reach `/bin/sh` through `install` commands (as `$CMDLINE_OPTS`, exactly as modprobe passes
//! them) and must never be able to inject shell syntax there.

use thiserror::Error;

/// Longest target accepted. The kernel caps a whole uevent environment at 2048 bytes, so no real
/// modalias is longer; module names themselves are at most 55 bytes (`MODULE_NAME_LEN - 1`).
pub const MAX_TARGET_LEN: usize = 2048;
/// Longest module name the kernel accepts (`MODULE_NAME_LEN` is 56 including the NUL).
pub const MAX_MODULE_NAME_LEN: usize = 55;
/// Longest single `name=value` parameter accepted.
pub const MAX_PARAM_LEN: usize = 512;
/// Most parameters accepted with one load request.
pub const MAX_PARAMS: usize = 64;

/// Why a target or parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    /// The target was the empty string.
    #[error("empty target")]
    Empty,
    /// Longer than [`MAX_TARGET_LEN`].
    #[error("target is {0} bytes long; the limit is {MAX_TARGET_LEN}")]
    TooLong(usize),
    /// Contains `/`: targets are module names or modaliases, never paths.
    #[error("targets are module names or modaliases, not paths")]
    Path,
    /// Starts with `.` or `-` (`..`, hidden files, option look-alikes).
    #[error("target may not start with '{0}'")]
    BadStart(char),
    /// A control character, NUL, whitespace or non-ASCII byte.
    #[error("target contains a disallowed character {0:?}")]
    BadChar(char),
    /// A parameter that is not `name` or `name=value` over the allowed characters.
    #[error("invalid parameter {0:?}: expected NAME or NAME=VALUE (NAME: letters, digits, '_', '-'; VALUE: letters, digits and _ . , : + - / = @ %)")]
    BadParam(String),
    /// More than [`MAX_PARAMS`] parameters.
    #[error("too many parameters: {0} (limit {MAX_PARAMS})")]
    TooManyParams(usize),
}

/// Checks that `target` is a plausible module name or modalias and returns it unchanged.
///
/// Allowed: printable ASCII except whitespace and `/`; not starting with `.` or `-`.
/// Modaliases use `:`, `*`, `,`, `+` and similar, so the set is wider than for names.
pub fn validate_target(target: &str) -> Result<&str, TargetError> {
    if target.is_empty() {
        return Err(TargetError::Empty);
    }
    if target.len() > MAX_TARGET_LEN {
        return Err(TargetError::TooLong(target.len()));
    }
    if let Some(c) = target.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(TargetError::BadChar(c));
    }
    if target.contains('/') {
        return Err(TargetError::Path);
    }
    match target.chars().next() {
        Some(c @ ('.' | '-')) => Err(TargetError::BadStart(c)),
        _ => Ok(target),
    }
}

/// True when `target` has the shape of a module name (letters, digits, `_`, `-`, short enough).
/// Modaliases (`pci:v...`) and alias names with other characters are not names.
pub fn looks_like_module_name(target: &str) -> bool {
    !target.is_empty()
        && target.len() <= MAX_MODULE_NAME_LEN
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The canonical form of a module name: dashes and underscores are the same name to the kernel,
/// which stores underscores (`snd-hda-intel` is `/sys/module/snd_hda_intel`).
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Validates module parameters (`NAME` or `NAME=VALUE`) and returns them joined by spaces, in the
/// form `finit_module` takes. Dashes in names are folded to underscores, as the kernel does.
pub fn validate_params(params: &[String]) -> Result<String, TargetError> {
    if params.len() > MAX_PARAMS {
        return Err(TargetError::TooManyParams(params.len()));
    }
    let mut out = Vec::with_capacity(params.len());
    for param in params {
        out.push(validate_param(param)?);
    }
    Ok(out.join(" "))
}

fn validate_param(param: &str) -> Result<String, TargetError> {
    let bad = || TargetError::BadParam(param.chars().take(64).collect());
    if param.len() > MAX_PARAM_LEN {
        return Err(bad());
    }
    let (name, value) = match param.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (param, None),
    };
    let name_ok = !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let value_ok = value.is_none_or(|v| v.bytes().all(is_safe_value_byte));
    if !name_ok || !value_ok {
        return Err(bad());
    }
    let name = canonical_name(name);
    Ok(match value {
        Some(value) => format!("{name}={value}"),
        None => name,
    })
}

/// Bytes allowed in parameter values: enough for numbers, lists, paths and addresses, and nothing
/// a shell gives meaning to (no quotes, `$`, `;`, `|`, `&`, backticks, globs, whitespace).
fn is_safe_value_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.,:+-/=@%".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_and_modaliases() {
        for ok in [
            "e1000",
            "snd-hda-intel",
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001",
            "acpi*:PNP0A03:*",
            "fs-vfat",
        ] {
            assert_eq!(validate_target(ok), Ok(ok), "{ok}");
        }
    }

    #[test]
    fn refuses_paths_controls_and_oddities() {
        assert_eq!(validate_target(""), Err(TargetError::Empty));
        assert_eq!(validate_target("../x"), Err(TargetError::Path));
        assert_eq!(validate_target(".."), Err(TargetError::BadStart('.')));
        assert_eq!(validate_target("a/b"), Err(TargetError::Path));
        assert_eq!(validate_target("-r"), Err(TargetError::BadStart('-')));
        assert_eq!(validate_target("a b"), Err(TargetError::BadChar(' ')));
        assert_eq!(validate_target("a\0b"), Err(TargetError::BadChar('\0')));
        assert_eq!(validate_target("a\nb"), Err(TargetError::BadChar('\n')));
        assert_eq!(validate_target("é"), Err(TargetError::BadChar('é')));
        let long = "a".repeat(MAX_TARGET_LEN + 1);
        assert_eq!(
            validate_target(&long),
            Err(TargetError::TooLong(MAX_TARGET_LEN + 1))
        );
    }

    #[test]
    fn canonical_folds_dashes() {
        assert_eq!(canonical_name("snd-hda-intel"), "snd_hda_intel");
        assert!(looks_like_module_name("snd-hda_intel"));
        assert!(!looks_like_module_name("pci:v1"));
    }

    #[test]
    fn params_are_checked_and_joined() {
        let ok = vec![
            "debug=1".to_string(),
            "fw-path=/lib/fw".to_string(),
            "quiet".into(),
        ];
        assert_eq!(
            validate_params(&ok).unwrap(),
            "debug=1 fw_path=/lib/fw quiet"
        );
        for bad in [
            "x=$(reboot)",
            "x=`id`",
            "x=a;b",
            "x=a b",
            "=1",
            "x=\"q\"",
            "-x=1",
        ] {
            assert!(validate_params(&[bad.to_string()]).is_err(), "{bad}");
        }
        let many = vec!["a=1".to_string(); MAX_PARAMS + 1];
        assert_eq!(
            validate_params(&many),
            Err(TargetError::TooManyParams(MAX_PARAMS + 1))
        );
    }
}
