// TODO(addr_classify): enable once the egress branch lands `signproxy::egress::classify(IpAddr)`.
// Then: add `pub fn addr_classify(data: &[u8])` to src/fuzzing.rs (build an Ipv4Addr from 4 bytes
// or an Ipv6Addr from 16, classify it, and assert what must hold, e.g. that the IPv4-mapped IPv6
// form of an address classifies like the address itself), uncomment the target below, add a
// [[bin]] entry named `addr_classify` to fuzz/Cargo.toml, seeds under fuzz/corpus/addr_classify/,
// and the target to the list in tests/fuzz_corpus.rs.
//
// #![no_main]
//
// use libfuzzer_sys::fuzz_target;
//
// fuzz_target!(|data: &[u8]| signproxy::fuzzing::addr_classify(data));
