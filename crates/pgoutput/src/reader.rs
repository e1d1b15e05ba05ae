//! A bounds-checked big-endian cursor over a message.

use bytes::Bytes;

use crate::DecodeError;

/// Reads network-order fields from a message, never past its end.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.buf.len() - self.pos;
        if rest < n {
            return Err(DecodeError::Truncated {
                field,
                needed: n - rest,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(self.i32(field)? as u32)
    }

    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(self.i64(field)? as u64)
    }

    /// A NUL-terminated UTF-8 string.
    pub fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::InvalidString { field })?;
        let s =
            std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::InvalidString { field })?;
        self.pos += end + 1;
        Ok(s.to_string())
    }

    /// `n` bytes as a cheap slice of the underlying buffer.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.take(n, field)?;
        Ok(self.buf.slice(start..start + n))
    }

    /// Everything left.
    pub fn rest(&mut self) -> Bytes {
        let s = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        s
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails if bytes remain.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// A non-negative length field as usize, refusing negative values and values larger than
/// what is left (so a hostile count cannot make us allocate).
pub(crate) fn length(
    r: &Reader<'_>,
    value: i64,
    field: &'static str,
    unit: usize,
) -> Result<usize, DecodeError> {
    if value < 0 || (value as u64).saturating_mul(unit as u64) > r.remaining() as u64 {
        return Err(DecodeError::InvalidLength { field, value });
    }
    Ok(value as usize)
}
