//! The fuzz targets, shared by the AFL binaries and the regression replay.
pub mod targets;
