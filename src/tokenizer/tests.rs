//! Unit tests of the byte tables; behaviour through the public API is in tests/tokenizer.rs.

use super::*;

#[test]
fn byte_level_table_covers_every_byte_once() {
    let table = byte_level_decode_table();
    let mut seen = [false; 256];
    for b in table.iter().flatten() {
        assert!(!seen[*b as usize], "byte {b} twice");
        seen[*b as usize] = true;
    }
    assert!(seen.iter().all(|s| *s));
    assert_eq!(byte_level_bytes("Ġhello", &table), b" hello");
    assert_eq!(byte_level_bytes("Ċ", &table), b"\n");
    // "é" in byte-level form is "Ã©" (0xC3 0xA9).
    assert_eq!(byte_level_bytes("Ã©", &table), "é".as_bytes());
    // A char outside the alphabet keeps its UTF-8.
    assert_eq!(byte_level_bytes("中", &table), "中".as_bytes());
}

#[test]
fn sentencepiece_pieces_map_to_bytes() {
    assert_eq!(parse_byte_token("<0x0A>"), Some(b'\n'));
    assert_eq!(parse_byte_token("<0xF0>"), Some(0xF0));
    assert_eq!(parse_byte_token("<0xF>"), None);
    assert_eq!(parse_byte_token("<s>"), None);
    assert_eq!(spm_bytes("\u{2581}the"), b" the");
    assert_eq!(spm_bytes("<0x41>"), b"A");
}
