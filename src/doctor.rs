//! `signproxy doctor`: reads a raw HTTP request that someone's own code signed, finds the
//! profile for its host, and asks that marketplace whether the signature is right and, if not,
//! which mistake reproduces it. Prints for a person, or JSON for tools.

use std::io::Read;
use std::path::PathBuf;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::config::{Config, Profile};
use crate::marketplace::Diagnosis;
use crate::route::{named_port, normalize_host, route, Destination, Route, RouteError};
use crate::signing::{https_authority, RequestHead};

/// A raw request: the request line, headers, a blank line, then the body as sent.
pub struct RawRequest {
    pub head: RequestHead,
    pub host: String,
    pub body: Vec<u8>,
}

/// Parses the request as an HTTP client wrote it (CRLF or bare LF line ends): a full URL in the
/// request line, or origin-form with a `Host` header.
pub fn parse_request(raw: &[u8]) -> Result<RawRequest, String> {
    let (head_end, body_start) = find_head_end(raw)
        .ok_or("no blank line after the headers: give the request line, the headers, an empty line, then the body")?;
    let head_text = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| "the request head is not UTF-8 text".to_owned())?;
    let mut lines = head_text.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "`{request_line}` is not a request line: write `METHOD URL HTTP/1.1`"
        ));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line `{line}` is not `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("the value of header `{name}` is not valid in HTTP"))?;
        headers.append(name, value);
    }
    let uri: Uri = target
        .parse()
        .map_err(|e| format!("`{target}` is not a request target ({e})"))?;
    let https = uri.scheme_str() != Some("http");
    let (host, port) = match uri.host() {
        Some(host) => (host.to_owned(), uri.port_u16()),
        None => {
            let value = headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .ok_or("the request line has no host and there is no Host header")?;
            let authority: http::uri::Authority = value
                .parse()
                .map_err(|_| format!("Host `{value}` is not a host name"))?;
            (authority.host().to_owned(), authority.port_u16())
        }
    };
    let host = normalize_host(&host);
    let path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let port = named_port(https, port);
    let port = if port == 80 && !https { 443 } else { port };
    Ok(RawRequest {
        head: RequestHead {
            method,
            authority: https_authority(&host, port),
            path_and_query,
            headers,
        },
        host,
        body: raw[body_start..].to_vec(),
    })
}

fn find_head_end(raw: &[u8]) -> Option<(usize, usize)> {
    let crlf = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    let lf = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The profile whose signature the request claims: by `--profile`, else by host.
pub fn profile_for(
    config: &Config,
    host: &str,
    requested: Option<&str>,
) -> Result<std::sync::Arc<Profile>, String> {
    let dest = Destination {
        host,
        port: 443,
        tunnel: false,
        https: true,
    };
    match route(config, dest, requested, None) {
        Ok(Route::Sign(profile)) => Ok(profile),
        Ok(Route::Passthrough) => Err(format!(
            "`{host}` is a passthrough host: no profile signs it"
        )),
        Err(e @ RouteError::HostNotAllowed { .. }) => Err(format!(
            "{e} (the doctor checks requests for hosts a profile serves)"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The diagnosis for `request` as `profile` would sign it; when no known mistake explains a
/// wrong signature, another profile of the same marketplace whose secret reproduces it is named.
pub fn diagnose(
    config: &Config,
    profile: &Profile,
    request: &RawRequest,
    now: Timestamp,
) -> Result<Diagnosis, String> {
    let run = |p: &Profile| p.signer.diagnose(&request.head, &request.body, now);
    let mut diagnosis = run(profile).ok_or_else(|| {
        format!(
            "the doctor does not diagnose `{}` requests yet",
            profile.kind
        )
    })?;
    if !diagnosis.valid && diagnosis.mistake.is_none() {
        let others = config
            .profiles
            .iter()
            .filter(|p| p.kind == profile.kind && p.name != profile.name);
        for other in others {
            if run(other).is_some_and(|d| d.valid) {
                let mistake = format!(
                    "it was signed with the credentials of profile {}, not {}",
                    other.qualified_name(),
                    profile.qualified_name()
                );
                diagnosis.verdict = format!("the signature is wrong: {mistake}");
                diagnosis.mistake = Some(mistake);
                break;
            }
        }
    }
    Ok(diagnosis)
}

/// What `doctor` prints for a person.
pub fn render(profile: &Profile, diagnosis: &Diagnosis) -> String {
    let mut out = format!(
        "{}: {}\n",
        profile.qualified_name(),
        if diagnosis.valid { "OK" } else { "WRONG" }
    );
    out.push_str(&diagnosis.verdict);
    out.push('\n');
    for note in &diagnosis.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    if !diagnosis.valid {
        out.push_str("\nexpected string to sign (secrets masked):\n");
        out.push_str(&diagnosis.expected);
        out.push('\n');
        if let Some(signed) = &diagnosis.signed {
            out.push_str("\nwhat was signed instead:\n");
            out.push_str(signed);
            out.push('\n');
        }
    }
    out
}

/// The raw request `doctor` judges: from a file (`-`: stdin), or put together from `METHOD URL`
/// with `-H` headers and a `-d`/`--data-file` body, as `sign` takes them.
pub fn read_input(
    request: &[String],
    headers: &[String],
    data: Option<String>,
    data_file: Option<PathBuf>,
) -> Result<Vec<u8>, String> {
    match request {
        [file] => {
            let mut raw = Vec::new();
            if file == "-" {
                std::io::stdin()
                    .read_to_end(&mut raw)
                    .map_err(|e| format!("cannot read the request from stdin: {e}"))?;
            } else {
                raw = std::fs::read(file).map_err(|e| format!("cannot read {file} ({e})"))?;
            }
            Ok(raw)
        }
        [method, url] => {
            let mut head = format!("{method} {url} HTTP/1.1\r\n");
            for header in headers {
                head.push_str(header);
                head.push_str("\r\n");
            }
            head.push_str("\r\n");
            let mut raw = head.into_bytes();
            match (data, data_file) {
                (Some(data), _) => raw.extend_from_slice(data.as_bytes()),
                (None, Some(path)) => raw
                    .extend(std::fs::read(&path).map_err(|e| {
                        format!("cannot read --data-file {} ({e})", path.display())
                    })?),
                (None, None) => {}
            }
            Ok(raw)
        }
        _ => Err("give a request file (or -), or METHOD URL".to_owned()),
    }
}

/// `signproxy doctor`: Ok(true) when the signature is right.
pub fn run(
    config: &Config,
    raw: &[u8],
    profile: Option<&str>,
    now: Option<u64>,
    json: bool,
) -> Result<bool, String> {
    let request = parse_request(raw)?;
    let profile = profile_for(config, &request.host, profile)?;
    let now = now
        .map(Timestamp::from_secs)
        .unwrap_or_else(|| SystemClock.now());
    let diagnosis = diagnose(config, &profile, &request, now)?;
    if json {
        let value = serde_json::json!({
            "profile": profile.qualified_name(),
            "diagnosis": diagnosis,
        });
        println!("{value}");
    } else {
        print!("{}", render(&profile, &diagnosis));
    }
    Ok(diagnosis.valid)
}
