//! Streaming seal/open for large objects: the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár)
//! over AES-256-GCM, so an output of any size is sealed and opened one fixed-size chunk at a time and
//! never sits whole in memory.
//!
//! Layout (integers big-endian):
//!
//! ```text
//! 0       u8   format (2, never confused with a single sealed value's 1)
//! 1..5    u32  kek_id
//! 5..9    u32  kek_version
//! 9..17   u64  shred_id        0 = none
//! 17..24  [7]  nonce prefix    random
//! 24..28  u32  chunk size      plaintext bytes per chunk (the last chunk may be shorter)
//! 28..30  u16  n               wrapped data key length (at most MAX_WRAPPED)
//! 30..    [n]  wrapped_dek
//! then chunks: ciphertext ‖ tag(16), each of chunk size + 16 bytes except the last
//! ```
//!
//! Chunk `i` uses the nonce `prefix ‖ u32 i ‖ last-flag` and the additional data `"skygate-stream" ‖
//! format ‖ kek_id ‖ shred_id ‖ prefix ‖ chunk size ‖ caller AAD`. Dropping final chunks (the new last
//! chunk lacks the flag), reordering or duplicating chunks (wrong counter), appending after the last
//! chunk, or editing the header all fail authentication. As with single values, `kek_version` and the
//! wrapped key are left out of the AAD so a rewrap rewrites only the header.

use ring::aead::{Aad as GcmAad, Nonce, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::envelope::{gcm_key, Header};
use crate::{Aad, Cipher, CryptoError, Dek, Result, ShredId};

pub const FORMAT_STREAM: u8 = 2;
/// Default plaintext bytes per chunk.
pub const DEFAULT_CHUNK: u32 = 64 * 1024;
/// The largest wrapped data key a stream header carries (providers produce 60 bytes or less).
pub const MAX_WRAPPED: usize = 1024;
const TAG: usize = 16;
const FIXED: usize = 30;
const PREFIX: usize = 7;
const DOMAIN: &[u8] = b"skygate-stream";

/// A parsed stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    kek_id: u32,
    kek_version: u32,
    shred_id: ShredId,
    prefix: [u8; PREFIX],
    chunk_size: u32,
    wrapped: Vec<u8>,
}

impl StreamHeader {
    /// The most bytes a header can take: read this many (or the whole object) to parse one.
    pub const MAX_LEN: usize = FIXED + MAX_WRAPPED;

    /// Parses a header from the start of `bytes`. `Ok(None)`: more bytes are needed.
    pub fn parse_prefix(bytes: &[u8]) -> Result<Option<StreamHeader>> {
        if bytes.is_empty() {
            return Ok(None);
        }
        if bytes[0] != FORMAT_STREAM {
            return Err(CryptoError::Format("not a sealed stream (unknown format)"));
        }
        if bytes.len() < FIXED {
            return Ok(None);
        }
        let u32_at = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let mut shred = [0u8; 8];
        shred.copy_from_slice(&bytes[9..17]);
        let mut prefix = [0u8; PREFIX];
        prefix.copy_from_slice(&bytes[17..24]);
        let chunk_size = u32_at(24);
        if chunk_size == 0 || chunk_size > 16 * 1024 * 1024 {
            return Err(CryptoError::Format("stream chunk size out of range"));
        }
        let n = u16::from_be_bytes([bytes[28], bytes[29]]) as usize;
        if n > MAX_WRAPPED {
            return Err(CryptoError::Format("stream wrapped key too long"));
        }
        if bytes.len() < FIXED + n {
            return Ok(None);
        }
        Ok(Some(StreamHeader {
            kek_id: u32_at(1),
            kek_version: u32_at(5),
            shred_id: u64::from_be_bytes(shred),
            prefix,
            chunk_size,
            wrapped: bytes[FIXED..FIXED + n].to_vec(),
        }))
    }

    /// Parses a complete header; too few bytes is a format error.
    pub fn parse(bytes: &[u8]) -> Result<StreamHeader> {
        Self::parse_prefix(bytes)?.ok_or(CryptoError::Format("truncated stream header"))
    }

    /// Bytes the header occupies.
    pub fn len(&self) -> usize {
        FIXED + self.wrapped.len()
    }

    /// Never true: a header has a fixed part.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn kek_version(&self) -> u32 {
        self.kek_version
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        if self.wrapped.len() > MAX_WRAPPED {
            return Err(CryptoError::Provider(format!(
                "wrapped data key of {} bytes does not fit a stream header",
                self.wrapped.len()
            )));
        }
        let mut v = Vec::with_capacity(self.len());
        v.push(FORMAT_STREAM);
        v.extend_from_slice(&self.kek_id.to_be_bytes());
        v.extend_from_slice(&self.kek_version.to_be_bytes());
        v.extend_from_slice(&self.shred_id.to_be_bytes());
        v.extend_from_slice(&self.prefix);
        v.extend_from_slice(&self.chunk_size.to_be_bytes());
        v.extend_from_slice(&(self.wrapped.len() as u16).to_be_bytes());
        v.extend_from_slice(&self.wrapped);
        Ok(v)
    }

    fn aad(&self, caller: &Aad) -> Vec<u8> {
        let mut v = Vec::with_capacity(DOMAIN.len() + 28 + caller.as_bytes().len());
        v.extend_from_slice(DOMAIN);
        v.push(FORMAT_STREAM);
        v.extend_from_slice(&self.kek_id.to_be_bytes());
        v.extend_from_slice(&self.shred_id.to_be_bytes());
        v.extend_from_slice(&self.prefix);
        v.extend_from_slice(&self.chunk_size.to_be_bytes());
        v.extend_from_slice(caller.as_bytes());
        v
    }

    /// The value-format header the key functions of [`Cipher`] work with.
    fn as_value_header(&self) -> Header {
        Header {
            format: FORMAT_STREAM,
            kek_id: self.kek_id,
            kek_version: self.kek_version,
            shred_id: self.shred_id,
            nonce: [0; NONCE_LEN],
        }
    }
}

/// The per-stream state both directions share: the key, the nonce prefix, the AAD, and the position.
struct Chunks {
    key: ring::aead::LessSafeKey,
    prefix: [u8; PREFIX],
    chunk_size: u32,
    aad: Vec<u8>,
    counter: u32,
    finished: bool,
}

impl Chunks {
    fn new(key: &Dek, h: &StreamHeader, caller: &Aad) -> Result<Self> {
        Ok(Chunks {
            key: gcm_key(key)?,
            prefix: h.prefix,
            chunk_size: h.chunk_size,
            aad: h.aad(caller),
            counter: 0,
            finished: false,
        })
    }

    /// The nonce of the current chunk: `prefix ‖ u32 counter ‖ last-flag`.
    fn nonce(&self, last: bool) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[..PREFIX].copy_from_slice(&self.prefix);
        n[PREFIX..PREFIX + 4].copy_from_slice(&self.counter.to_be_bytes());
        n[NONCE_LEN - 1] = u8::from(last);
        Nonce::assume_unique_for_key(n)
    }

    /// Moves to the next chunk; a stream never reuses a counter.
    fn advance(&mut self, last: bool) -> Result<()> {
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or(CryptoError::Refused("stream longer than 2^32 chunks".into()))?;
        self.finished = last;
        Ok(())
    }
}

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunks")
            .field("chunk", &self.counter)
            .finish_non_exhaustive()
    }
}

/// Seals one stream, chunk by chunk. Not `Clone`: each chunk number is used once.
#[derive(Debug)]
pub struct StreamSealer(Chunks);

impl StreamSealer {
    /// Plaintext bytes per chunk: every chunk but the last must be exactly this long.
    pub fn chunk_size(&self) -> usize {
        self.0.chunk_size as usize
    }

    /// Seals the next chunk. `last` marks the final chunk (which may be shorter, or empty).
    pub fn seal_chunk(&mut self, plaintext: &[u8], last: bool) -> Result<Vec<u8>> {
        if self.0.finished {
            return Err(CryptoError::Refused(
                "the stream's last chunk was already sealed".into(),
            ));
        }
        if plaintext.len() > self.chunk_size() || (!last && plaintext.len() != self.chunk_size()) {
            return Err(CryptoError::Refused(format!(
                "chunk of {} bytes: every chunk but the last must be {} bytes",
                plaintext.len(),
                self.0.chunk_size
            )));
        }
        let mut out = Vec::with_capacity(plaintext.len() + TAG);
        out.extend_from_slice(plaintext);
        self.0
            .key
            .seal_in_place_append_tag(self.0.nonce(last), GcmAad::from(self.0.aad.as_slice()), &mut out)
            .map_err(|_| CryptoError::Format("chunk too long"))?;
        self.0.advance(last)?;
        Ok(out)
    }
}

/// Opens one stream, chunk by chunk.
#[derive(Debug)]
pub struct StreamOpener(Chunks);

impl StreamOpener {
    /// Bytes of a sealed chunk that is not the last one.
    pub fn sealed_chunk_len(&self) -> usize {
        self.0.chunk_size as usize + TAG
    }

    /// Opens the next sealed chunk; the caller says whether it is the last one in the object. A chunk
    /// that is out of place, tampered, or wrongly flagged → `CryptoError::Authentication`.
    pub fn open_chunk(&mut self, sealed: &[u8], last: bool) -> Result<Vec<u8>> {
        if self.0.finished || sealed.len() < TAG || sealed.len() > self.sealed_chunk_len() {
            return Err(CryptoError::Authentication);
        }
        let mut buf = sealed.to_vec();
        let n = self
            .0
            .key
            .open_in_place(self.0.nonce(last), GcmAad::from(self.0.aad.as_slice()), &mut buf)
            .map_err(|_| CryptoError::Authentication)?
            .len();
        buf.truncate(n);
        self.0.advance(last).map_err(|_| CryptoError::Authentication)?;
        Ok(buf)
    }
}

impl Cipher {
    /// Starts sealing a stream bound to `aad` (and shred key `shred`, 0 = none) with 64 KiB chunks.
    /// Returns the header bytes to write first, and the sealer for the chunks.
    pub fn stream_sealer(&self, aad: &Aad, shred: ShredId) -> Result<(Vec<u8>, StreamSealer)> {
        self.stream_sealer_with_chunk(aad, shred, DEFAULT_CHUNK)
    }

    /// [`Cipher::stream_sealer`] with another chunk size (1 byte to 16 MiB).
    pub fn stream_sealer_with_chunk(
        &self,
        aad: &Aad,
        shred: ShredId,
        chunk_size: u32,
    ) -> Result<(Vec<u8>, StreamSealer)> {
        if chunk_size == 0 || chunk_size > 16 * 1024 * 1024 {
            return Err(CryptoError::Refused("chunk size must be 1 byte to 16 MiB".into()));
        }
        let (h, wrapped, key) = self.new_key(shred)?;
        let mut prefix = [0u8; PREFIX];
        SystemRandom::new()
            .fill(&mut prefix)
            .map_err(|_| CryptoError::Random)?;
        let header = StreamHeader {
            kek_id: h.kek_id,
            kek_version: h.kek_version,
            shred_id: shred,
            prefix,
            chunk_size,
            wrapped,
        };
        let sealer = StreamSealer(Chunks::new(&key, &header, aad)?);
        Ok((header.to_bytes()?, sealer))
    }

    /// Starts opening a stream whose header is `header` (exactly the header's bytes, or more).
    pub fn stream_opener(&self, header: &[u8], aad: &Aad) -> Result<StreamOpener> {
        let h = StreamHeader::parse(header)?;
        let key: Dek = self.key_for(&h.as_value_header(), &h.wrapped)?;
        Ok(StreamOpener(Chunks::new(&key, &h, aad)?))
    }

    /// Moves a stream's data key to the current KEK version: a new header to put in place of the old
    /// one, the chunks unchanged. `Ok(None)` when it is already current.
    pub fn rewrap_stream_header(&self, header: &[u8]) -> Result<Option<Vec<u8>>> {
        let h = StreamHeader::parse(header)?;
        if h.kek_version >= self.provider().current_version() {
            return Ok(None);
        }
        let (moved, wrapped) = self.rewrap_header(&h.as_value_header(), &h.wrapped)?;
        let new = StreamHeader {
            kek_version: moved.kek_version,
            wrapped,
            ..h
        };
        Ok(Some(new.to_bytes()?))
    }

    /// Seals a whole in-memory value as a stream (small objects and tests).
    pub fn seal_all(&self, plaintext: &[u8], aad: &Aad, shred: ShredId) -> Result<Vec<u8>> {
        let (mut out, mut s) = self.stream_sealer(aad, shred)?;
        let mut chunks = plaintext.chunks(s.chunk_size()).peekable();
        if chunks.peek().is_none() {
            out.extend(s.seal_chunk(&[], true)?);
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            out.extend(s.seal_chunk(c, last)?);
        }
        Ok(out)
    }

    /// Opens a whole sealed stream held in memory.
    pub fn open_all(&self, sealed: &[u8], aad: &Aad) -> Result<Vec<u8>> {
        let h = StreamHeader::parse(sealed)?;
        let mut o = self.stream_opener(sealed, aad)?;
        let body = &sealed[h.len()..];
        let step = o.sealed_chunk_len();
        let mut out = Vec::with_capacity(body.len());
        let mut rest = body;
        loop {
            if rest.len() > step {
                out.extend(o.open_chunk(&rest[..step], false)?);
                rest = &rest[step..];
            } else {
                out.extend(o.open_chunk(rest, true)?);
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{KeyProvider, MemoryKeyring};

    fn setup() -> (Cipher, Arc<MemoryKeyring>) {
        let ring = Arc::new(MemoryKeyring::new().unwrap());
        (Cipher::new(ring.clone()), ring)
    }

    fn at() -> Aad {
        Aad::parts(&[b"object", b"acct_x/out"])
    }

    fn sizes() -> Vec<usize> {
        let c = DEFAULT_CHUNK as usize;
        vec![0, 1, c - 1, c, c + 1, 3 * c, 3 * c + 17]
    }

    #[test]
    fn round_trips_at_chunk_boundaries() {
        let (c, _) = setup();
        for n in sizes() {
            let data: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
            let sealed = c.seal_all(&data, &at(), 0).unwrap();
            assert_eq!(c.open_all(&sealed, &at()).unwrap(), data, "size {n}");
        }
    }

    #[test]
    fn truncation_reordering_duplication_appending_and_edits_fail() {
        let (c, _) = setup();
        let k = DEFAULT_CHUNK as usize;
        let data: Vec<u8> = (0..3 * k + 100).map(|i| i as u8).collect();
        let sealed = c.seal_all(&data, &at(), 0).unwrap();
        let h = StreamHeader::parse(&sealed).unwrap().len();
        let step = k + TAG;
        let chunk = |i: usize| sealed[h + i * step..(h + (i + 1) * step).min(sealed.len())].to_vec();
        let header = sealed[..h].to_vec();
        let join = |parts: &[Vec<u8>]| {
            let mut v = header.clone();
            for p in parts {
                v.extend_from_slice(p);
            }
            v
        };
        let cases = [
            ("drop the last chunk", join(&[chunk(0), chunk(1), chunk(2)])),
            ("drop to the header", header.clone()),
            ("swap two chunks", join(&[chunk(1), chunk(0), chunk(2), chunk(3)])),
            (
                "duplicate a chunk",
                join(&[chunk(0), chunk(0), chunk(1), chunk(2), chunk(3)]),
            ),
            (
                "append after the last",
                join(&[chunk(0), chunk(1), chunk(2), chunk(3), chunk(3)]),
            ),
            ("cut inside a chunk", sealed[..sealed.len() - 5].to_vec()),
        ];
        for (what, bad) in cases {
            assert!(c.open_all(&bad, &at()).is_err(), "{what} was accepted");
        }
        for pos in [
            0,
            3,
            7,
            12,
            20,
            25,
            29,
            h,
            h + 100,
            h + step - 1,
            sealed.len() - 1,
        ] {
            let mut bad = sealed.clone();
            bad[pos] ^= 0x80;
            assert!(c.open_all(&bad, &at()).is_err(), "flip at {pos} was accepted");
        }
        assert!(c
            .open_all(&sealed, &Aad::parts(&[b"object", b"acct_y/out"]))
            .is_err());
        // A single sealed value is not a stream, and the other way round.
        let value = c.seal(b"v", &at()).unwrap();
        assert!(matches!(c.open_all(&value, &at()), Err(CryptoError::Format(_))));
        assert!(matches!(c.open(&sealed, &at()), Err(CryptoError::Format(_))));
    }

    #[test]
    fn rewrap_keeps_chunks_and_survives_retire() {
        let (c, ring) = setup();
        let data = vec![7u8; 100_000];
        let sealed = c.seal_all(&data, &at(), 0).unwrap();
        let h = StreamHeader::parse(&sealed).unwrap();
        assert_eq!(c.rewrap_stream_header(&sealed[..h.len()]).unwrap(), None);
        ring.rotate().unwrap();
        let new_header = c.rewrap_stream_header(&sealed[..h.len()]).unwrap().unwrap();
        assert_eq!(StreamHeader::parse(&new_header).unwrap().kek_version(), 2);
        let mut moved = new_header.clone();
        moved.extend_from_slice(&sealed[h.len()..]);
        ring.retire(1).unwrap();
        assert!(c.open_all(&sealed, &at()).is_err());
        assert_eq!(c.open_all(&moved, &at()).unwrap(), data);
    }

    #[test]
    fn sealer_refuses_misuse() {
        let (c, _) = setup();
        let (_, mut s) = c.stream_sealer_with_chunk(&at(), 0, 4).unwrap();
        assert!(s.seal_chunk(b"abc", false).is_err(), "short non-final chunk");
        assert!(s.seal_chunk(b"abcde", true).is_err(), "oversized chunk");
        s.seal_chunk(b"ab", true).unwrap();
        assert!(s.seal_chunk(b"", true).is_err(), "after the last chunk");
    }
}
