//! The local process backend (being written).
