//! A minimal raw protocol client, for tests that must send exactly the bytes they choose (pipelines,
//! malformed frames) and see exactly the messages that come back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

pub struct RawClient {
    pub stream: TcpStream,
}

/// One backend message: its type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// A field of an ErrorResponse or NoticeResponse.
    pub fn field(&self, kind: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&k, tail)) = rest.split_first() {
            if k == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if k == kind {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    pub fn code(&self) -> Option<String> {
        self.field(b'C')
    }
}

impl RawClient {
    /// Connects and logs in as `postgres` with SCRAM (or trust), leaving the connection ready for queries.
    pub fn connect(port: u16, db: &str, password: &str) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut c = RawClient { stream };
        let mut buf = BytesMut::new();
        frontend::startup_message([("user", "postgres"), ("database", db)], &mut buf).unwrap();
        c.send(&buf);
        let mut scram = None;
        loop {
            let m = c.recv().expect("login message");
            match m.tag {
                b'R' => {
                    let code = i32::from_be_bytes(m.body[..4].try_into().unwrap());
                    let data = &m.body[4..];
                    let mut out = BytesMut::new();
                    match code {
                        0 => continue,
                        10 => {
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)
                                .unwrap();
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().unwrap();
                            s.update(data).unwrap();
                            frontend::sasl_response(s.message(), &mut out).unwrap();
                        }
                        12 => {
                            scram.as_mut().unwrap().finish(data).unwrap();
                            continue;
                        }
                        other => panic!("unexpected auth request {other}"),
                    }
                    c.send(&out);
                }
                b'E' => panic!("login refused: {:?}", m.field(b'M')),
                b'Z' => return c,
                _ => {}
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next message, or `None` at end of stream.
    pub fn recv(&mut self) -> Option<Msg> {
        let mut header = [0u8; 5];
        if self.stream.read_exact(&mut header).is_err() {
            return None;
        }
        let len = i32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        self.stream.read_exact(&mut body).ok()?;
        Some(Msg {
            tag: header[0],
            body,
        })
    }

    /// Messages up to and including the `n`th ReadyForQuery (or the end of the stream).
    pub fn recv_until_ready(&mut self, n: usize) -> Vec<Msg> {
        let mut seen = 0;
        let mut out = Vec::new();
        while seen < n {
            match self.recv() {
                Some(m) => {
                    if m.tag == b'Z' {
                        seen += 1;
                    }
                    out.push(m);
                }
                None => break,
            }
        }
        out
    }

    /// True when the server closed the connection (reads end without data).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::query(sql, &mut b).unwrap();
    b.to_vec()
}

/// Parse, Bind and Execute of `sql` with the unnamed statement and portal.
pub fn extended(sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::parse("", sql, std::iter::empty(), &mut b).unwrap();
    frontend::bind(
        "",
        "",
        std::iter::empty(),
        std::iter::empty::<()>(),
        |_, _| Ok(postgres_protocol::IsNull::No),
        Some(0),
        &mut b,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::describe(b'P', "", &mut b).unwrap();
    frontend::execute("", 0, &mut b).unwrap();
    b.to_vec()
}

pub fn sync() -> Vec<u8> {
    let mut b = BytesMut::new();
    frontend::sync(&mut b);
    b.to_vec()
}

/// Message types, with the SQLSTATE for errors: a compact picture of a conversation to compare.
pub fn shape(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| match m.tag {
            b'E' => format!(
                "E:{}:{}",
                m.field(b'V').unwrap_or_default(),
                m.code().unwrap_or_default()
            ),
            b'Z' => format!("Z:{}", m.body[0] as char),
            t => (t as char).to_string(),
        })
        .collect()
}
