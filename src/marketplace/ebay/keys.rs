//! Private signing keys for eBay: parsing PEM or bare base64 PKCS#8 (Ed25519, RSA under rsaEncryption or RSASSA-PSS OIDs) and signing with the algorithm the key implies.

use std::fmt;

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use ed25519_dalek::Signer as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{ObjectIdentifier, PrivateKeyInfo};
use rsa::traits::PublicKeyParts as _;
use rsa::Pkcs1v15Sign;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// id-Ed25519 (RFC 8410).
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// rsaEncryption (RFC 8017): what `openssl genpkey -algorithm RSA` and most tools write.
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-RSASSA-PSS (RFC 8017): the RFC 9421 RSA test key and `openssl genpkey -algorithm RSA-PSS`.
const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// Standard alphabet, but padding optional: pasted keys sometimes lose their trailing `=`.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A private key that can sign eBay requests. The algorithm follows from the key type: eBay has no
/// way to announce it, and RFC 9421's `alg` parameter breaks eBay's verifier.
///
/// Both variants are boxed so the enum stays pointer-sized whichever key it holds.
pub enum PrivateKey {
    Ed25519(Box<ed25519_dalek::SigningKey>),
    Rsa(Box<rsa::RsaPrivateKey>),
}

/// Why a private key could not be loaded or used. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the private key is empty: paste the privateKey value from eBay's Key Management API, \
         or point at a PEM file"
    )]
    Empty,
    #[error(
        "not PEM and not base64 PKCS#8 DER: paste the privateKey value from eBay's Key \
         Management API, or a PEM file"
    )]
    NotKey,
    #[error("malformed PEM: {0}")]
    Pem(String),
    #[error(
        "the PEM text holds only a public key or certificate ({label}): signing needs the \
         private key (privateKey from eBay's Key Management API)"
    )]
    PublicKeyOnly { label: String },
    #[error(
        "the private key is encrypted ({label}): store it unencrypted, e.g. \
         `openssl pkey -in encrypted.pem -out key.pem`, and protect the file instead"
    )]
    Encrypted { label: String },
    #[error(
        "PEM block \"{label}\" is not supported: eBay signing keys are Ed25519 or RSA, as \
         PKCS#8 (\"PRIVATE KEY\") or PKCS#1 (\"RSA PRIVATE KEY\"); convert with \
         `openssl pkcs8 -topk8 -nocrypt -in key.pem -out pkcs8.pem`"
    )]
    UnsupportedPem { label: String },
    #[error(
        "the key decodes from base64 but is not a PKCS#8 PrivateKeyInfo ({0}): paste the \
         privateKey value from eBay's Key Management API unchanged"
    )]
    NotPkcs8(String),
    #[error("unsupported key algorithm OID {oid}: eBay signing keys are Ed25519 or RSA")]
    UnsupportedAlgorithm { oid: String },
    #[error(
        "invalid Ed25519 private key ({0}): create a new signing key with eBay's Key Management \
         API"
    )]
    Ed25519(String),
    #[error(
        "invalid RSA private key ({0}): create a new signing key with eBay's Key Management API"
    )]
    Rsa(String),
    #[error("signing with the {algorithm} key failed: {reason}")]
    Sign {
        algorithm: &'static str,
        reason: String,
    },
}

impl PrivateKey {
    /// The RFC 9421 algorithm name this key signs with.
    pub fn algorithm(&self) -> &'static str {
        match self {
            PrivateKey::Ed25519(_) => "ed25519",
            PrivateKey::Rsa(_) => "rsa-v1_5-sha256",
        }
    }

    /// Signs `message`: pure Ed25519 (RFC 8032), or RSASSA-PKCS1-v1_5 over SHA-256. eBay rejects
    /// RSA-PSS signatures, so a key under the PSS OID still signs with v1.5.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            PrivateKey::Ed25519(key) => Ok(key.sign(message).to_bytes().to_vec()),
            PrivateKey::Rsa(key) => {
                let digest = Sha256::digest(message);
                // The RNG only blinds the private-key operation against timing attacks; v1.5
                // signatures stay deterministic.
                key.sign_with_rng(
                    &mut rsa::rand_core::OsRng,
                    Pkcs1v15Sign::new::<Sha256>(),
                    &digest,
                )
                .map_err(|e| KeyError::Sign {
                    algorithm: self.algorithm(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

/// Whether a signature over a message was made with this key, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// As eBay verifies: Ed25519, or RSASSA-PKCS1-v1_5 over SHA-256.
    Yes,
    /// With this RSA key but RSA-PSS, which eBay refuses.
    Pss,
    No,
}

impl PrivateKey {
    /// Checks `signature` over `message` against this key's public half (the doctor's question:
    /// did this key sign this base?).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Verified {
        match self {
            PrivateKey::Ed25519(key) => {
                let valid = ed25519_dalek::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verifying_key().verify_strict(message, &sig).is_ok());
                if valid {
                    Verified::Yes
                } else {
                    Verified::No
                }
            }
            PrivateKey::Rsa(key) => {
                let public = key.to_public_key();
                let digest = Sha256::digest(message);
                if public
                    .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, signature)
                    .is_ok()
                {
                    Verified::Yes
                } else if public
                    .verify(rsa::pss::Pss::new::<Sha256>(), &digest, signature)
                    .is_ok()
                {
                    Verified::Pss
                } else {
                    Verified::No
                }
            }
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivateKey::Ed25519(_) => f.write_str("PrivateKey(ed25519)"),
            PrivateKey::Rsa(key) => {
                write!(f, "PrivateKey(rsa-v1_5-sha256, {} bits)", key.n().bits())
            }
        }
    }
}

/// Loads a private key from PEM (`PRIVATE KEY` = PKCS#8, `RSA PRIVATE KEY` = PKCS#1) or from the
/// bare base64 PKCS#8 DER that eBay's Key Management API returns, line breaks allowed.
pub fn load_private_key(text: &str) -> Result<PrivateKey, KeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    if text.contains("-----BEGIN ") {
        return from_pem(text);
    }
    let compact: Zeroizing<String> =
        Zeroizing::new(text.chars().filter(|c| !c.is_ascii_whitespace()).collect());
    let der = Zeroizing::new(
        BASE64_LENIENT
            .decode(compact.as_bytes())
            .map_err(|_| KeyError::NotKey)?,
    );
    from_der(&der)
}

/// One `-----BEGIN label-----` … `-----END label-----` block.
struct PemBlock<'a> {
    label: &'a str,
    /// RFC 1421 `Proc-Type: 4,ENCRYPTED`, how OpenSSL marks an encrypted PKCS#1 key.
    encrypted: bool,
    base64: Zeroizing<String>,
}

impl PemBlock<'_> {
    fn der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        BASE64_LENIENT
            .decode(self.base64.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| {
                KeyError::Pem(format!(
                    "the body of the \"{}\" block is not valid base64",
                    shown_label(self.label)
                ))
            })
    }
}

/// Splits PEM text into blocks. Hand-rolled rather than strict RFC 7468 because keys arrive pasted
/// into TOML or environment variables: indented, with CRLF, with lines of any width, flattened
/// onto one line, or next to their public key.
fn pem_blocks(text: &str) -> Result<Vec<PemBlock<'_>>, KeyError> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    const DASHES: &str = "-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after_begin = &rest[start + BEGIN.len()..];
        let Some(label_len) = after_begin.find(DASHES) else {
            return Err(KeyError::Pem(
                "a \"-----BEGIN\" line does not end with \"-----\"".to_owned(),
            ));
        };
        let label = after_begin[..label_len].trim();
        let after_label = &after_begin[label_len + DASHES.len()..];
        let Some(body_len) = after_label.find(END) else {
            let label = shown_label(label);
            return Err(KeyError::Pem(format!(
                "\"BEGIN {label}\" has no matching \"END {label}\" line"
            )));
        };
        let body = &after_label[..body_len];
        let after_end = &after_label[body_len + END.len()..];
        let Some(end_label_len) = after_end.find(DASHES) else {
            return Err(KeyError::Pem(format!(
                "the \"END\" line of \"BEGIN {}\" does not end with \"-----\"",
                shown_label(label)
            )));
        };
        let end_label = after_end[..end_label_len].trim();
        if end_label != label {
            return Err(KeyError::Pem(format!(
                "\"BEGIN {}\" is closed by \"END {}\"",
                shown_label(label),
                shown_label(end_label)
            )));
        }
        rest = &after_end[end_label_len + DASHES.len()..];

        let mut encrypted = false;
        let mut base64 = Zeroizing::new(String::new());
        for line in body.lines() {
            // RFC 1421 headers such as `Proc-Type` and `DEK-Info`; `:` never occurs in base64.
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("Proc-Type") && value.contains("ENCRYPTED") {
                    encrypted = true;
                }
                continue;
            }
            base64.extend(line.chars().filter(|c| !c.is_ascii_whitespace()));
        }
        blocks.push(PemBlock {
            label,
            encrypted,
            base64,
        });
    }
    Ok(blocks)
}

/// A PEM label as messages may show it. Real labels are a few short upper-case words (`PRIVATE
/// KEY`, `X509 CRL`); a key pasted without its line breaks turns base64 key material into the
/// "label", which must not reach an error message (and from there logs).
fn shown_label(label: &str) -> &str {
    let plausible = label.len() <= 40
        && label.split(' ').all(|word| {
            word.len() <= 12
                && word
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        });
    if plausible {
        label
    } else {
        "<garbled label: were the PEM line breaks lost?>"
    }
}

fn from_pem(text: &str) -> Result<PrivateKey, KeyError> {
    // Environment variables and JSON often carry PEM with literal `\n`; base64 has no backslash.
    let text = Zeroizing::new(text.replace("\\n", "\n"));
    let blocks = pem_blocks(&text)?;
    // A pasted key often comes with its public half; the private block is the one that matters.
    let Some(block) = blocks.iter().find(|b| b.label.ends_with("PRIVATE KEY")) else {
        return Err(match blocks.first() {
            Some(b) if b.label.contains("PUBLIC KEY") || b.label.contains("CERTIFICATE") => {
                KeyError::PublicKeyOnly {
                    label: shown_label(b.label).to_owned(),
                }
            }
            Some(b) => KeyError::UnsupportedPem {
                label: shown_label(b.label).to_owned(),
            },
            None => KeyError::Pem("no complete \"-----BEGIN …-----\" line".to_owned()),
        });
    };
    if block.encrypted || block.label == "ENCRYPTED PRIVATE KEY" {
        return Err(KeyError::Encrypted {
            label: shown_label(block.label).to_owned(),
        });
    }
    match block.label {
        "PRIVATE KEY" => from_pkcs8(&block.der()?),
        "RSA PRIVATE KEY" => rsa_from_pkcs1(&block.der()?),
        other => Err(KeyError::UnsupportedPem {
            label: shown_label(other).to_owned(),
        }),
    }
}

/// Bare DER: PKCS#8 as eBay issues it, or PKCS#1 (`openssl rsa -outform DER`) as a courtesy.
fn from_der(der: &[u8]) -> Result<PrivateKey, KeyError> {
    match PrivateKeyInfo::try_from(der) {
        Ok(info) => from_private_key_info(info, der),
        Err(pkcs8_error) => {
            rsa_from_pkcs1(der).map_err(|_| KeyError::NotPkcs8(pkcs8_error.to_string()))
        }
    }
}

fn from_pkcs8(der: &[u8]) -> Result<PrivateKey, KeyError> {
    let info = PrivateKeyInfo::try_from(der).map_err(|e| KeyError::NotPkcs8(e.to_string()))?;
    from_private_key_info(info, der)
}

fn from_private_key_info(info: PrivateKeyInfo<'_>, der: &[u8]) -> Result<PrivateKey, KeyError> {
    let oid = info.algorithm.oid;
    if oid == OID_ED25519 {
        // ed25519-dalek also checks the embedded public key of a PKCS#8 v2 document.
        ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map(|key| PrivateKey::Ed25519(Box::new(key)))
            .map_err(|e| KeyError::Ed25519(e.to_string()))
    } else if oid == OID_RSA_ENCRYPTION || oid == OID_RSASSA_PSS {
        // rsa's from_pkcs8 refuses the PSS OID (and rsaEncryption without NULL parameters); the
        // inner RSAPrivateKey is the same PKCS#1 structure under either OID.
        rsa_from_pkcs1(info.private_key)
    } else {
        Err(KeyError::UnsupportedAlgorithm {
            oid: oid.to_string(),
        })
    }
}

fn rsa_from_pkcs1(der: &[u8]) -> Result<PrivateKey, KeyError> {
    rsa::RsaPrivateKey::from_pkcs1_der(der)
        .map(|key| PrivateKey::Rsa(Box::new(key)))
        .map_err(|e| KeyError::Rsa(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use ring::signature::{
        Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519, RSA_PKCS1_2048_8192_SHA256,
        RSA_PSS_2048_8192_SHA256,
    };

    /// RFC 9421 B.1.4 `test-key-ed25519`.
    const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----";
    const ED25519_BARE: &str = "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF";
    /// Its public key, SubjectPublicKeyInfo (RFC 9421 B.1.4).
    const ED25519_SPKI: &str = "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=";

    const RSA_PKCS8_PEM: &str = include_str!("../../../tests/fixtures/ebay/rsa2048-pkcs8.pem");
    const RSA_PKCS8_B64: &str = include_str!("../../../tests/fixtures/ebay/rsa2048-pkcs8.b64");
    const RSA_PKCS8_B64_WRAPPED: &str =
        include_str!("../../../tests/fixtures/ebay/rsa2048-pkcs8-wrapped.b64");
    const RSA_PKCS1_PEM: &str = include_str!("../../../tests/fixtures/ebay/rsa2048-pkcs1.pem");
    const RSA_PUB_PEM: &str = include_str!("../../../tests/fixtures/ebay/rsa2048-pub.pem");
    const RSA_PUB_PKCS1: &[u8] =
        include_bytes!("../../../tests/fixtures/ebay/rsa2048-pub-pkcs1.der");
    const RSA_MESSAGE: &[u8] = include_bytes!("../../../tests/fixtures/ebay/message.txt");
    /// `openssl dgst -sha256 -sign rsa2048-pkcs8.pem message.txt`.
    const RSA_OPENSSL_SIG: &[u8] =
        include_bytes!("../../../tests/fixtures/ebay/rsa2048-message.sig");
    const RSA_PSS_PEM: &str = include_str!("../../../tests/fixtures/ebay/rsa-pss-pkcs8.pem");
    const RSA_PSS_PUB_PKCS1: &[u8] =
        include_bytes!("../../../tests/fixtures/ebay/rsa-pss-pub-pkcs1.der");
    const RSA_PSS_PARAMS_PEM: &str =
        include_str!("../../../tests/fixtures/ebay/rsa-pss-sha256-pkcs8.pem");
    const RSA_PSS_PARAMS_PUB_PKCS1: &[u8] =
        include_bytes!("../../../tests/fixtures/ebay/rsa-pss-sha256-pub-pkcs1.der");
    const EC_P256_PEM: &str = include_str!("../../../tests/fixtures/ebay/ec-p256-pkcs8.pem");

    fn ed25519_public_key() -> Vec<u8> {
        let spki = STANDARD.decode(ED25519_SPKI).unwrap();
        // The raw key is the BIT STRING payload that ends the 44-byte SPKI.
        spki[spki.len() - 32..].to_vec()
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pem_body(pem: &str) -> String {
        pem.lines().filter(|l| !l.starts_with("-----")).collect()
    }

    /// Guards the fixtures themselves: a PKCS#1 file posing as PKCS#8 would pass via the fallback.
    fn assert_pkcs8_fixture(text: &str, oid: ObjectIdentifier) {
        let der = STANDARD.decode(pem_body(text).trim()).unwrap();
        let info = PrivateKeyInfo::try_from(der.as_slice()).expect("fixture is PKCS#8");
        assert_eq!(info.algorithm.oid, oid);
    }

    fn assert_rsa_pkcs1v15(key: &PrivateKey, public_pkcs1: &[u8]) {
        assert_eq!(key.algorithm(), "rsa-v1_5-sha256");
        let message = b"\"@method\": POST\n\"@signature-params\": (\"@method\");created=1";
        let signature = key.sign(message).unwrap();
        assert_eq!(signature.len(), 256);
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_pkcs1)
            .verify(message, &signature)
            .expect("ring accepts the RSASSA-PKCS1-v1_5 SHA-256 signature");
        assert!(
            UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, public_pkcs1)
                .verify(message, &signature)
                .is_err(),
            "the signature must not be RSA-PSS"
        );
        assert!(
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_pkcs1)
                .verify(b"another message", &signature)
                .is_err(),
            "the signature must cover the message"
        );
    }

    #[test]
    fn ed25519_rfc9421_pem_signs_verifiably() {
        let key = load_private_key(ED25519_PEM).unwrap();
        assert_eq!(key.algorithm(), "ed25519");
        assert!(matches!(key, PrivateKey::Ed25519(_)));
        let signature = key.sign(b"signproxy").unwrap();
        assert_eq!(signature.len(), 64);
        let public = ed25519_public_key();
        UnparsedPublicKey::new(&ED25519, &public)
            .verify(b"signproxy", &signature)
            .unwrap();
        assert!(UnparsedPublicKey::new(&ED25519, &public)
            .verify(b"signproxY", &signature)
            .is_err());
    }

    #[test]
    fn ed25519_bare_base64_is_the_same_key() {
        let pem = load_private_key(ED25519_PEM).unwrap();
        let bare = load_private_key(ED25519_BARE).unwrap();
        let split = load_private_key(&format!(
            "  {}\n{}\r\n",
            &ED25519_BARE[..20],
            &ED25519_BARE[20..]
        ))
        .unwrap();
        let expected = pem.sign(b"m").unwrap();
        assert_eq!(bare.sign(b"m").unwrap(), expected);
        assert_eq!(split.sign(b"m").unwrap(), expected);
    }

    #[test]
    fn ed25519_rfc8032_test_1() {
        let seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
        let mut der = hex("302e020100300506032b657004220420");
        der.extend(hex(seed));
        let key = load_private_key(&STANDARD.encode(&der)).unwrap();
        assert_eq!(
            key.sign(b"").unwrap(),
            hex(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac\
                 c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            )
        );
    }

    #[test]
    fn ed25519_pkcs8_v2_with_public_key_loads() {
        let rng = ring::rand::SystemRandom::new();
        let document = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ring_pair = Ed25519KeyPair::from_pkcs8(document.as_ref()).unwrap();
        let key = load_private_key(&STANDARD.encode(document.as_ref())).unwrap();
        let signature = key.sign(b"v2").unwrap();
        UnparsedPublicKey::new(&ED25519, ring_pair.public_key().as_ref())
            .verify(b"v2", &signature)
            .unwrap();
        assert_eq!(signature, ring_pair.sign(b"v2").as_ref());
    }

    #[test]
    fn ed25519_v2_with_a_foreign_public_key_is_refused() {
        let rng = ring::rand::SystemRandom::new();
        let mut document = Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let last = document.len() - 1;
        document[last] ^= 0x01;
        let err = load_private_key(&STANDARD.encode(&document)).unwrap_err();
        assert!(matches!(err, KeyError::Ed25519(_)), "{err:?}");
    }

    #[test]
    fn rsa_pkcs8_pem_signs_pkcs1v15_sha256() {
        assert_pkcs8_fixture(RSA_PKCS8_PEM, OID_RSA_ENCRYPTION);
        let key = load_private_key(RSA_PKCS8_PEM).unwrap();
        assert!(matches!(key, PrivateKey::Rsa(_)));
        assert_rsa_pkcs1v15(&key, RSA_PUB_PKCS1);
    }

    #[test]
    fn rsa_matches_openssl_byte_for_byte() {
        // PKCS#1 v1.5 is deterministic, so every encoding of the key must give openssl's bytes.
        for text in [
            RSA_PKCS8_PEM,
            RSA_PKCS8_B64,
            RSA_PKCS8_B64_WRAPPED,
            RSA_PKCS1_PEM,
        ] {
            let key = load_private_key(text).unwrap();
            assert_eq!(key.sign(RSA_MESSAGE).unwrap(), RSA_OPENSSL_SIG);
        }
    }

    #[test]
    fn rsa_bare_base64_single_line() {
        assert!(!RSA_PKCS8_B64.trim().contains('\n'));
        assert_pkcs8_fixture(RSA_PKCS8_B64, OID_RSA_ENCRYPTION);
        let key = load_private_key(RSA_PKCS8_B64).unwrap();
        assert_rsa_pkcs1v15(&key, RSA_PUB_PKCS1);
    }

    #[test]
    fn rsa_bare_base64_with_line_breaks() {
        assert!(RSA_PKCS8_B64_WRAPPED.trim().lines().count() > 10);
        assert_pkcs8_fixture(RSA_PKCS8_B64_WRAPPED, OID_RSA_ENCRYPTION);
        let key = load_private_key(RSA_PKCS8_B64_WRAPPED).unwrap();
        assert_rsa_pkcs1v15(&key, RSA_PUB_PKCS1);
    }

    #[test]
    fn rsa_pkcs1_pem() {
        assert!(RSA_PKCS1_PEM.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let key = load_private_key(RSA_PKCS1_PEM).unwrap();
        assert_rsa_pkcs1v15(&key, RSA_PUB_PKCS1);
    }

    #[test]
    fn rsa_pkcs1_bare_base64() {
        let key = load_private_key(&pem_body(RSA_PKCS1_PEM)).unwrap();
        assert_eq!(key.sign(RSA_MESSAGE).unwrap(), RSA_OPENSSL_SIG);
    }

    #[test]
    fn rsa_pss_oid_key_still_signs_pkcs1v15() {
        assert_pkcs8_fixture(RSA_PSS_PEM, OID_RSASSA_PSS);
        let key = load_private_key(RSA_PSS_PEM).unwrap();
        assert_rsa_pkcs1v15(&key, RSA_PSS_PUB_PKCS1);
        let bare = load_private_key(&pem_body(RSA_PSS_PEM)).unwrap();
        assert_rsa_pkcs1v15(&bare, RSA_PSS_PUB_PKCS1);
    }

    #[test]
    fn rsa_pss_oid_key_with_pss_parameters_still_signs_pkcs1v15() {
        assert_pkcs8_fixture(RSA_PSS_PARAMS_PEM, OID_RSASSA_PSS);
        let key = load_private_key(RSA_PSS_PARAMS_PEM).unwrap();
        assert_rsa_pkcs1v15(&key, RSA_PSS_PARAMS_PUB_PKCS1);
    }

    #[test]
    fn pem_pasted_loosely_still_loads() {
        let mut messy = String::from("key from the vault:\r\n");
        for line in RSA_PKCS8_PEM.lines() {
            messy.push_str("    ");
            messy.push_str(line);
            messy.push_str("\r\n");
        }
        messy.push_str(RSA_PUB_PEM);
        let key = load_private_key(&messy).unwrap();
        assert_eq!(key.sign(RSA_MESSAGE).unwrap(), RSA_OPENSSL_SIG);

        let flattened = RSA_PKCS8_PEM.replace('\n', " ");
        let key = load_private_key(&flattened).unwrap();
        assert_eq!(key.sign(RSA_MESSAGE).unwrap(), RSA_OPENSSL_SIG);

        let escaped = RSA_PKCS8_PEM.replace('\n', "\\n");
        assert!(!escaped.contains('\n'));
        let key = load_private_key(&escaped).unwrap();
        assert_eq!(key.sign(RSA_MESSAGE).unwrap(), RSA_OPENSSL_SIG);

        let public_first = format!("{RSA_PUB_PEM}\n{RSA_PKCS8_PEM}");
        let key = load_private_key(&public_first).unwrap();
        assert_eq!(key.sign(RSA_MESSAGE).unwrap(), RSA_OPENSSL_SIG);
    }

    #[test]
    fn empty_text_is_refused() {
        assert!(matches!(load_private_key(""), Err(KeyError::Empty)));
        assert!(matches!(load_private_key(" \n\t"), Err(KeyError::Empty)));
    }

    #[test]
    fn text_that_is_not_a_key_is_refused() {
        for text in [
            "hunter2 is not a key.",
            "{\"privateKey\": \"MC4C\"}",
            "not-base64!!",
        ] {
            let err = load_private_key(text).unwrap_err();
            assert!(matches!(err, KeyError::NotKey), "{text}: {err:?}");
            let message = err.to_string();
            assert!(message.contains("privateKey"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn base64_that_is_not_der_is_refused() {
        let err = load_private_key(&STANDARD.encode("hello world, no DER here")).unwrap_err();
        assert!(matches!(err, KeyError::NotPkcs8(_)), "{err:?}");
    }

    #[test]
    fn truncated_key_is_refused_without_echoing_it() {
        let truncated = &RSA_PKCS8_B64.trim()[..800];
        let err = load_private_key(truncated).unwrap_err();
        assert!(matches!(err, KeyError::NotPkcs8(_)), "{err:?}");
        let message = err.to_string();
        for chunk in truncated.as_bytes().chunks(12).skip(1) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            assert!(
                !message.contains(chunk),
                "{message} contains key text {chunk}"
            );
        }
    }

    #[test]
    fn unsupported_algorithm_names_the_oid() {
        let err = load_private_key(EC_P256_PEM).unwrap_err();
        assert!(
            matches!(err, KeyError::UnsupportedAlgorithm { .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("1.2.840.10045.2.1"), "{message}");
        assert!(message.contains("Ed25519 or RSA"), "{message}");
        let bare = load_private_key(&pem_body(EC_P256_PEM)).unwrap_err();
        assert!(bare.to_string().contains("1.2.840.10045.2.1"), "{bare}");
    }

    #[test]
    fn rsa_oid_with_a_broken_inner_key_is_refused() {
        let mut der = STANDARD.decode(RSA_PKCS8_B64.trim()).unwrap();
        // Inside the inner RSAPrivateKey: a modulus byte. The outer structure stays valid.
        der[60] ^= 0xff;
        let err = load_private_key(&STANDARD.encode(&der)).unwrap_err();
        assert!(matches!(err, KeyError::Rsa(_)), "{err:?}");
    }

    #[test]
    fn public_key_alone_is_refused() {
        let err = load_private_key(RSA_PUB_PEM).unwrap_err();
        assert!(matches!(err, KeyError::PublicKeyOnly { .. }), "{err:?}");
        assert!(err.to_string().contains("private key"), "{err}");
    }

    #[test]
    fn encrypted_keys_are_refused_with_a_fix() {
        let pkcs8 = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0w\n-----END ENCRYPTED PRIVATE KEY-----";
        let err = load_private_key(pkcs8).unwrap_err();
        assert!(matches!(err, KeyError::Encrypted { .. }), "{err:?}");
        assert!(err.to_string().contains("openssl pkey"), "{err}");

        let pkcs1 = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
        let err = load_private_key(pkcs1).unwrap_err();
        assert!(matches!(err, KeyError::Encrypted { .. }), "{err:?}");
    }

    #[test]
    fn flattened_pem_keeps_key_material_out_of_errors() {
        let body = ED25519_BARE;
        for text in [
            format!("-----BEGIN PRIVATE KEY {body}-----END PRIVATE KEY-----"),
            format!("-----BEGIN PRIVATE KEY-----{body}-----END {body}-----"),
            format!("-----BEGIN PRIVATE KEY\n{body}\n-----END PRIVATE KEY-----"),
            format!("-----BEGIN {body}-----\nAAAA\n-----END {body}-----"),
        ] {
            let err = load_private_key(&text).unwrap_err().to_string();
            assert!(!err.contains(&body[..16]), "{err}");
        }
    }

    #[test]
    fn other_pem_kinds_are_refused() {
        for label in ["EC PRIVATE KEY", "OPENSSH PRIVATE KEY", "DSA PRIVATE KEY"] {
            let text = format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
            let err = load_private_key(&text).unwrap_err();
            assert!(
                matches!(err, KeyError::UnsupportedPem { .. }),
                "{label}: {err:?}"
            );
            assert!(err.to_string().contains(label), "{err}");
        }
        let text = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----";
        assert!(matches!(
            load_private_key(text),
            Err(KeyError::UnsupportedPem { .. })
        ));
    }

    #[test]
    fn malformed_pem_is_refused() {
        let unterminated = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n";
        assert!(matches!(
            load_private_key(unterminated),
            Err(KeyError::Pem(_))
        ));

        let mismatched = ED25519_PEM.replace("END PRIVATE KEY", "END RSA PRIVATE KEY");
        assert!(matches!(
            load_private_key(&mismatched),
            Err(KeyError::Pem(_))
        ));

        let bad_base64 = ED25519_PEM.replace("MC4C", "MC*C");
        let err = load_private_key(&bad_base64).unwrap_err();
        assert!(matches!(err, KeyError::Pem(_)), "{err:?}");
        assert!(!err.to_string().contains("MC*C"), "{err}");
    }

    #[test]
    fn debug_never_shows_key_material() {
        let ed = load_private_key(ED25519_PEM).unwrap();
        assert_eq!(format!("{ed:?}"), "PrivateKey(ed25519)");
        let rsa = load_private_key(RSA_PKCS8_PEM).unwrap();
        assert_eq!(format!("{rsa:?}"), "PrivateKey(rsa-v1_5-sha256, 2048 bits)");
        assert_eq!(
            format!("{rsa:#?}"),
            "PrivateKey(rsa-v1_5-sha256, 2048 bits)"
        );
    }
}
