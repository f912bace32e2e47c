//! A boot's record of module loading ([`crate::record`]) read back for the reports that
//! `modbroker blame` ([`crate::blame`]) and `modbroker plot` ([`crate::plot`]) print.
//!
//! [`read_dir`] reads every `*.json` instance file of a record directory, lists (never panics
//! on) the files it cannot use, and orders the instances by start: a [`BootRecord`], the one
//! input of both reports. [`ReportError`] says why there is none.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::{DaemonRecord, FORMAT_VERSION};

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The record directory does not exist.
    #[error("no module-loading record: {} does not exist (modbrokerd did not run this boot, or keeps no record)", dir.display())]
    NoRecord {
        /// The directory.
        dir: PathBuf,
    },
    /// The directory holds no usable instance file.
    #[error("no module-loading record in {}: no usable instance file ({} skipped)", dir.display(), skipped.len())]
    Empty {
        /// The directory.
        dir: PathBuf,
        /// The files that could not be used, with the reason.
        skipped: Vec<Skipped>,
    },
    /// The directory could not be listed.
    #[error("cannot read {}: {source}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// An instance file that was not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// File name within the record directory.
    pub file: String,
    /// Why (truncated, not JSON, another format version, ...).
    pub reason: String,
}

/// One daemon instance's record and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// File name within the record directory.
    pub file: String,
    /// Its content.
    pub record: DaemonRecord,
}

/// A record directory as read: the usable instances, oldest first, and the files skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct BootRecord {
    /// The directory read.
    pub dir: PathBuf,
    /// Ordered by `started_us` (then pid, then file name).
    pub instances: Vec<Instance>,
    /// Files that could not be used, by file name.
    pub skipped: Vec<Skipped>,
}

/// Reads every `*.json` file in `dir`. A file that cannot be read, is not a record, or has
/// another format version is skipped and listed in [`BootRecord::skipped`]. Fails when `dir`
/// does not exist ([`ReportError::NoRecord`]), cannot be listed, or holds no usable file
/// ([`ReportError::Empty`]).
pub fn read_dir(dir: &Path) -> Result<BootRecord, ReportError> {
    let io = |source| ReportError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReportError::NoRecord {
                dir: dir.to_path_buf(),
            })
        }
        Err(err) => return Err(io(err)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(io)?.path();
        if path.extension() == Some("json".as_ref()) {
            paths.push(path);
        }
    }
    paths.sort();
    let mut instances = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        match read_instance(&path) {
            Ok(record) => instances.push(Instance { file, record }),
            Err(reason) => skipped.push(Skipped { file, reason }),
        }
    }
    if instances.is_empty() {
        return Err(ReportError::Empty {
            dir: dir.to_path_buf(),
            skipped,
        });
    }
    instances.sort_by(|a, b| {
        (a.record.started_us, a.record.pid, &a.file).cmp(&(
            b.record.started_us,
            b.record.pid,
            &b.file,
        ))
    });
    Ok(BootRecord {
        dir: dir.to_path_buf(),
        instances,
        skipped,
    })
}

/// One instance file, or why it cannot be used.
fn read_instance(path: &Path) -> Result<DaemonRecord, String> {
    let bytes = std::fs::read(path).map_err(|err| format!("cannot read: {err}"))?;
    let described = |err: serde_json::Error| {
        if err.is_eof() {
            format!("truncated ({err})")
        } else {
            format!("not a record file ({err})")
        }
    };
    // The version first, so that a newer format is named as such, not as some field's error.
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let Version { version } = serde_json::from_slice(&bytes).map_err(described)?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}; this modbroker reads version {FORMAT_VERSION}"
        ));
    }
    let record: DaemonRecord = serde_json::from_slice(&bytes).map_err(described)?;
    if record.clock != "CLOCK_MONOTONIC" {
        return Err(format!(
            "clock {:?}; expected \"CLOCK_MONOTONIC\"",
            record.clock
        ));
    }
    Ok(record)
}
