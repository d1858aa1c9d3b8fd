//! The MariaDB side of capture: binlog reading, row decoding, the snapshot and preflight.

pub mod binlog;
pub mod conn;
pub mod decode;
pub mod preflight;
pub mod row_image;
pub mod rows;
pub mod snapshot;
