//! What apply did with one message (`Outcome`), shared by the one-message and bulk paths.

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    AlreadyApplied,
    Filtered,
    Tombstone,
    /// A progress marker of capture (only moves the offset).
    Progress,
    Conflict,
    DeadLetter(String),
}

impl Outcome {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate | Outcome::AlreadyApplied => "skipped",
            Outcome::Filtered => "filtered",
            Outcome::Tombstone => "tombstone",
            Outcome::Progress => "progress",
            Outcome::Conflict => "conflict",
            Outcome::DeadLetter(_) => "dead_letter",
        }
    }
}

/// The kind of a conflict reason, for logs: the text before its first colon (the rest may
/// name documents and rows, which stay in the conflicts table).
pub(crate) fn reason_kind(reason: &str) -> &str {
    reason.split(':').next().unwrap_or(reason)
}
