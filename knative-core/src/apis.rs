//! The API machinery every Knative type shares: path-aware validation errors
//! ([`FieldError`]), the [`Validate`] and [`SetDefaults`] traits, the
//! [`Context`] they run in, and Kubernetes name rules ([`names`]).
//!
//! Upstream these are `knative.dev/pkg/apis` (`FieldError`, `Validatable`,
//! `Defaultable`); the webhook calls `SetDefaults` then `Validate` on every
//! create and update. Here the embedded platform's `apply`, the operator's
//! admission path and tests call them the same way:
//!
//! ```
//! use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
//!
//! struct Traffic { percent: Option<i64> }
//!
//! impl SetDefaults for Traffic {
//!     fn set_defaults(&mut self, _ctx: &Context<'_>) {
//!         self.percent.get_or_insert(100);
//!     }
//! }
//!
//! impl Validate for Traffic {
//!     fn validate(&self, _ctx: &Context<'_>) -> FieldError {
//!         match self.percent {
//!             Some(p) if !(0..=100).contains(&p) => FieldError::out_of_bounds(p, 0, 100, "percent"),
//!             _ => FieldError::none(),
//!         }
//!     }
//! }
//!
//! let ctx = Context::create();
//! let mut t = Traffic { percent: None };
//! t.set_defaults(&ctx);
//! assert!(t.validate(&ctx).is_empty());
//! let bad = Traffic { percent: Some(150) };
//! assert_eq!(
//!     bad.validate(&ctx).via_field_index("traffic", 1).via_field("spec").to_string(),
//!     "spec.traffic[1].percent: expected 0 <= 150 <= 100"
//! );
//! ```

mod field_error;
pub mod names;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use field_error::{CURRENT_FIELD, Diagnostic, FieldError, IntoPaths, Level};

/// A type that can check itself and report every problem with its field path.
pub trait Validate {
    /// Every problem found, with paths relative to `self`; empty when valid.
    fn validate(&self, ctx: &Context<'_>) -> FieldError;
}

/// A type that fills in the defaults upstream's webhook would.
pub trait SetDefaults {
    /// Fills unset fields with their defaults.
    fn set_defaults(&mut self, ctx: &Context<'_>);
}

/// What is being done to the object being defaulted or validated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Operation {
    /// The object is being created.
    #[default]
    Create,
    /// The object's spec or metadata is being updated.
    Update,
    /// Only the object's status is being updated.
    StatusUpdate,
    /// The object is being deleted.
    Delete,
}

/// Where defaulting and validation run: the operation, the object before an
/// update, and configuration (typed values, e.g. a domain crate's defaults
/// ConfigMap) looked up by type.
#[derive(Clone, Default)]
pub struct Context<'a> {
    operation: Operation,
    original: Option<&'a (dyn Any + Send + Sync)>,
    dry_run: bool,
    config: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("operation", &self.operation)
            .field("has_original", &self.original.is_some())
            .field("dry_run", &self.dry_run)
            .field("config_entries", &self.config.len())
            .finish()
    }
}

impl<'a> Context<'a> {
    /// A context for creating an object.
    pub fn create() -> Self {
        Context::default()
    }

    /// A context for updating `original` (immutability checks read it back
    /// with [`original`](Self::original)).
    pub fn update<T: Any + Send + Sync>(original: &'a T) -> Self {
        Context {
            operation: Operation::Update,
            original: Some(original),
            ..Context::default()
        }
    }

    /// A context for an update of the status of `original`.
    pub fn status_update<T: Any + Send + Sync>(original: &'a T) -> Self {
        Context {
            operation: Operation::StatusUpdate,
            original: Some(original),
            ..Context::default()
        }
    }

    /// A context for deleting an object.
    pub fn delete() -> Self {
        Context {
            operation: Operation::Delete,
            ..Context::default()
        }
    }

    /// Marks the request as a dry run.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Adds a configuration value, replacing any earlier value of the same type.
    pub fn with_config<T: Any + Send + Sync>(mut self, value: T) -> Self {
        self.config.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// The configuration value of type `T`, if one was added.
    pub fn config<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.config
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
    }

    /// The operation.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// True when creating.
    pub fn is_create(&self) -> bool {
        self.operation == Operation::Create
    }

    /// True when updating the spec or metadata.
    pub fn is_update(&self) -> bool {
        self.operation == Operation::Update
    }

    /// True for a dry run.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// The object before the update, if it has type `T`.
    pub fn original<T: Any>(&self) -> Option<&T> {
        self.original.and_then(|o| o.downcast_ref::<T>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Spec {
        image: String,
    }

    #[derive(Debug, PartialEq)]
    struct Defaults {
        timeout_seconds: i64,
    }

    #[test]
    fn update_context_gives_back_the_original_of_its_type() {
        let before = Spec { image: "a".into() };
        let ctx = Context::update(&before);
        assert!(ctx.is_update());
        assert_eq!(ctx.original::<Spec>(), Some(&before));
        assert_eq!(ctx.original::<String>(), None);
        assert_eq!(Context::create().original::<Spec>(), None);
    }

    #[test]
    fn config_values_are_found_by_type() {
        let ctx = Context::create().with_config(Defaults {
            timeout_seconds: 300,
        });
        assert_eq!(
            ctx.config::<Defaults>().map(|d| d.timeout_seconds),
            Some(300)
        );
        assert!(ctx.config::<Spec>().is_none());
        let ctx = ctx.with_config(Defaults {
            timeout_seconds: 600,
        });
        assert_eq!(
            ctx.config::<Defaults>().map(|d| d.timeout_seconds),
            Some(600)
        );
    }
}
