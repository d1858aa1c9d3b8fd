//! The MariaDB side of capture: binlog reading, row decoding, the snapshot and preflight.

pub mod binlog;
pub mod preflight;
pub mod row_image;
pub mod rows;
pub mod snapshot;
pub mod table;

// The value codec and the connection target are shared with apply; they live at the crate
// root (`crate::cell`, `crate::db`) and keep their old paths here.
pub use crate::cell as decode;
pub use crate::db as conn;
