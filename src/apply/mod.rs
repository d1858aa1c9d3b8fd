//! `frappe-cdc apply`: Kafka → replica MariaDB, one replica transaction per document, with
//! conflict checks against the envelope's `before` image.

pub mod admit;
pub mod bulk;
pub mod config;
pub mod conflicts;
pub mod control;
pub mod decision;
pub mod document;
pub mod execute;
mod infile;
pub mod lag;
mod literal;
pub mod merge;
pub mod outcome;
pub mod ownership;
pub mod plan;
pub mod policy;
pub mod replica;
pub mod run;
pub mod schema;
pub mod sequence;
mod sql;
pub mod verify;
