//! The IOP doctor: given a request the user's own code signed, recompute its `sign` for its own
//! `timestamp` and, when it differs, find which known mistake reproduces it.

use super::sign::IopCredentials;
use crate::clock::Timestamp;
use crate::marketplace::Diagnosis;
use crate::signing::RequestHead;

pub fn diagnose(
    _creds: &IopCredentials,
    _head: &RequestHead,
    _body: &[u8],
    _now: Timestamp,
) -> Diagnosis {
    Diagnosis::invalid("not implemented yet", String::new(), Vec::new())
}
