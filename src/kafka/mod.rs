//! Kafka plumbing: the capture producer with delivery tracking, and topic setup.

pub mod markers;
pub mod options;
pub mod producer;
pub mod stats;
pub mod topic;
