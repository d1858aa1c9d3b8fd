//! frappe-cdc: change-data-capture for Frappe/ERPNext.
//!
//! `capture` reads the primary MariaDB's row-based binlog, groups each committed transaction's
//! row events into full Frappe document snapshots (parent row plus every child row, before and
//! after), and publishes them to Kafka. See README.md for the design and operations.

pub mod apply;
pub mod capture;
pub mod cell;
pub mod cli;
pub mod db;
pub mod envelope;
pub mod failure;
pub mod files;
pub mod frappe;
pub mod image;
pub mod kafka;
pub mod metrics;
pub mod page;
pub mod position;
pub mod progress;
pub mod source;
pub mod state;
