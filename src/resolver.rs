//! Resolution of targets (module names, modaliases) into [`crate::plan::Plan`]s with libkmod.
