//! Resolution of targets (module names, modaliases) into [`crate::plan::Plan`]s with libkmod.
//! (Temporary stub with the real API; the libkmod implementation lands from the resolver branch.)
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::plan::Plan;

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("resolver thread gone")]
    Gone,
}

pub struct KmodResolver;

impl KmodResolver {
    pub fn new(
        _module_dir: &Path,
        _config_dirs: Option<&[PathBuf]>,
    ) -> Result<Self, ResolverError> {
        Ok(KmodResolver)
    }
    pub fn resolve(&mut self, _target: &str) -> Result<Arc<Plan>, ResolverError> {
        Ok(Arc::new(Plan::NoMatch))
    }
}

#[derive(Clone)]
pub struct ResolverHandle;

impl ResolverHandle {
    pub fn spawn(
        _module_dir: PathBuf,
        _config_dirs: Option<Vec<PathBuf>>,
    ) -> Result<Self, ResolverError> {
        Ok(ResolverHandle)
    }
    pub async fn resolve(&self, _target: &str) -> Result<Arc<Plan>, ResolverError> {
        Ok(Arc::new(Plan::NoMatch))
    }
    pub async fn reload(&self) -> Result<(), ResolverError> {
        Ok(())
    }
}
