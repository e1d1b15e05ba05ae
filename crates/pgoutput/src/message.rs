//! The messages of the `pgoutput` plugin (Postgres "Logical Replication Message Formats"),
//! protocol versions 1 and 2.
//!
//! In protocol 2 a large in-progress transaction may be streamed in segments between
//! Stream Start and Stream Stop; inside a segment most messages carry the transaction id as
//! an extra field. [`StreamState`] keeps track of that so each message decodes right.

use bytes::Bytes;

use crate::reader::{Reader, length};
use crate::{DecodeError, Lsn};

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change; its data is not in the message. It must never
    /// be taken for a value: take it from the old tuple or treat the column as unknown.
    UnchangedToast,
    /// The value in the type's text format.
    Text(Bytes),
    /// The value in the type's binary format (only with the `binary` option).
    Binary(Bytes),
}

/// The column values of one row, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData(pub Vec<TupleValue>);

/// A relation's replica identity, as sent in Relation messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: the whole row.
    Full,
    /// `i`: a chosen unique index.
    Index,
}

/// One column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key.
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
}

/// The body of a Relation message: what the following row messages' tuples mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationBody {
    /// Transaction id, inside a streamed segment.
    pub xid: Option<u32>,
    /// Relation OID.
    pub oid: u32,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    /// Relation name.
    pub name: String,
    /// Replica identity.
    pub replica_identity: ReplicaIdentity,
    /// Columns in tuple order.
    pub columns: Vec<Column>,
}

/// The old row sent with an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity key columns are set; the others are NULL.
    Key(TupleData),
    /// `O`: the whole old row (replica identity FULL).
    Full(TupleData),
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// Start of a (non-streamed) transaction.
    Begin {
        /// LSN of the commit record.
        final_lsn: Lsn,
        /// Commit time (microseconds since 2000-01-01).
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// End of a (non-streamed) transaction.
    Commit {
        /// Unused flags.
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End of the commit record: the position to confirm once the transaction is done.
        end_lsn: Lsn,
        /// Commit time.
        commit_time: i64,
    },
    /// The transaction came from another node.
    Origin {
        /// Commit LSN on the origin.
        commit_lsn: Lsn,
        /// Origin name.
        name: String,
    },
    /// A relation's description, sent before its first row message and after any change.
    Relation(RelationBody),
    /// A non-built-in type's name.
    Type {
        /// Transaction id, inside a streamed segment.
        xid: Option<u32>,
        /// Type OID.
        oid: u32,
        /// Schema name.
        namespace: String,
        /// Type name.
        name: String,
    },
    /// A new row.
    Insert {
        /// Transaction id, inside a streamed segment.
        xid: Option<u32>,
        /// Relation OID.
        relation: u32,
        /// The row.
        new: TupleData,
    },
    /// A changed row.
    Update {
        /// Transaction id, inside a streamed segment.
        xid: Option<u32>,
        /// Relation OID.
        relation: u32,
        /// The old row or its key, when the replica identity makes Postgres send it.
        old: Option<OldTuple>,
        /// The new row; unchanged TOASTed columns are [`TupleValue::UnchangedToast`].
        new: TupleData,
    },
    /// A removed row.
    Delete {
        /// Transaction id, inside a streamed segment.
        xid: Option<u32>,
        /// Relation OID.
        relation: u32,
        /// The old row or its key.
        old: OldTuple,
    },
    /// `TRUNCATE` of one or more relations.
    Truncate {
        /// Transaction id, inside a streamed segment.
        xid: Option<u32>,
        /// 1: CASCADE, 2: RESTART IDENTITY.
        options: u8,
        /// Relation OIDs.
        relations: Vec<u32>,
    },
    /// A message from `pg_logical_emit_message`.
    Message {
        /// Transaction id, inside a streamed segment.
        xid: Option<u32>,
        /// Whether it belongs to a transaction (else it is sent at once).
        transactional: bool,
        /// LSN of the message.
        lsn: Lsn,
        /// Prefix given by the emitter.
        prefix: String,
        /// Content.
        content: Bytes,
    },
    /// Start of a segment of an in-progress transaction.
    StreamStart {
        /// Transaction id.
        xid: u32,
        /// First segment of this transaction.
        first_segment: bool,
    },
    /// End of a segment.
    StreamStop,
    /// A streamed transaction committed.
    StreamCommit {
        /// Transaction id.
        xid: u32,
        /// Unused flags.
        flags: u8,
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// End of the commit record.
        end_lsn: Lsn,
        /// Commit time.
        commit_time: i64,
    },
    /// A streamed transaction (or one of its subtransactions) aborted.
    StreamAbort {
        /// Top-level transaction id.
        xid: u32,
        /// Aborted subtransaction (equal to `xid` when the whole transaction aborted).
        subxid: u32,
    },
}

/// Tracks whether the stream is inside a Stream Start/Stop segment, which decides whether
/// row messages carry a transaction id.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamState {
    in_segment: bool,
}

impl StreamState {
    /// Whether the next message is inside a streamed segment.
    pub fn in_segment(&self) -> bool {
        self.in_segment
    }

    /// Decodes one message and updates the segment state.
    pub fn decode(&mut self, buf: &Bytes) -> Result<LogicalMessage, DecodeError> {
        let msg = decode(buf, self.in_segment)?;
        match msg {
            LogicalMessage::StreamStart { .. } => {
                if self.in_segment {
                    return Err(DecodeError::Protocol("Stream Start inside a segment"));
                }
                self.in_segment = true;
            }
            LogicalMessage::StreamStop => {
                if !self.in_segment {
                    return Err(DecodeError::Protocol("Stream Stop outside a segment"));
                }
                self.in_segment = false;
            }
            _ => {}
        }
        Ok(msg)
    }
}

fn tuple(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let n = r.i16("tuple column count")?;
    let n = length(r, n.into(), "tuple column count", 1)?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(match r.u8("tuple value kind")? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            kind @ (b't' | b'b') => {
                let len = r.i32("tuple value length")?;
                let len = length(r, len.into(), "tuple value length", 1)?;
                let data = r.bytes(len, "tuple value")?;
                if kind == b't' {
                    TupleValue::Text(data)
                } else {
                    TupleValue::Binary(data)
                }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    kind: "tuple value",
                    tag,
                });
            }
        });
    }
    Ok(TupleData(values))
}

fn old_tuple(tag: u8, r: &mut Reader<'_>) -> Result<OldTuple, DecodeError> {
    match tag {
        b'K' => Ok(OldTuple::Key(tuple(r)?)),
        b'O' => Ok(OldTuple::Full(tuple(r)?)),
        tag => Err(DecodeError::UnknownTag {
            kind: "old tuple",
            tag,
        }),
    }
}

fn expect_new(r: &mut Reader<'_>) -> Result<(), DecodeError> {
    match r.u8("new tuple tag")? {
        b'N' => Ok(()),
        tag => Err(DecodeError::UnknownTag {
            kind: "new tuple",
            tag,
        }),
    }
}

/// Decodes one pgoutput message. `in_segment` says whether it comes between Stream Start and
/// Stream Stop (see [`StreamState`]).
pub fn decode(buf: &Bytes, in_segment: bool) -> Result<LogicalMessage, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = r.u8("message tag")?;
    let xid = |r: &mut Reader<'_>| -> Result<Option<u32>, DecodeError> {
        if in_segment {
            Ok(Some(r.u32("xid")?))
        } else {
            Ok(None)
        }
    };
    let msg = match tag {
        b'B' => LogicalMessage::Begin {
            final_lsn: Lsn(r.u64("final lsn")?),
            commit_time: r.i64("commit time")?,
            xid: r.u32("xid")?,
        },
        b'C' => LogicalMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: Lsn(r.u64("commit lsn")?),
            end_lsn: Lsn(r.u64("end lsn")?),
            commit_time: r.i64("commit time")?,
        },
        b'O' => LogicalMessage::Origin {
            commit_lsn: Lsn(r.u64("origin lsn")?),
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let xid = xid(&mut r)?;
            let oid = r.u32("relation oid")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = match r.u8("replica identity")? {
                b'd' => ReplicaIdentity::Default,
                b'n' => ReplicaIdentity::Nothing,
                b'f' => ReplicaIdentity::Full,
                b'i' => ReplicaIdentity::Index,
                tag => {
                    return Err(DecodeError::UnknownTag {
                        kind: "replica identity",
                        tag,
                    });
                }
            };
            let n = r.i16("column count")?;
            let n = length(&r, n.into(), "column count", 10)?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                columns.push(Column {
                    key: r.u8("column flags")? & 1 == 1,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("column type")?,
                    type_modifier: r.i32("column type modifier")?,
                });
            }
            LogicalMessage::Relation(RelationBody {
                xid,
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => LogicalMessage::Type {
            xid: xid(&mut r)?,
            oid: r.u32("type oid")?,
            namespace: r.cstr("type namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let xid = xid(&mut r)?;
            let relation = r.u32("relation oid")?;
            expect_new(&mut r)?;
            LogicalMessage::Insert {
                xid,
                relation,
                new: tuple(&mut r)?,
            }
        }
        b'U' => {
            let xid = xid(&mut r)?;
            let relation = r.u32("relation oid")?;
            let old = match r.u8("update tuple tag")? {
                b'N' => None,
                t => {
                    let old = old_tuple(t, &mut r)?;
                    expect_new(&mut r)?;
                    Some(old)
                }
            };
            LogicalMessage::Update {
                xid,
                relation,
                old,
                new: tuple(&mut r)?,
            }
        }
        b'D' => {
            let xid = xid(&mut r)?;
            let relation = r.u32("relation oid")?;
            let t = r.u8("delete tuple tag")?;
            LogicalMessage::Delete {
                xid,
                relation,
                old: old_tuple(t, &mut r)?,
            }
        }
        b'T' => {
            let xid = xid(&mut r)?;
            let n = r.i32("relation count")?;
            let n = length(&r, n.into(), "relation count", 4)?;
            let options = r.u8("truncate options")?;
            let mut relations = Vec::with_capacity(n);
            for _ in 0..n {
                relations.push(r.u32("relation oid")?);
            }
            LogicalMessage::Truncate {
                xid,
                options,
                relations,
            }
        }
        b'M' => {
            let xid = xid(&mut r)?;
            let transactional = r.u8("message flags")? & 1 == 1;
            let lsn = Lsn(r.u64("message lsn")?);
            let prefix = r.cstr("message prefix")?;
            let len = r.i32("message length")?;
            let len = length(&r, len.into(), "message length", 1)?;
            LogicalMessage::Message {
                xid,
                transactional,
                lsn,
                prefix,
                content: r.bytes(len, "message content")?,
            }
        }
        b'S' => LogicalMessage::StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.u8("first segment")? == 1,
        },
        b'E' => LogicalMessage::StreamStop,
        b'c' => LogicalMessage::StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: Lsn(r.u64("commit lsn")?),
            end_lsn: Lsn(r.u64("end lsn")?),
            commit_time: r.i64("commit time")?,
        },
        b'A' => LogicalMessage::StreamAbort {
            xid: r.u32("xid")?,
            subxid: r.u32("subtransaction xid")?,
        },
        tag => {
            return Err(DecodeError::UnknownTag {
                kind: "pgoutput message",
                tag,
            });
        }
    };
    r.finish()?;
    Ok(msg)
}
