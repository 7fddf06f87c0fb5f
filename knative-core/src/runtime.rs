//! Controller runtime (placeholder while building)
