//! What a test upstream received, with small accessors.

/// The outcome of a [`crate::common::Verifier`] on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// "tiktok", "ebay" or "none".
    pub scheme: &'static str,
    pub ok: bool,
    pub error: Option<String>,
}

impl Verdict {
    pub fn none() -> Verdict {
        Verdict {
            scheme: "none",
            ok: true,
            error: None,
        }
    }

    pub fn from_result(scheme: &'static str, result: Result<(), String>) -> Verdict {
        match result {
            Ok(()) => Verdict {
                scheme,
                ok: true,
                error: None,
            },
            Err(e) => Verdict {
                scheme,
                ok: false,
                error: Some(e),
            },
        }
    }
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// The request target's path and query, exactly as on the wire (for an absolute-form target,
    /// only its path and query; see `uri` for the whole target).
    pub path_and_query: String,
    /// The whole request target as received (differs from `path_and_query` only in absolute form).
    pub uri: String,
    /// "HTTP/1.1", "HTTP/2.0", ...
    pub version: String,
    /// Header names lower-cased (hyper does that); values raw. In arrival order, except that hyper
    /// groups repeated values of one name together at the first occurrence.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole body, byte for byte.
    pub body: Vec<u8>,
    /// Set when reading the body failed part-way (`body` then holds what arrived).
    pub body_error: Option<String>,
    /// The TLS SNI the client sent; None for plain HTTP or no SNI.
    pub tls_sni: Option<String>,
    /// 1-based number of the TCP connection the request arrived on (accept order).
    pub connection: usize,
    /// What the upstream's verifier said about this request.
    pub signature: Verdict,
}

impl Received {
    /// A hand-built request (for verifier unit tests); `connection` 0, no SNI, verdict "none".
    pub fn new(method: &str, path_and_query: &str, headers: &[(&str, &str)], body: &[u8]) -> Self {
        Received {
            method: method.to_string(),
            path_and_query: path_and_query.to_string(),
            uri: path_and_query.to_string(),
            version: "HTTP/1.1".to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
            body_error: None,
            tls_sni: None,
            connection: 0,
            signature: Verdict::none(),
        }
    }

    /// The path, without `?` and query.
    pub fn path(&self) -> &str {
        match self.path_and_query.split_once('?') {
            Some((p, _)) => p,
            None => &self.path_and_query,
        }
    }

    /// The raw query (after the first `?`), if there is a `?`.
    pub fn query(&self) -> Option<&str> {
        self.path_and_query.split_once('?').map(|(_, q)| q)
    }

    /// Decoded query pairs in order (`%XX` decoded, `+` as space).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect()
    }

    /// The first decoded value of query parameter `key`.
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Every decoded value of query parameter `key`.
    pub fn query_params(&self, key: &str) -> Vec<String> {
        self.query_pairs()
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of header `name` as UTF-8 (None when absent or not UTF-8).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The Host header's host part, lower-cased, without port (for routing in verifiers).
    pub fn host_name(&self) -> Option<String> {
        let host = self.header_str("host")?;
        let name = if let Some(rest) = host.strip_prefix('[') {
            rest.split(']').next().unwrap_or(rest)
        } else {
            host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
        };
        Some(name.to_ascii_lowercase())
    }
}
