//! Admission: what every request on the proxy port passes before it is routed — proxy
//! authentication (`[proxy.auth]`), a bounded request head, one well-formed `Host`, and no body
//! on CONNECT.

use std::sync::Arc;

use base64::Engine as _;
use http::{header, HeaderMap, Method, Request};

use super::ProxyError;
use crate::config::{ProxyAuth, ProxyClient};
use crate::secret::constant_time_eq;

/// Who is asking: `None` when `[proxy.auth]` is off (loopback or `allow_unauthenticated`).
pub type Client = Option<Arc<ProxyClient>>;

/// Checks `Proxy-Authorization: Basic` against every configured client. Each comparison runs
/// in constant time over SHA-256 digests, and every client is compared, so neither a username
/// nor a password length leaks through timing.
pub fn authenticate(auth: Option<&ProxyAuth>, headers: &HeaderMap) -> Result<Client, ProxyError> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    let Some(value) = headers.get(header::PROXY_AUTHORIZATION) else {
        return Err(ProxyError::ProxyAuthRequired(
            "signproxy needs proxy credentials: put them in the proxy URL \
             (HTTP_PROXY=http://USER:PASSWORD@HOST:PORT) or send Proxy-Authorization: Basic"
                .to_owned(),
        ));
    };
    let rejected = || {
        ProxyError::ProxyAuthRequired(
            "the proxy credentials were not accepted: check the username and password in the \
             proxy URL against [[proxy.auth.clients]]"
                .to_owned(),
        )
    };
    let (scheme, encoded) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .ok_or_else(rejected)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(ProxyError::ProxyAuthRequired(format!(
            "Proxy-Authorization uses `{scheme}`; signproxy accepts Basic"
        )));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| rejected())?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(rejected)?;
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    let mut found = None;
    for client in &auth.clients {
        let user_ok = constant_time_eq(user, client.username.as_bytes());
        let password_ok = constant_time_eq(password, client.password.expose().as_bytes());
        if bool::from(user_ok & password_ok) && found.is_none() {
            found = Some(Arc::clone(client));
        }
    }
    found.map(Some).ok_or_else(rejected)
}

/// The client a tunnel was opened by, as the live config sees it now: the same username with
/// the same password, or a 407 (the connection then closes and the client reconnects).
pub fn reauthorize(auth: Option<&ProxyAuth>, opened_by: &Client) -> Result<Client, ProxyError> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    let still = opened_by.as_ref().and_then(|was| {
        auth.clients
            .iter()
            .find(|now| now.username == was.username && now.password == was.password)
    });
    match still {
        Some(client) => Ok(Some(Arc::clone(client))),
        None => Err(ProxyError::ProxyAuthRequired(
            "the credentials this tunnel was opened with are no longer accepted (the config \
             changed): open a new connection"
                .to_owned(),
        )),
    }
}

/// The head's size as it arrived, near enough: request line plus `name: value\r\n` lines.
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + line
}

/// The checks that need only the head: its size, its `Host`, and a CONNECT's framing.
pub fn check_head<B>(req: &Request<B>, max_header_bytes: usize) -> Result<(), ProxyError> {
    let size = head_size(req);
    if size > max_header_bytes {
        return Err(ProxyError::HeadersTooLarge {
            size,
            limit: max_header_bytes,
        });
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if let (Some(_), Some(_)) = (hosts.next(), hosts.next()) {
        return Err(ProxyError::BadRequest(
            "the request has more than one Host header: send exactly one".to_owned(),
        ));
    }
    let host_has_userinfo = req
        .headers()
        .get(header::HOST)
        .is_some_and(|h| h.as_bytes().contains(&b'@'));
    let uri_has_userinfo = req
        .uri()
        .authority()
        .is_some_and(|a| a.as_str().contains('@'));
    if host_has_userinfo || uri_has_userinfo {
        return Err(ProxyError::BadRequest(
            "the target carries credentials (`user@host`): remove them from the URL; proxy \
             credentials belong in the proxy URL, not the request's"
                .to_owned(),
        ));
    }
    if req.method() == Method::CONNECT {
        let declares_body = req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        if declares_body {
            return Err(ProxyError::BadRequest(
                "a CONNECT request cannot carry a body (RFC 9110 §9.3.6): send the bytes \
                 through the tunnel once it is open"
                    .to_owned(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn auth() -> ProxyAuth {
        ProxyAuth {
            clients: vec![
                Arc::new(ProxyClient {
                    username: "app".into(),
                    password: Secret::new("pw-1"),
                    profiles: None,
                }),
                Arc::new(ProxyClient {
                    username: "shop-eu".into(),
                    password: Secret::new("pw:2"),
                    profiles: Some(vec!["tiktok.eu".into()]),
                }),
            ],
        }
    }

    fn basic(user_pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        );
        h.insert(header::PROXY_AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn basic_credentials_pick_the_client() {
        let a = auth();
        let who = authenticate(Some(&a), &basic("shop-eu:pw:2"))
            .unwrap()
            .unwrap();
        assert_eq!(who.username, "shop-eu");
        let who = authenticate(Some(&a), &basic("app:pw-1")).unwrap().unwrap();
        assert_eq!(who.username, "app");
        assert!(authenticate(None, &HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn anything_else_is_407() {
        let a = auth();
        for headers in [
            HeaderMap::new(),
            basic("app:pw-2"),
            basic("app:"),
            basic("shop-eu:pw-1"),
            basic("nobody:pw-1"),
            basic("apppw-1"),
        ] {
            let e = authenticate(Some(&a), &headers).unwrap_err();
            assert_eq!(e.code(), "proxy_auth_required");
            assert_eq!(e.status(), 407);
            assert!(!e.to_string().contains("pw-1"), "{e}");
        }
        let mut bearer = HeaderMap::new();
        bearer.insert(header::PROXY_AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(
            authenticate(Some(&a), &bearer).unwrap_err().code(),
            "proxy_auth_required"
        );
    }

    #[test]
    fn a_tunnel_keeps_its_client_only_while_the_config_does() {
        let a = auth();
        let opened = authenticate(Some(&a), &basic("app:pw-1")).unwrap();
        assert_eq!(
            reauthorize(Some(&a), &opened).unwrap().unwrap().username,
            "app"
        );
        assert!(reauthorize(None, &opened).unwrap().is_none());
        assert_eq!(
            reauthorize(Some(&a), &None).unwrap_err().code(),
            "proxy_auth_required"
        );
        let changed = ProxyAuth {
            clients: vec![Arc::new(ProxyClient {
                username: "app".into(),
                password: Secret::new("rotated"),
                profiles: None,
            })],
        };
        assert_eq!(
            reauthorize(Some(&changed), &opened).unwrap_err().code(),
            "proxy_auth_required"
        );
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn head_checks() {
        let ok = request("GET", "http://a.example/x", &[("host", "a.example")]);
        assert!(check_head(&ok, 65536).is_ok());
        let two = request(
            "GET",
            "http://a.example/x",
            &[("host", "a.example"), ("host", "b.example")],
        );
        assert_eq!(check_head(&two, 65536).unwrap_err().code(), "bad_request");
        let userinfo = request("GET", "/x", &[("host", "user@a.example")]);
        assert_eq!(
            check_head(&userinfo, 65536).unwrap_err().code(),
            "bad_request"
        );
        let uri_userinfo = request("GET", "http://u:p@a.example/x", &[]);
        assert_eq!(
            check_head(&uri_userinfo, 65536).unwrap_err().code(),
            "bad_request"
        );
        let big = "x".repeat(2000);
        let large = request("GET", "http://a.example/", &[("x-big", big.as_str())]);
        let e = check_head(&large, 1024).unwrap_err();
        assert_eq!((e.code(), e.status().as_u16()), ("headers_too_large", 431));
        let connect_body = request("CONNECT", "a.example:443", &[("content-length", "5")]);
        assert_eq!(
            check_head(&connect_body, 65536).unwrap_err().code(),
            "bad_request"
        );
        let connect = request("CONNECT", "a.example:443", &[("content-length", "0")]);
        assert!(check_head(&connect, 65536).is_ok());
    }
}
