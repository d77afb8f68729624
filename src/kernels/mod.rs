//! kernels (being written).
pub mod attention;
