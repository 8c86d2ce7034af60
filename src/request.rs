//! From a client's request to the head that goes upstream: hop-by-hop hygiene, `Host` and
//! `Content-Length` for the buffered body. Shared by the proxy and `signproxy sign`, so both sign
//! and send the same bytes.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method};

use crate::route::PROFILE_HEADER;
use crate::signing::{RequestHead, SignError};

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1), plus the proxy's own.
/// Typed names: comparing them costs no parsing on the hot path.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any the `Connection` header names, and every
/// `Proxy-*` header (those are for signproxy: credentials, tunnels; never for the upstream).
/// Most heads carry none of them: one pass over the names finds that without allocating.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let (mut hop_by_hop, mut proxy_named) = (false, false);
    for name in headers.keys() {
        proxy_named |= name.as_str().starts_with("proxy-");
        hop_by_hop |= HOP_BY_HOP.contains(name);
    }
    if !hop_by_hop && !proxy_named {
        return;
    }
    // The names `Connection` lists go too; their values are cheap clones (shared bytes), and
    // removing by `&str` parses no name.
    let mut connection = headers.get_all(header::CONNECTION).iter();
    let first = connection.next().cloned();
    let more: Vec<HeaderValue> = connection.cloned().collect();
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    for listed in first.iter().chain(&more).filter_map(|v| v.to_str().ok()) {
        for name in listed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            headers.remove(name);
        }
    }
    if proxy_named {
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
    }
}

/// The head to sign for a buffered request: hop-by-hop and proxy headers removed, `Host` set to
/// `authority`, `Content-Length` set to the buffered length (omitted for a bodiless request that
/// never announced one).
pub fn prepare_head(
    method: Method,
    authority: String,
    path_and_query: String,
    mut headers: HeaderMap,
    body_len: usize,
) -> Result<RequestHead, SignError> {
    let announced_body = headers.contains_key(header::CONTENT_LENGTH)
        || headers.contains_key(header::TRANSFER_ENCODING);
    strip_hop_by_hop(&mut headers);
    if headers.contains_key(PROFILE_HEADER) {
        headers.remove(PROFILE_HEADER);
    }
    headers.remove(header::CONTENT_LENGTH);
    let host = HeaderValue::from_str(&authority)
        .map_err(|_| SignError::BadRequest(format!("`{authority}` is not a valid host")))?;
    headers.insert(header::HOST, host);
    if body_len > 0 || announced_body {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    // HTTP/1.1 sends an empty path as `/` (`https://host?q=1` is `GET /?q=1`), and the
    // marketplace verifies what it received: sign that.
    let path_and_query = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        format!("/{path_and_query}")
    };
    Ok(RequestHead {
        method,
        authority,
        path_and_query,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-custom-hop".parse().unwrap());
        h.insert("x-custom-hop", "1".parse().unwrap());
        h.insert("proxy-authorization", "Basic abc".parse().unwrap());
        h.insert("proxy-status", "x".parse().unwrap());
        h.insert("proxy-anything", "x".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn content_length_follows_the_buffered_body() {
        let mut h = HeaderMap::new();
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert(PROFILE_HEADER, "default".parse().unwrap());
        let head = prepare_head(Method::POST, "a.example".into(), "/x".into(), h, 5).unwrap();
        assert_eq!(head.headers["content-length"], "5");
        assert!(!head.headers.contains_key("transfer-encoding"));
        assert!(!head.headers.contains_key(PROFILE_HEADER));
        assert_eq!(head.headers["host"], "a.example");

        let get = prepare_head(
            Method::GET,
            "a.example".into(),
            "".into(),
            HeaderMap::new(),
            0,
        )
        .unwrap();
        assert!(!get.headers.contains_key("content-length"));
        assert_eq!(get.path_and_query, "/");
        let query_only = prepare_head(
            Method::GET,
            "a.example".into(),
            "?page_size=20".into(),
            HeaderMap::new(),
            0,
        )
        .unwrap();
        assert_eq!(query_only.path_and_query, "/?page_size=20");
    }
}
