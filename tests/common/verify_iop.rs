//! An independent IOP (Lazada, AliExpress) signature verifier, written from the spec
//! (shared/specs/lazada-aliexpress.md), never calling signproxy: prefix rule, decoded query +
//! form + multipart text parameters, byte-wise sort, HMAC-SHA256 with the app secret, upper-case
//! hex, millisecond timestamp within 7200 s.

use std::collections::BTreeMap;

use super::received::Received;

/// Which gateway's paths a request is judged by.
#[derive(Clone, Copy, Debug)]
pub struct IopRules {
    /// AliExpress: `POST /sync` is signed with no prefix.
    pub sync_without_prefix: bool,
}

pub const LAZADA: IopRules = IopRules {
    sync_without_prefix: false,
};
pub const ALIEXPRESS: IopRules = IopRules {
    sync_without_prefix: true,
};

/// Upper-case hex HMAC-SHA256(key = secret, message).
pub fn iop_hmac(secret: &str, message: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode_upper(ring::hmac::sign(&key, message).as_ref())
}

/// The text fields (parts without a filename) of a multipart body, by a plain split on the
/// delimiter (enough for the bodies these tests send).
fn multipart_text_fields(body: &[u8], boundary: &str) -> Result<Vec<(String, String)>, String> {
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    for chunk in text.split(&delimiter).skip(1) {
        if chunk.starts_with("--") {
            break;
        }
        let chunk = chunk.strip_prefix("\r\n").ok_or("part without CRLF")?;
        let (head, content) = chunk.split_once("\r\n\r\n").ok_or("part without headers")?;
        let content = content.strip_suffix("\r\n").unwrap_or(content);
        let disposition = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .ok_or("part without content-disposition")?;
        if disposition.contains("filename=") {
            continue;
        }
        let name = disposition
            .split("name=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .ok_or("part without name")?;
        out.push((name.to_owned(), content.to_owned()));
    }
    Ok(out)
}

/// Every parameter the signature covers, decoded, from the query and the body.
pub fn iop_params(r: &Received) -> Result<Vec<(String, String)>, String> {
    let mut params = r.query_pairs();
    let content_type = r
        .header_str("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        params.extend(form_urlencoded::parse(&r.body).into_owned());
    } else if content_type.starts_with("multipart/form-data") {
        let boundary = content_type
            .split("boundary=")
            .nth(1)
            .ok_or("multipart without boundary")?;
        // The header was lower-cased for matching; take the boundary as sent.
        let original = r.header_str("content-type").unwrap_or("");
        let at = original.len() - boundary.len();
        params.extend(multipart_text_fields(&r.body, &original[at..])?);
    }
    Ok(params)
}

/// The string to sign for `r`: the prefix (`/rest/x/y` → `/x/y`; `/sync` → none when the rules
/// say so), then `{name}{value}` sorted byte-wise, `sign` and empty values left out.
pub fn iop_base_string(r: &Received, rules: IopRules) -> Result<Vec<u8>, String> {
    let path = r.path();
    let prefix = if rules.sync_without_prefix && path == "/sync" {
        ""
    } else {
        path.strip_prefix("/rest")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| format!("`{path}` is not an IOP API path"))?
    };
    let mut sorted: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    for (k, v) in iop_params(r)? {
        if k == "sign" || v.is_empty() {
            continue;
        }
        if sorted.insert(k.clone().into_bytes(), v).is_some() {
            return Err(format!("parameter `{k}` appears more than once"));
        }
    }
    let mut s = prefix.as_bytes().to_vec();
    for (k, v) in sorted {
        s.extend_from_slice(&k);
        s.extend_from_slice(v.as_bytes());
    }
    Ok(s)
}

/// Checks one signed IOP request: `app_key`, `sign_method=sha256`, a 13-digit `timestamp`
/// within 7200 s of this machine's clock, and `sign` equal to the recomputed upper-case HMAC.
/// System parameters must be in the query (never the body).
pub fn verify_iop(
    r: &Received,
    app_key: &str,
    app_secret: &str,
    rules: IopRules,
) -> Result<(), String> {
    let one = |key: &str| -> Result<String, String> {
        let values = r.query_params(key);
        match values.as_slice() {
            [v] => Ok(v.clone()),
            [] => Err(format!("query parameter `{key}` is missing")),
            _ => Err(format!(
                "query parameter `{key}` appears {} times",
                values.len()
            )),
        }
    };
    let got_key = one("app_key")?;
    if got_key != app_key {
        return Err(format!("app_key {got_key:?}, expected {app_key:?}"));
    }
    if one("sign_method")? != "sha256" {
        return Err("sign_method is not sha256".into());
    }
    let ts = one("timestamp")?;
    if ts.len() != 13 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("timestamp {ts:?} is not Unix milliseconds"));
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_millis() as u64;
    let ts: u64 = ts.parse().map_err(|_| "timestamp is not a number")?;
    if ts.abs_diff(now_ms) > 7_200_000 {
        return Err(format!(
            "timestamp {ts} is more than 7200 s from now ({now_ms})"
        ));
    }
    let sign = one("sign")?;
    if sign.len() != 64
        || !sign
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return Err(format!("sign {sign:?} is not 64 upper-case hex digits"));
    }
    let expected = iop_hmac(app_secret, &iop_base_string(r, rules)?);
    if sign != expected {
        return Err(format!(
            "sign mismatch: got {sign}, expected {expected} over {:?}",
            String::from_utf8_lossy(&iop_base_string(r, rules)?)
        ));
    }
    Ok(())
}

/// The verifier against the spec's official vector, so that it is known right before it judges
/// the proxy.
pub fn self_check() {
    let r = Received::new(
        "GET",
        "/rest/order/get?app_key=123456&access_token=test&order_id=1234&sign_method=sha256&timestamp=1517820392000&sign=X",
        &[],
        b"",
    );
    let base = iop_base_string(&r, LAZADA).expect("base string");
    assert_eq!(
        String::from_utf8_lossy(&base),
        "/order/getaccess_tokentestapp_key123456order_id1234sign_methodsha256timestamp1517820392000"
    );
    assert_eq!(
        iop_hmac("helloworld", &base),
        "4190D32361CFB9581350222F345CB77F3B19F0E31D162316848A2C1FFD5FAB4A"
    );
}
