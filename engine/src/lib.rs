//! Per-core storage engine (being built).
