//! outpost's operator configuration: the TOML schema, validation into types that cannot hold an
//! invalid state, and errors that name file, line and column. Pure: no I/O but reading a file.

pub mod units;
