#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| signproxy::fuzzing::ebay_signature_base(data));
