//! A small, bounded `multipart/form-data` reader: the IOP signature covers the text fields of a
//! multipart body (parts without a `filename`), so the signer must find them. It only reads;
//! the body is forwarded as received.

use std::borrow::Cow;

/// More parts than this is not an API call: refuse rather than scan on.
const MAX_PARTS: usize = 1_000;
/// A part's header block longer than this is malformed.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    /// The `name` of its `Content-Disposition: form-data`.
    pub name: String,
    /// Whether it has a `filename`: a file (byte) part, never signed.
    pub is_file: bool,
    /// The part's content, exactly as sent.
    pub value: &'a [u8],
}

/// The `boundary` parameter of a `multipart/form-data` content type, unquoted.
pub fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        // RFC 2046: 1 to 70 characters.
        (!value.is_empty() && value.len() <= 70).then(|| value.to_owned())
    })
}

/// The parts of `body`, delimited by `boundary` (RFC 7578). Errors say what is malformed.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The preamble (usually empty) ends at the first delimiter.
    let mut at = find(body, delimiter, 0)
        .ok_or_else(|| format!("the body has no `--{boundary}` delimiter"))?
        + delimiter.len();
    let mut parts = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let Some(after_crlf) = rest.strip_prefix(b"\r\n") else {
            return Err("a delimiter is not followed by CRLF or `--`".to_owned());
        };
        at += rest.len() - after_crlf.len();
        if parts.len() >= MAX_PARTS {
            return Err(format!("more than {MAX_PARTS} parts"));
        }
        let headers_end = find(
            &body[..body.len().min(at + MAX_HEADER_BYTES)],
            b"\r\n\r\n",
            at,
        )
        .ok_or_else(|| {
            format!("a part's headers do not end with a blank line within {MAX_HEADER_BYTES} bytes")
        })?;
        let headers = std::str::from_utf8(&body[at..headers_end])
            .map_err(|_| "a part's headers are not UTF-8".to_owned())?;
        let content_start = headers_end + 4;
        let mut closing = Vec::with_capacity(delimiter.len() + 2);
        closing.extend_from_slice(b"\r\n");
        closing.extend_from_slice(delimiter);
        let content_end = find(body, &closing, content_start)
            .ok_or_else(|| format!("a part is not closed by `--{boundary}`"))?;
        let (name, is_file) = disposition(headers)?;
        parts.push(Part {
            name,
            is_file,
            value: &body[content_start..content_end],
        });
        at = content_end + closing.len();
    }
}

/// The `name` and whether there is a `filename`, from a part's `Content-Disposition` header.
fn disposition(headers: &str) -> Result<(String, bool), String> {
    let value = headers
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-disposition")
                .then_some(value)
        })
        .ok_or_else(|| "a part has no Content-Disposition header".to_owned())?;
    let mut name = None;
    let mut is_file = false;
    for param in split_params(value).into_iter().skip(1) {
        let Some((key, raw)) = param.split_once('=') else {
            continue;
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(unquote(raw.trim()).into_owned()),
            "filename" | "filename*" => is_file = true,
            _ => {}
        }
    }
    let name = name.ok_or_else(|| "a part's Content-Disposition has no `name`".to_owned())?;
    Ok((name, is_file))
}

/// Splits on `;` outside quoted strings.
fn split_params(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

fn unquote(raw: &str) -> Cow<'_, str> {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if inner.contains('\\') => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            Cow::Owned(out)
        }
        Some(inner) => Cow::Borrowed(inner),
        None => Cow::Borrowed(raw),
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > haystack.len() || needle.is_empty() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n{\"a\":\"x;y\"}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\x00\xff--XyZ-not\r\n--XyZ\r\ncontent-disposition: form-data; name=\"q\\\"x\"\r\n\r\n\r\n--XyZ--\r\n";

    #[test]
    fn text_and_file_parts_are_told_apart() {
        let parts = parse(BODY, "XyZ").unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].name, "payload");
        assert!(!parts[0].is_file);
        assert_eq!(parts[0].value, b"{\"a\":\"x;y\"}");
        assert_eq!(parts[1].name, "image");
        assert!(parts[1].is_file);
        // The delimiter only counts after CRLF: `--XyZ-not` inside content is content.
        assert_eq!(parts[1].value, b"\x00\xff--XyZ-not");
        assert_eq!(parts[2].name, "q\"x");
        assert_eq!(parts[2].value, b"");
    }

    #[test]
    fn boundary_is_read_quoted_or_not() {
        assert_eq!(
            boundary("multipart/form-data; boundary=XyZ").as_deref(),
            Some("XyZ")
        );
        assert_eq!(
            boundary("multipart/form-data; charset=x; Boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("multipart/form-data; boundary="), None);
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        for (body, reason) in [
            (&b"no delimiter"[..], "delimiter"),
            (
                b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunclosed",
                "not closed",
            ),
            (b"--XyZ\r\nX: y\r\n\r\nv\r\n--XyZ--", "Content-Disposition"),
            (
                b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nv\r\n--XyZ--",
                "`name`",
            ),
            (b"--XyZjunk", "CRLF"),
        ] {
            let e = parse(body, "XyZ").unwrap_err();
            assert!(e.contains(reason), "{e}");
        }
        let mut many = Vec::new();
        for _ in 0..=MAX_PARTS {
            many.extend_from_slice(
                b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n",
            );
        }
        many.extend_from_slice(b"--b--");
        assert!(parse(&many, "b").unwrap_err().contains("more than"));
        let long = format!("--b\r\n{}\r\n\r\nv\r\n--b--", "x".repeat(MAX_HEADER_BYTES));
        assert!(parse(long.as_bytes(), "b")
            .unwrap_err()
            .contains("blank line"));
    }
}
