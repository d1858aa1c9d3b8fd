//! Frappe knowledge: which tables are DocTypes, child tables and Singles, what is noise, and
//! how a row maps to the document it belongs to.

pub mod catalog;
pub mod routing;
