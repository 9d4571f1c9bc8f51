//! Reads a connection's TLS ClientHello far enough to learn its SNI, keeping every byte
//! read so the whole handshake can be passed on untouched. Parsing is rustls's
//! (`Acceptor`); nothing is decrypted, no key is involved.

use rustls::server::Acceptor;
use tokio::io::AsyncReadExt as _;

/// A ClientHello larger than this is refused (rustls's own hellos are about 1.5 KiB).
const MAX_HELLO: usize = 64 * 1024;

/// Why a connection carries no usable SNI.
#[derive(Debug)]
pub(crate) enum NoSni {
    /// The peer closed or failed before a full ClientHello.
    Closed,
    /// Not TLS, or a ClientHello too large or malformed.
    NotTls(String),
    /// TLS without a server name.
    Missing,
}

/// The SNI of the ClientHello on `sock`, and the bytes read to get it.
pub(crate) async fn read_client_hello<R>(sock: &mut R) -> Result<(String, Vec<u8>), NoSni>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut acceptor = Acceptor::default();
    let mut seen = Vec::with_capacity(2048);
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.map_err(|_| NoSni::Closed)?;
        if n == 0 {
            return Err(NoSni::Closed);
        }
        seen.extend_from_slice(&chunk[..n]);
        if seen.len() > MAX_HELLO {
            return Err(NoSni::NotTls("ClientHello larger than 64 KiB".into()));
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            acceptor
                .read_tls(&mut fresh)
                .map_err(|e| NoSni::NotTls(e.to_string()))?;
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                return match accepted.client_hello().server_name() {
                    Some(name) => Ok((name.to_string(), seen)),
                    None => Err(NoSni::Missing),
                };
            }
            Err((e, _alert)) => return Err(NoSni::NotTls(e.to_string())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;

    use super::*;

    /// The bytes a real rustls client sends first, for `sni`.
    pub(crate) fn client_hello(sni: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            ServerName::try_from(sni.to_string()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[tokio::test]
    async fn reads_the_sni_and_keeps_every_byte_even_one_at_a_time() {
        let hello = client_hello("e1a2.backend.default.causeway");
        // Whole, plus trailing bytes that must be kept too.
        let mut with_more = hello.clone();
        with_more.extend_from_slice(b"more");
        let (sni, seen) = read_client_hello(&mut with_more.as_slice()).await.unwrap();
        assert_eq!(sni, "e1a2.backend.default.causeway");
        assert_eq!(seen, with_more);
        // Dribbled a byte per read.
        let (mut client, mut server) = tokio::io::duplex(1);
        let h = hello.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            for b in h {
                client.write_all(&[b]).await.unwrap();
            }
            client
        });
        let (sni, seen) = read_client_hello(&mut server).await.unwrap();
        assert_eq!(sni, "e1a2.backend.default.causeway");
        assert_eq!(seen, hello);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_tls_hello_with_a_name() {
        assert!(matches!(
            read_client_hello(&mut &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]).await,
            Err(NoSni::NotTls(_))
        ));
        let hello = client_hello("backend.default.causeway");
        assert!(matches!(
            read_client_hello(&mut &hello[..10]).await,
            Err(NoSni::Closed)
        ));
        assert!(matches!(
            read_client_hello(&mut &b""[..]).await,
            Err(NoSni::Closed)
        ));
    }
}
