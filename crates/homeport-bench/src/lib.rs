//! Shared fixtures for the comparison benchmarks.
