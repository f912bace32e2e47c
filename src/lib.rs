//! modbroker: a module-load broker. See the README for the picture.
#![warn(missing_docs)]

pub mod plan;
pub mod resolver;
