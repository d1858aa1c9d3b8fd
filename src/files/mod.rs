//! Attachments: the replica gets the files, not just the `tabFile` rows.
//!
//! * `plan.rs` — what a File document's change means for the bytes (pure);
//! * `status.rs` — `_frappe_cdc_files`, written by apply in the document's own transaction;
//! * `source.rs` — the primary's web server or folder (`--files-from`);
//! * `store.rs` — temporary file, fsync, MD5 check, rename into the replica's site folder;
//! * `fetch.rs` — the task that works through the status table, with the collision rule;
//! * `metrics.rs` — counters, gauges and latency of the above;
//! * `verify.rs` — `verify --files`: the replica's disk against its File rows;
//! * `sync.rs` — `frappe-cdc files sync`;
//! * `args.rs` — the `--files-*` flags and the `files` command.
//!
//! Consistent: a File row applied to the replica always has its status row (same
//! transaction); bytes at a final path are complete and, when the row has a hash, checked.
//! Crash/restart: downloads cut short leave only temporary files (swept at start); their rows
//! are still due and are fetched again. The stream never waits for a download.

pub mod args;
pub mod fetch;
pub mod metrics;
pub mod plan;
pub mod source;
pub mod status;
pub mod store;
pub mod sync;
pub mod verify;
