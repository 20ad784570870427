//! wsi: the native command-line tool.
fn main() {}
