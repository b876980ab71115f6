//! The unframed packets a connection opens with: SSLRequest, GSSENCRequest, CancelRequest and the
//! StartupMessage.
//!
//! Owns their decoding and the length rules Postgres applies to them. It must never answer them: the
//! session decides what each one gets.

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Postgres' `MAX_STARTUP_PACKET_LENGTH`.
const MAX_STARTUP_PACKET_LEN: usize = 10_000;
const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: Vec<u8>,
    },
    Startup {
        major: u16,
        minor: u16,
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Error)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    InvalidLength,
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Layout,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("connection closed before the startup packet was complete")]
    Eof,
    #[error(transparent)]
    Io(std::io::Error),
}

impl From<std::io::Error> for StartupError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StartupError::Eof
        } else {
            StartupError::Io(e)
        }
    }
}

/// Reads one startup-phase packet.
pub async fn read_startup_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<StartupPacket, StartupError> {
    let len = stream.read_u32().await? as usize;
    if !(8..=MAX_STARTUP_PACKET_LEN).contains(&len) {
        return Err(StartupError::InvalidLength);
    }
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).await?;
    decode(&body)
}

/// Decodes a startup packet body (everything after the length word).
pub fn decode(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let Some((code, rest)) = body.split_first_chunk::<4>() else {
        return Err(StartupError::InvalidLength);
    };
    let code = u32::from_be_bytes(*code);
    match code {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            if rest.len() < 8 {
                return Err(StartupError::InvalidLength);
            }
            let pid = i32::from_be_bytes(rest[..4].try_into().expect("length checked"));
            Ok(StartupPacket::Cancel {
                pid,
                secret: rest[4..].to_vec(),
            })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupPacket::Startup {
                major,
                minor,
                params: decode_params(rest)?,
            })
        }
    }
}

fn decode_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let key = take_cstr(&mut rest)?;
        if key.is_empty() {
            return if rest.is_empty() {
                Ok(params)
            } else {
                Err(StartupError::Layout)
            };
        }
        let value = take_cstr(&mut rest)?;
        params.push((key, value));
    }
}

fn take_cstr(rest: &mut &[u8]) -> Result<String, StartupError> {
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Layout)?;
    let s = String::from_utf8_lossy(&rest[..end]).into_owned();
    *rest = &rest[end + 1..];
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_startup_and_special_packets() {
        let mut b = 196608u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0alice\0database\0app\0\0");
        let StartupPacket::Startup { params, .. } = decode(&b).unwrap() else {
            panic!()
        };
        assert_eq!(StartupPacket::param(&params, "user"), Some("alice"));
        assert_eq!(
            decode(&80877103u32.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        let mut c = 80877102u32.to_be_bytes().to_vec();
        c.extend_from_slice(&[0, 0, 0, 9, 1, 2, 3, 4]);
        assert_eq!(
            decode(&c).unwrap(),
            StartupPacket::Cancel {
                pid: 9,
                secret: vec![1, 2, 3, 4]
            }
        );
    }

    #[test]
    fn refuses_bad_layouts() {
        assert!(matches!(decode(&[]), Err(StartupError::InvalidLength)));
        assert!(matches!(
            decode(&[0, 3, 0]),
            Err(StartupError::InvalidLength)
        ));
        let mut b = 196608u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0alice");
        assert!(matches!(decode(&b), Err(StartupError::Layout)));
        assert!(matches!(
            decode(&0x0002_0000u32.to_be_bytes()),
            Err(StartupError::UnsupportedProtocol { .. })
        ));
    }
}
