//! In-process peers for tests.
