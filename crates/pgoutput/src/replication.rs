//! The CopyData payloads of the streaming replication protocol (after `START_REPLICATION`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::reader::Reader;
use crate::{DecodeError, Lsn};

/// Seconds from the Unix epoch to the Postgres epoch (2000-01-01 UTC).
const PG_EPOCH_OFFSET_SECS: u64 = 946_684_800;

/// Microseconds since 2000-01-01 UTC, the clock of the replication protocol.
pub fn pg_micros(t: SystemTime) -> i64 {
    let since_unix = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    since_unix.as_micros() as i64 - (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000
}

/// The wall-clock time of a protocol timestamp.
pub fn from_pg_micros(micros: i64) -> SystemTime {
    let unix = micros + (PG_EPOCH_OFFSET_SECS as i64) * 1_000_000;
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_micros(unix as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(unix.unsigned_abs())
    }
}

/// A message from the server inside CopyData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// WAL data: for logical replication, one output plugin message.
    XLogData {
        /// Start of the WAL data in this message.
        wal_start: Lsn,
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock at transmission (microseconds since 2000-01-01).
        server_time: i64,
        /// The plugin message.
        data: Bytes,
    },
    /// Primary keepalive.
    Keepalive {
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock at transmission.
        server_time: i64,
        /// The server asks for a status update now (or it may disconnect us).
        reply_requested: bool,
    },
}

/// Decodes one CopyData payload sent by the server.
pub fn parse_server_message(buf: &Bytes) -> Result<ServerMessage, DecodeError> {
    let mut r = Reader::new(buf);
    match r.u8("copy data tag")? {
        b'w' => {
            let wal_start = Lsn(r.u64("wal start")?);
            let wal_end = Lsn(r.u64("wal end")?);
            let server_time = r.i64("server time")?;
            Ok(ServerMessage::XLogData {
                wal_start,
                wal_end,
                server_time,
                data: r.rest(),
            })
        }
        b'k' => {
            let wal_end = Lsn(r.u64("wal end")?);
            let server_time = r.i64("server time")?;
            let reply_requested = r.u8("reply requested")? != 0;
            r.finish()?;
            Ok(ServerMessage::Keepalive {
                wal_end,
                server_time,
                reply_requested,
            })
        }
        tag => Err(DecodeError::UnknownTag {
            kind: "replication",
            tag,
        }),
    }
}

/// A standby status update (`'r'`): the positions the client has written, flushed and
/// applied. For logical replication the flushed position becomes the slot's
/// `confirmed_flush_lsn`: the server may recycle WAL before it.
pub fn standby_status_update(
    written: Lsn,
    flushed: Lsn,
    applied: Lsn,
    now: SystemTime,
    reply: bool,
) -> Bytes {
    let mut b = BytesMut::with_capacity(34);
    b.put_u8(b'r');
    b.put_u64(written.0);
    b.put_u64(flushed.0);
    b.put_u64(applied.0);
    b.put_i64(pg_micros(now));
    b.put_u8(u8::from(reply));
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_and_xlogdata() {
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0x1_0000_0010);
        k.put_i64(5);
        k.put_u8(1);
        assert_eq!(
            parse_server_message(&k.freeze()).unwrap(),
            ServerMessage::Keepalive {
                wal_end: Lsn(0x1_0000_0010),
                server_time: 5,
                reply_requested: true
            }
        );
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(1);
        w.put_u64(2);
        w.put_i64(3);
        w.put_slice(b"Bxyz");
        let ServerMessage::XLogData {
            data, wal_start, ..
        } = parse_server_message(&w.freeze()).unwrap()
        else {
            panic!("not xlogdata")
        };
        assert_eq!((wal_start, &data[..]), (Lsn(1), &b"Bxyz"[..]));
        assert!(parse_server_message(&Bytes::from_static(b"k\0\0")).is_err());
        assert!(parse_server_message(&Bytes::from_static(b"z")).is_err());
        assert!(parse_server_message(&Bytes::new()).is_err());
    }

    #[test]
    fn status_update_layout() {
        let t = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_OFFSET_SECS + 1);
        let b = standby_status_update(Lsn(1), Lsn(2), Lsn(3), t, false);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[9..17], &2u64.to_be_bytes());
        assert_eq!(&b[25..33], &1_000_000i64.to_be_bytes());
        assert_eq!(from_pg_micros(1_000_000), t);
    }
}
