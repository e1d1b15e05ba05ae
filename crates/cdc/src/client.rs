//! A Postgres replication connection (`replication=database`) on the postgres-protocol codecs:
//! TLS as the URL's `sslmode` says (SSLRequest, then rustls: the same modes as every other
//! connection, see `collect_store::pg`), startup and authentication (trust, cleartext, MD5,
//! SCRAM-SHA-256), the simple query protocol for replication commands, and the CopyBoth
//! stream of `START_REPLICATION`.
//!
//! tokio-postgres cannot do this: it rejects `replication=database` and has no CopyBoth.

use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use collect_pgoutput::Lsn;
use collect_pgoutput::replication::{ServerMessage, parse_server_message, standby_status_update};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Errors of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    /// The socket failed.
    #[error("replication connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent something this client does not expect.
    #[error("replication protocol: {0}")]
    Protocol(String),
    /// The server answered with an error.
    #[error("postgres error {code}: {message}")]
    Server {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
    },
    /// Authentication failed or is not supported.
    #[error("authentication: {0}")]
    Auth(String),
    /// A replication message did not decode.
    #[error("decoding a replication message: {0}")]
    Decode(#[from] collect_pgoutput::DecodeError),
    /// Connecting took too long.
    #[error("connecting timed out after {0:?}")]
    Timeout(Duration),
}

impl ReplError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

type Result<T, E = ReplError> = std::result::Result<T, E>;

/// What the connection reads and writes: a TCP stream, or TLS over one.
trait Wire: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Wire for T {}

/// Where and as whom to connect, from a libpq-style URL (tokio-postgres parses it).
#[derive(Clone)]
pub struct ConnectParams {
    ssl_mode: collect_store::pg::SslMode,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    host: String,
    port: u16,
    user: String,
    password: Option<Vec<u8>>,
    dbname: String,
    application_name: String,
    connect_timeout: Duration,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is never printed.
        f.debug_struct("ConnectParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .finish_non_exhaustive()
    }
}

impl ConnectParams {
    /// Reads host, port, user, password and database from a Postgres URL.
    pub fn from_url(url: &str, application_name: &str) -> Result<Self, String> {
        let target = collect_store::pg::target(url)?;
        let tls = target.rustls()?;
        let cfg = target.config;
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(_) => {
                return Err(
                    "unix socket hosts are not supported for replication; use a TCP host".into(),
                );
            }
            None => "localhost".into(),
        };
        let user = cfg
            .get_user()
            .map(str::to_string)
            .ok_or("the database URL names no user")?;
        Ok(Self {
            ssl_mode: target.ssl_mode,
            tls,
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            dbname: cfg
                .get_dbname()
                .map(str::to_string)
                .unwrap_or_else(|| user.clone()),
            user,
            password: cfg.get_password().map(<[u8]>::to_vec),
            application_name: application_name.to_string(),
            connect_timeout: cfg
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(10)),
        })
    }
}

/// What `IDENTIFY_SYSTEM` returns.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    /// Cluster system identifier.
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// Database of this connection.
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT` returns.
#[derive(Debug, Clone)]
pub struct SlotCreated {
    /// The slot's name.
    pub slot_name: String,
    /// The first LSN the slot will stream from.
    pub consistent_point: Lsn,
    /// The exported snapshot (valid until this connection runs another command).
    pub snapshot_name: Option<String>,
}

/// A text result row of the simple query protocol.
pub type Row = Vec<Option<String>>;

/// A backend message, or the CopyBothResponse that starts a replication stream.
enum Incoming {
    Message(Message),
    CopyBoth,
}

/// A connection in replication mode, before `START_REPLICATION`.
pub struct ReplicationClient {
    stream: Box<dyn Wire>,
    buf: BytesMut,
    out: BytesMut,
}

/// TLS as `sslmode` says, negotiated the way libpq does (protocol "SSL Session
/// Encryption"): an SSLRequest, one byte of answer (`S`: go ahead; `N`: no TLS), then the
/// handshake on the same socket.
async fn secure(mut tcp: TcpStream, p: &ConnectParams) -> Result<Box<dyn Wire>> {
    use collect_store::pg::SslMode;
    let Some(config) = p.tls.clone().filter(|_| p.ssl_mode != SslMode::Disable) else {
        return Ok(Box::new(tcp));
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {
            let name = rustls::pki_types::ServerName::try_from(p.host.clone())
                .map_err(|e| ReplError::Protocol(format!("host name {}: {e}", p.host)))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| ReplError::Auth(format!("TLS with {}: {e}", p.host)))?;
            Ok(Box::new(tls))
        }
        b'N' if p.ssl_mode == SslMode::Prefer => Ok(Box::new(tcp)),
        b'N' => Err(ReplError::Auth(format!(
            "the server at {} does not offer TLS, and sslmode asks for it",
            p.host
        ))),
        other => Err(ReplError::Protocol(format!(
            "unexpected answer {other:#x} to the SSL request"
        ))),
    }
}

fn server_error(body: &ErrorResponseBody) -> ReplError {
    let mut code = String::new();
    let mut message = String::new();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let value = String::from_utf8_lossy(f.value_bytes()).to_string();
        match f.type_() {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    ReplError::Server { code, message }
}

impl ReplicationClient {
    /// Connects, authenticates and waits until the server is ready for commands.
    pub async fn connect(params: &ConnectParams) -> Result<Self> {
        let addr = format!("{}:{}", params.host, params.port);
        let stream = tokio::time::timeout(params.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| ReplError::Timeout(params.connect_timeout))??;
        stream.set_nodelay(true)?;
        let stream = tokio::time::timeout(params.connect_timeout, secure(stream, params))
            .await
            .map_err(|_| ReplError::Timeout(params.connect_timeout))??;
        let mut client = Self {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::with_capacity(1024),
        };
        tokio::time::timeout(params.connect_timeout, client.startup(params))
            .await
            .map_err(|_| ReplError::Timeout(params.connect_timeout))??;
        Ok(client)
    }

    async fn flush(&mut self) -> Result<()> {
        let out = self.out.split();
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next backend message. Cancel-safe: a partial message stays in the buffer.
    async fn recv(&mut self) -> Result<Message> {
        match self.recv_any().await? {
            Incoming::Message(m) => Ok(m),
            Incoming::CopyBoth => Err(ReplError::Protocol("unexpected CopyBothResponse".into())),
        }
    }

    async fn recv_any(&mut self) -> Result<Incoming> {
        loop {
            // CopyBothResponse ('W') is not known to postgres-protocol's parser: take it here.
            if self.buf.len() >= 5 && self.buf[0] == b'W' {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    self.buf.advance(len + 1);
                    return Ok(Incoming::CopyBoth);
                }
            } else if let Some(msg) = Message::parse(&mut self.buf)? {
                return Ok(Incoming::Message(msg));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ReplError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    async fn startup(&mut self, p: &ConnectParams) -> Result<()> {
        // The settings whose text output the reader parses are pinned in the startup packet,
        // as Postgres's own logical replication worker pins them (see collect_store::pg):
        // a database or role with another DateStyle changes nothing downstream.
        let mut params = vec![
            ("user", p.user.as_str()),
            ("database", p.dbname.as_str()),
            ("replication", "database"),
            ("application_name", p.application_name.as_str()),
        ];
        params.extend(collect_store::pg::PINNED_SETTINGS);
        frontend::startup_message(params, &mut self.out)?;
        self.flush().await?;
        let password = || {
            p.password.clone().ok_or_else(|| {
                ReplError::Auth("the server asks for a password and the URL has none".into())
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.recv().await? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(&password()?, &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(p.user.as_bytes(), &password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut found = false;
                    while let Some(m) = mechanisms.next()? {
                        found |= m == SCRAM_SHA_256;
                    }
                    if !found {
                        return Err(ReplError::Auth("the server offers no SCRAM-SHA-256".into()));
                    }
                    let s = ScramSha256::new(&password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.out)?;
                    self.flush().await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ReplError::Auth("SASL continue without a start".into()))?;
                    s.update(body.data())
                        .map_err(|e| ReplError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut self.out)?;
                    self.flush().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ReplError::Auth("SASL final without a start".into()))?;
                    s.finish(body.data())
                        .map_err(|e| ReplError::Auth(format!("server signature: {e}")))?;
                }
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ParameterStatus(_)
                | Message::BackendKeyData(_)
                | Message::NoticeResponse(_) => {}
                _ => return Err(ReplError::Auth(
                    "unsupported authentication method (use trust, password, md5 or scram-sha-256)"
                        .into(),
                )),
            }
        }
    }

    /// Runs one command with the simple query protocol; returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>> {
        frontend::query(sql, &mut self.out)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.recv().await? {
                Message::DataRow(body) => {
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(range) = ranges.next()? {
                        row.push(
                            range.map(|r| String::from_utf8_lossy(&body.buffer()[r]).to_string()),
                        );
                    }
                    rows.push(row);
                }
                Message::ErrorResponse(body) => error = Some(server_error(&body)),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| ReplError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let field = |i: usize| row.get(i).cloned().flatten();
        Ok(SystemInfo {
            system_id: field(0).unwrap_or_default(),
            timeline: field(1).and_then(|t| t.parse().ok()).unwrap_or_default(),
            xlogpos: field(2)
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| ReplError::Protocol("IDENTIFY_SYSTEM returned no xlogpos".into()))?,
            dbname: field(3),
        })
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL pgoutput`, exporting a snapshot if asked.
    pub async fn create_slot(&mut self, name: &str, export_snapshot: bool) -> Result<SlotCreated> {
        let snapshot = if export_snapshot { "export" } else { "nothing" };
        let rows = self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT '{snapshot}')",
                quote_ident(name)
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| ReplError::Protocol("CREATE_REPLICATION_SLOT returned no row".into()))?;
        Ok(SlotCreated {
            slot_name: row.first().cloned().flatten().unwrap_or_default(),
            consistent_point: row
                .get(1)
                .cloned()
                .flatten()
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| {
                    ReplError::Protocol(
                        "CREATE_REPLICATION_SLOT returned no consistent point".into(),
                    )
                })?,
            snapshot_name: row.get(2).cloned().flatten(),
        })
    }

    /// `START_REPLICATION SLOT ... LOGICAL start (options)`; the connection becomes a stream.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<ReplicationStream> {
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("{} '{}'", quote_ident(k), v.replace('\'', "''")))
            .collect();
        frontend::query(
            &format!(
                "START_REPLICATION SLOT {} LOGICAL {start} ({})",
                quote_ident(slot),
                opts.join(", ")
            ),
            &mut self.out,
        )?;
        self.flush().await?;
        loop {
            match self.recv_any().await? {
                Incoming::CopyBoth => return Ok(ReplicationStream { client: self }),
                Incoming::Message(Message::ErrorResponse(body)) => return Err(server_error(&body)),
                Incoming::Message(Message::NoticeResponse(_)) => {}
                Incoming::Message(_) => {
                    return Err(ReplError::Protocol(
                        "unexpected answer to START_REPLICATION".into(),
                    ));
                }
            }
        }
    }
}

/// Quotes an identifier for a replication command.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A logical replication stream (after `START_REPLICATION`).
pub struct ReplicationStream {
    client: ReplicationClient,
}

impl ReplicationStream {
    /// The next message from the server; `None` when the server ended the stream.
    /// Cancel-safe: it can race with timers in `select!` without losing data.
    pub async fn next(&mut self) -> Result<Option<ServerMessage>> {
        loop {
            match self.client.recv().await? {
                Message::CopyData(body) => {
                    let data: Bytes = body.into_bytes();
                    return Ok(Some(parse_server_message(&data)?));
                }
                Message::CopyDone => return Ok(None),
                Message::ErrorResponse(body) => return Err(server_error(&body)),
                Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                _ => {
                    return Err(ReplError::Protocol(
                        "unexpected message in the replication stream".into(),
                    ));
                }
            }
        }
    }

    /// Sends a standby status update: everything before `flushed` is durable downstream.
    pub async fn send_status(&mut self, flushed: Lsn, reply: bool) -> Result<()> {
        let payload = standby_status_update(flushed, flushed, flushed, SystemTime::now(), reply);
        frontend::CopyData::new(&payload[..])?.write(&mut self.client.out);
        self.client.flush().await
    }

    /// Ends the stream cleanly: a last status update, then CopyDone, then waits (bounded) for
    /// the server to finish.
    pub async fn finish(mut self, flushed: Lsn) -> Result<()> {
        self.send_status(flushed, false).await?;
        frontend::copy_done(&mut self.client.out);
        self.client.flush().await?;
        let drain = async {
            loop {
                match self.client.recv().await? {
                    Message::ReadyForQuery(_) => return Ok::<(), ReplError>(()),
                    Message::ErrorResponse(body) => return Err(server_error(&body)),
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), drain).await {
            Ok(r) => r?,
            Err(_) => tracing::warn!("the server did not end the replication stream within 5 s"),
        }
        frontend::terminate(&mut self.client.out);
        let _ = self.client.flush().await;
        Ok(())
    }
}
