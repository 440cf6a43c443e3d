//! PEM files checked before they are handed to TLS. A certificate file
//! that holds no certificate is read as an empty chain and accepted, and the
//! mistake surfaces far from its cause: a host answered every handshake
//! "peer sent no certificates", and a client with such a CA file retried
//! until its timeout and then reported the host's certificate untrusted.

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::GrpcError;

/// Checks that `pem_text` holds one or more certificates and nothing
/// malformed among them; `what` names the file in the error.
pub(super) fn certificates(pem_text: &[u8], what: &str) -> Result<(), GrpcError> {
    let mut found = false;
    for certificate in CertificateDer::pem_slice_iter(pem_text) {
        certificate.map_err(|e| refused(what, "certificate", &e))?;
        found = true;
    }
    if found {
        Ok(())
    } else {
        Err(refused(what, "certificate", &pem::Error::NoItemsFound))
    }
}

/// Checks that `pem_text` holds a private key; `what` names the file.
pub(super) fn private_key(pem_text: &[u8], what: &str) -> Result<(), GrpcError> {
    PrivateKeyDer::from_pem_slice(pem_text)
        .map(drop)
        .map_err(|e| refused(what, "private key", &e))
}

fn refused(what: &str, item: &str, error: &pem::Error) -> GrpcError {
    GrpcError::Tls(match error {
        pem::Error::NoItemsFound => format!("{what} holds no PEM {item}"),
        other => format!("{what} is not a PEM {item}: {other}"),
    })
}

#[cfg(test)]
mod tests {
    use super::{certificates, private_key};

    #[test]
    fn text_with_no_pem_block_is_refused_naming_the_file() {
        let error = certificates(b"not a certificate\n", "the CA file").unwrap_err();
        assert_eq!(
            error.to_string(),
            "TLS configuration: the CA file holds no PEM certificate"
        );
        let error = private_key(b"", "the key file").unwrap_err();
        assert_eq!(
            error.to_string(),
            "TLS configuration: the key file holds no PEM private key"
        );
    }

    #[test]
    fn a_private_key_is_not_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(private_key(key.as_bytes(), "k").is_ok());
        assert!(certificates(key.as_bytes(), "c").is_err());
    }

    #[test]
    fn a_truncated_certificate_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        assert!(certificates(cert.as_bytes(), "c").is_ok());
        let cut = &cert.as_bytes()[..cert.len() - 30];
        assert!(certificates(cut, "c").is_err());
    }
}
