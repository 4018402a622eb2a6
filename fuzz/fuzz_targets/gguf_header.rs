//! Fuzzes the GGUF header parser: any input must give a header or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = torchless_gguf::parse_header(data) {
        // Everything the parser accepted must be internally consistent.
        for t in &h.tensors {
            assert!(h.data_offset + t.offset + t.size <= data.len() as u64);
        }
    }
});
