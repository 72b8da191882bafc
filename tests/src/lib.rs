//! Shared helpers for Concord end-to-end tests.
