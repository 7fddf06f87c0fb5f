//! The `knative` command's parts: the admin API of `knative up`, tables
//! for `knative get`, and `knative demo`.

pub mod admin;
pub mod demo;
pub mod table;
