//! Kafka plumbing: the capture producer with delivery tracking, and topic setup.

pub mod producer;
