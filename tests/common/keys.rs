//! Test keys for eBay signing (Ed25519 and RSA), PEM/DER helpers, and a tiny ring-based signer.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::SecureRandom as _;
use ring::signature::KeyPair as _;

/// RFC 9421 Appendix B.1.4 `test-key-ed25519` (also used by eBay's verification service).
pub const RFC9421_ED25519_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
";

/// The public half of [`RFC9421_ED25519_PRIVATE_PEM`] (SPKI).
pub const RFC9421_ED25519_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
";

/// A 2048-bit RSA key made for these tests (PKCS#8, rsaEncryption OID). Not a secret.
pub const TEST_RSA_2048_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDI8ces2ZKZPema
fvCd69mGkP1nNWbklAe5G1u8HZWQbpi/wo5yDM2UZNKQ0wo8fUu0TG5CmcKI/U7D
OhanIcHsx7QvKb8fFJBReblKXpEeL5bT+ZCCL9uSeKp6gHO+C1d/vq+GrnTDKTvx
8gpnuxWAhuJA/mMu5DKtIXSJ4VYm9XFpSA+i3lqCJV05Z9WRLcQb+29tTFySIxnn
cM9Qgi2jHrMQ1INno7c17+r3os4WmrJHy4T7uOWocAyrZXc8mBgaWpO4lr8/lB6f
ZiLbuOuPXkEinOFiMsPZe5inKg81KmaRYkzimWvSap3xJm3qJ+FCxyp9GYxDrH9U
p5GzidoDAgMBAAECgf9JLLRQbnepXATvISKJz88kzRgEaXDYEVUJb4s9cXdHxU8c
1jKQb5qQBPv8XI0+FTGtN1MpLPHP7h4RCypfyXVQ0tLwMY5nruo4SIAOo2Q1L2/X
Wee2Cv9jXR2BC6HphIhbaezuv8nFWVLUNcXkybqgXgsUyxWYRcCy2E38pbNdw9Ek
M2vgMLD2K7kMnOAhJCQGatejMFW5dMlMi6BJ5wvPoQypMDkICN2Q1JIMU28I0STa
HdQuEURaw+004d9DuXXUSB0YzRtECg4Ts50ihhvIgDChfHdDgmtIUCNsdab2Qw21
9wUEzQlxj8cmRwspzuUYGlosWTLDR+N8l42CG9ECgYEA8VBTrwhL0pMf1wH6476+
FzYVdF6ZPrHWtwbNEtEciKfVaPo+5FJi3hD7b9YtaoDIdY6qGpoqgaPUF0q8uBLk
vqBwGxGFNToGOWUyPFdWGTZVSh9/veqkn2rTWhAqW2ZsUe/xfIuMX+ULROKhHrQ0
2VI5DtN3gSSSDkSSfQfO0GsCgYEA1Sx/jzMie+J47Dv++DzmdsExExDlu4DaVXL/
TVo3PtZhnZYhxgj524G8mXxc3Pb49qLJRtMjjFvG6Eei6kO1Py37We5UVgh0k+o/
jHhIg2GDWI1l96lcSd/zPOAWJCnv/c+7wmB92iqMd0j9+cRxASRliu/grRR4NZDY
X8XuIskCgYEAhS2I0bupZPCvjNDZ7yEQ9exyUMP4nUI2ttI5EZ54ue6ud/5MAWR6
jgYfTiyM6g9jEoYG2SGmPd/1qFkl6Az9UztmQ3oa4zI/xyNTYzvsF4QF9B+IN38t
FZI2TKlJRyIyu9HJm6vEcBQPcRgGRdS8qgeX19fbR1mwhdFQa1KI0DsCgYACAptp
VEgc9vPA9ofe+2QI9qVp0pz3+a0VZTI3HoSq2Qaun73NykPg6AZJRDzz8HhEiyBu
xIrvReZIRnSo1N6eq+ZU4MR20zmWM31J69BzPLYqXZr6jORL5gq7JjnPOX4D3LOe
j55gMkqEzXFnq4yNQDSc7Monl6vShX0k2g720QKBgQDIEK93JUYhbWMGMfslsRi1
07i/1/lE87uWGtFsBhB+o5fgm+TEj9kYCL5AllDXolbIuIIkmSFTKb2S2NkEZhY5
aywrHwPRBhlcqQsJXBajIPRX9uwwtQ4+NZTRLvBIYkmgORMAJEPBEq0JXJUaXJoP
Iyt0mNuJcJSYN40hSw/q3g==
-----END PRIVATE KEY-----
";

const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];

/// An eBay verification key: what the test upstream checks signatures with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EbayPublicKey {
    /// Raw 32-byte Ed25519 public key.
    Ed25519([u8; 32]),
    /// PKCS#1 `RSAPublicKey` DER.
    RsaPkcs1Der(Vec<u8>),
}

impl EbayPublicKey {
    /// From an SPKI (`PUBLIC KEY`) PEM or bare base64 DER: Ed25519, rsaEncryption or RSASSA-PSS.
    pub fn from_spki_pem(text: &str) -> Result<EbayPublicKey, String> {
        Self::from_spki_der(&pem_decode(text)?)
    }

    /// From SPKI DER.
    pub fn from_spki_der(der: &[u8]) -> Result<EbayPublicKey, String> {
        let (tag, spki, _) = der_read(der)?;
        if tag != 0x30 {
            return Err("SPKI: not a SEQUENCE".into());
        }
        let (tag, alg, rest) = der_read(spki)?;
        if tag != 0x30 {
            return Err("SPKI: AlgorithmIdentifier is not a SEQUENCE".into());
        }
        let (tag, oid, _) = der_read(alg)?;
        if tag != 0x06 {
            return Err("SPKI: no algorithm OID".into());
        }
        let (tag, bits, _) = der_read(rest)?;
        if tag != 0x03 || bits.first() != Some(&0) {
            return Err("SPKI: bad BIT STRING".into());
        }
        let key = &bits[1..];
        if oid == OID_ED25519 {
            let raw: [u8; 32] = key
                .try_into()
                .map_err(|_| format!("Ed25519 key is {} bytes, not 32", key.len()))?;
            Ok(EbayPublicKey::Ed25519(raw))
        } else if oid == OID_RSA_ENCRYPTION || oid == OID_RSASSA_PSS {
            Ok(EbayPublicKey::RsaPkcs1Der(key.to_vec()))
        } else {
            Err(format!(
                "SPKI: unsupported algorithm OID {}",
                hex::encode(oid)
            ))
        }
    }
}

/// A private key for the proxy config plus the matching public key for the verifier.
#[derive(Clone, Debug)]
pub struct EbayTestKey {
    /// PKCS#8 DER (rsaEncryption OID for RSA).
    pub private_pkcs8_der: Vec<u8>,
    pub public: EbayPublicKey,
}

impl EbayTestKey {
    /// The RFC 9421 B.1.4 Ed25519 test key.
    pub fn rfc9421_ed25519() -> EbayTestKey {
        Self::from_pkcs8_der(pem_decode(RFC9421_ED25519_PRIVATE_PEM).unwrap()).unwrap()
    }

    /// A fresh random Ed25519 key (PKCS#8 v1, like the RFC test key).
    pub fn generate_ed25519() -> EbayTestKey {
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut seed).unwrap();
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        Self::from_pkcs8_der(der).unwrap()
    }

    /// The fixed 2048-bit RSA test key.
    pub fn rsa_2048() -> EbayTestKey {
        Self::from_pkcs8_der(pem_decode(TEST_RSA_2048_PRIVATE_PEM).unwrap()).unwrap()
    }

    /// From PKCS#8 DER (Ed25519 v1/v2, or RSA with the rsaEncryption OID).
    pub fn from_pkcs8_der(der: Vec<u8>) -> Result<EbayTestKey, String> {
        if let Ok(kp) = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            let raw: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
            return Ok(EbayTestKey {
                private_pkcs8_der: der,
                public: EbayPublicKey::Ed25519(raw),
            });
        }
        let kp = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| format!("neither an Ed25519 nor an RSA PKCS#8 key: {e}"))?;
        let public = EbayPublicKey::RsaPkcs1Der(kp.public_key().as_ref().to_vec());
        Ok(EbayTestKey {
            private_pkcs8_der: der,
            public,
        })
    }

    pub fn is_rsa(&self) -> bool {
        matches!(self.public, EbayPublicKey::RsaPkcs1Der(_))
    }

    /// `-----BEGIN PRIVATE KEY-----` PEM.
    pub fn private_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.private_pkcs8_der)
    }

    /// Bare base64 of the PKCS#8 DER on one line, as eBay's Key Management API returns it.
    pub fn private_base64(&self) -> String {
        B64.encode(&self.private_pkcs8_der)
    }

    /// RSA only: the same key as PKCS#8 PEM whose algorithm is id-RSASSA-PSS (no parameters),
    /// like the RFC 9421 B.1.2 test key.
    pub fn private_pem_rsa_pss_oid(&self) -> String {
        assert!(self.is_rsa(), "private_pem_rsa_pss_oid: not an RSA key");
        let (_, outer, _) = der_read(&self.private_pkcs8_der).unwrap();
        let (_, _, after_version) = der_read(outer).unwrap();
        let version_tlv = &outer[..outer.len() - after_version.len()];
        let (_, _, after_alg) = der_read(after_version).unwrap();
        let mut content = version_tlv.to_vec();
        content.extend(der_encode(0x30, &der_encode(0x06, OID_RSASSA_PSS)));
        content.extend_from_slice(after_alg);
        pem_encode("PRIVATE KEY", &der_encode(0x30, &content))
    }

    /// Signs `msg` the way eBay expects: Ed25519, or RSASSA-PKCS1-v1_5 with SHA-256.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self.public {
            EbayPublicKey::Ed25519(_) => {
                ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&self.private_pkcs8_der)
                    .unwrap()
                    .sign(msg)
                    .as_ref()
                    .to_vec()
            }
            EbayPublicKey::RsaPkcs1Der(_) => {
                let kp = ring::signature::RsaKeyPair::from_pkcs8(&self.private_pkcs8_der).unwrap();
                let mut sig = vec![0u8; kp.public().modulus_len()];
                kp.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    msg,
                    &mut sig,
                )
                .unwrap();
                sig
            }
        }
    }
}

/// Decodes PEM (any label; the first block) or bare base64 (line breaks allowed) into DER.
pub fn pem_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut b64 = String::new();
    let mut in_block = !text.contains("-----BEGIN");
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN") {
            in_block = true;
        } else if line.starts_with("-----END") {
            break;
        } else if in_block {
            b64.push_str(line);
        }
    }
    B64.decode(b64.as_bytes())
        .map_err(|e| format!("bad base64 in PEM: {e}"))
}

/// PEM with 64-column lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads one DER TLV: (tag, content, rest).
pub fn der_read(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let tag = *input.first().ok_or("DER: empty input")?;
    let first = *input.get(1).ok_or("DER: no length")?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || input.len() < 2 + n {
            return Err("DER: bad length".into());
        }
        let len = input[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, 2 + n)
    };
    if input.len() < header + len {
        return Err("DER: truncated".into());
    }
    Ok((tag, &input[header..header + len], &input[header + len..]))
}

/// Encodes one DER TLV.
pub fn der_encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}
