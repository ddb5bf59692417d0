//! `flate2`'s `zlib-ng` backend imports the same zlib-compatible items (`z_stream`, `deflate`,
//! `inflateInit2_`, the `Z_*` constants, ...) from `libz_ng_sys` that its `zlib` backend imports
//! from `libz_sys`, so re-exporting `libz_sys` satisfies it with stock zlib.
pub use libz_sys::*;
