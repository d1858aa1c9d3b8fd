//! The SQL vocabulary of apply's replica code: its error type (classified by the error policy,
//! `failure.rs`), identifier quoting and placeholder lists.

use crate::failure::{self, Class};

/// Errors of replica reads and writes.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica query failed: {}", failure::describe(.0))]
    Sql(#[source] Box<mysql_async::Error>),
    #[error("table {table} does not exist on the replica")]
    UnknownTable { table: String },
    #[error(
        "doctype {doctype} has no table field {field} on the replica (tabDocField / tabCustom Field)"
    )]
    UnknownTableField { doctype: String, field: String },
    #[error("the row for {table} does not name the envelope's document")]
    NotOwnRow { table: String },
    #[error("cannot decode replica column {column} of {table}")]
    Decode { table: String, column: String },
    /// The set-wise writer's `LOAD DATA` stored fewer rows than sent, or warned: a new
    /// document's row was on the replica after all, or a value did not fit its column.
    #[error(
        "LOAD DATA into {table} stored {stored} of {sent} new rows with {warnings} warnings \
         (a row already on the replica, or a value the column rejects)"
    )]
    LoadMismatch {
        table: String,
        sent: u64,
        stored: u64,
        warnings: u16,
    },
}

impl ReplicaError {
    /// The error policy's class (`failure.rs`): a table, row or value of this document the
    /// replica cannot take is the message's fault; SQL errors go by their code.
    pub fn class(&self) -> Class {
        match self {
            ReplicaError::Sql(e) => failure::mysql(e),
            _ => Class::DeadLetter,
        }
    }

    /// The server's error code, when the replica answered with an error.
    pub fn server_code(&self) -> Option<u16> {
        match self {
            ReplicaError::Sql(e) => match e.as_ref() {
                mysql_async::Error::Server(se) => Some(se.code),
                _ => None,
            },
            _ => None,
        }
    }
}

impl From<mysql_async::Error> for ReplicaError {
    fn from(e: mysql_async::Error) -> Self {
        ReplicaError::Sql(Box::new(e))
    }
}

pub(crate) fn q(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

/// Most values in one `IN (...)` list or multi-row statement.
pub(crate) const CHUNK: usize = 500;

/// `?, ?, ...` for `n` parameters.
pub(crate) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}
