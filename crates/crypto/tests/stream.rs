//! Streaming sealing (STREAM over AES-256-GCM) with the local keyring, driven through the chunk API the
//! object store uses: round trips at the chunk boundaries, every way of cutting, reordering, repeating,
//! extending or editing a stream, header parsing, rewrap across rotate+retire, shredding, and a 64 MiB
//! object that is never held whole.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use base64::Engine;
use skygate_crypto::local::{LocalKeyring, MasterKey};
use skygate_crypto::stream::{StreamHeader, DEFAULT_CHUNK};
use skygate_crypto::{Aad, Cipher, CryptoError, KeyProvider};

struct Setup {
    _tmp: tempfile::TempDir,
    ring: Arc<LocalKeyring>,
    cipher: Cipher,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
    let (ring, _) =
        LocalKeyring::open_or_create(&tmp.path().join("keyring"), MasterKey::from_base64(&key).unwrap())
            .unwrap();
    let ring = Arc::new(ring);
    let cipher = Cipher::new(ring.clone());
    Setup {
        _tmp: tmp,
        ring,
        cipher,
    }
}

fn at() -> Aad {
    Aad::parts(&[b"object", b"acct_1/p_1/out.png"])
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(31) % 251) as u8).collect()
}

/// A sealed stream as the object store writes it: the header, then chunks, holding back the last
/// (possibly full) chunk so only it carries the flag.
struct Sealed {
    header: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

impl Sealed {
    fn bytes(&self) -> Vec<u8> {
        self.with(&self.chunks)
    }

    fn with(&self, chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut v = self.header.clone();
        for c in chunks {
            v.extend_from_slice(c);
        }
        v
    }
}

fn seal(c: &Cipher, plain: &[u8], chunk: u32, shred: u64) -> Sealed {
    let (header, mut s) = c.stream_sealer_with_chunk(&at(), shred, chunk).unwrap();
    assert_eq!(s.chunk_size(), chunk as usize);
    let mut chunks = Vec::new();
    let mut rest = plain;
    while rest.len() > s.chunk_size() {
        let (now, later) = rest.split_at(s.chunk_size());
        chunks.push(s.seal_chunk(now, false).unwrap());
        rest = later;
    }
    chunks.push(s.seal_chunk(rest, true).unwrap());
    Sealed { header, chunks }
}

/// Opens bytes as the object store reads them: header first, then full sealed chunks while more bytes
/// follow, the remainder as the last chunk.
fn open(c: &Cipher, bytes: &[u8], aad: &Aad) -> Result<Vec<u8>, CryptoError> {
    let h = StreamHeader::parse(bytes)?;
    let mut o = c.stream_opener(&bytes[..h.len()], aad)?;
    let step = o.sealed_chunk_len();
    assert_eq!(step, h.chunk_size() as usize + 16);
    let mut out = Vec::new();
    let mut rest = &bytes[h.len()..];
    while rest.len() > step {
        out.extend(o.open_chunk(&rest[..step], false)?);
        rest = &rest[step..];
    }
    out.extend(o.open_chunk(rest, true)?);
    Ok(out)
}

#[test]
fn round_trips_at_every_boundary() {
    let s = setup();
    let c = &s.cipher;
    for chunk in [DEFAULT_CHUNK, 1000] {
        let k = chunk as usize;
        for n in [0, 1, k - 1, k, k + 1, 2 * k, 5 * k + 7] {
            let plain = data(n);
            let sealed = seal(c, &plain, chunk, 0);
            assert_eq!(sealed.chunks.len(), n.div_ceil(k).max(1), "size {n}");
            for (i, ch) in sealed.chunks.iter().enumerate() {
                if i + 1 < sealed.chunks.len() {
                    assert_eq!(ch.len(), k + 16);
                }
            }
            let bytes = sealed.bytes();
            assert_eq!(open(c, &bytes, &at()).unwrap(), plain, "chunk {chunk} size {n}");
            if chunk == DEFAULT_CHUNK {
                // The whole-object helpers agree with the chunk API both ways.
                assert_eq!(c.open_all(&bytes, &at()).unwrap(), plain);
                let all = c.seal_all(&plain, &at(), 0).unwrap();
                assert_eq!(all.len(), bytes.len());
                assert_eq!(open(c, &all, &at()).unwrap(), plain);
            }
        }
    }
}

#[test]
fn streams_are_not_single_values() {
    let s = setup();
    let c = &s.cipher;
    let stream = c.seal_all(b"streamed", &at(), 0).unwrap();
    assert_eq!(stream[0], 2);
    let value = c.seal(b"single", &at()).unwrap();
    assert!(matches!(c.open(&stream, &at()), Err(CryptoError::Format(_))));
    assert!(matches!(c.open_all(&value, &at()), Err(CryptoError::Format(_))));
    assert!(matches!(StreamHeader::parse(&value), Err(CryptoError::Format(_))));
    assert!(matches!(
        c.stream_opener(&value, &at()),
        Err(CryptoError::Format(_))
    ));
}

#[test]
fn header_parsing_reports_length_and_needs() {
    let s = setup();
    let c = &s.cipher;
    let sealed = seal(c, &data(3000), 1000, 0);
    let h = StreamHeader::parse(&sealed.header).unwrap();
    assert_eq!(h.len(), sealed.header.len());
    assert!(h.len() <= StreamHeader::MAX_LEN);
    assert_eq!(h.chunk_size(), 1000);
    assert_eq!(h.kek_version(), s.ring.current_version());
    // Parsing from a longer buffer reads only the header.
    assert_eq!(StreamHeader::parse(&sealed.bytes()).unwrap(), h);
    // Any strict prefix: more bytes needed, never a wrong header.
    for n in 0..h.len() {
        assert!(
            StreamHeader::parse_prefix(&sealed.header[..n]).unwrap().is_none(),
            "prefix {n}"
        );
        assert!(StreamHeader::parse(&sealed.header[..n]).is_err());
    }
    assert_eq!(StreamHeader::parse_prefix(&sealed.header).unwrap(), Some(h));
    let mut bad = sealed.header.clone();
    bad[0] = 1;
    assert!(StreamHeader::parse_prefix(&bad).is_err());
}

#[test]
fn cut_reordered_repeated_and_extended_streams_fail() {
    let s = setup();
    let c = &s.cipher;
    let plain = data(4 * 1000 + 300);
    let sealed = seal(c, &plain, 1000, 0);
    let ch = &sealed.chunks;
    assert_eq!(ch.len(), 5);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for keep in 0..ch.len() {
        cases.push((format!("cut after chunk {keep}"), sealed.with(&ch[..keep])));
    }
    for i in 0..ch.len() - 1 {
        let mut v = ch.clone();
        v.swap(i, i + 1);
        cases.push((format!("chunks {i} and {} swapped", i + 1), sealed.with(&v)));
        let mut v = ch.clone();
        v.insert(i, ch[i].clone());
        cases.push((format!("chunk {i} repeated"), sealed.with(&v)));
        let mut v = ch.clone();
        v.remove(i);
        cases.push((format!("chunk {i} dropped"), sealed.with(&v)));
    }
    let mut v = ch.clone();
    v.push(ch[4].clone());
    cases.push(("last chunk repeated after itself".into(), sealed.with(&v)));
    let mut v = ch.clone();
    v.push(ch[1].clone());
    cases.push(("a chunk appended after the last".into(), sealed.with(&v)));
    let mut bytes = sealed.bytes();
    bytes.push(0);
    cases.push(("one byte appended".into(), bytes));
    let bytes = sealed.bytes();
    cases.push((
        "cut inside the last chunk".into(),
        bytes[..bytes.len() - 1].to_vec(),
    ));
    cases.push((
        "cut inside a middle chunk".into(),
        bytes[..sealed.header.len() + 2500].to_vec(),
    ));
    // Chunks of another stream of the same object (same AAD, other key).
    let other = seal(c, &plain, 1000, 0);
    let mut v = ch.clone();
    v[2] = other.chunks[2].clone();
    cases.push(("a chunk from another stream".into(), sealed.with(&v)));
    cases.push(("another stream's header".into(), other.with(ch)));

    for (what, bad) in cases {
        match open(c, &bad, &at()) {
            Ok(_) => panic!("{what}: accepted"),
            Err(CryptoError::Authentication) => {}
            Err(e) => panic!("{what}: {e:?}"),
        }
        assert!(c.open_all(&bad, &at()).is_err(), "{what}: open_all accepted");
    }
    assert_eq!(open(c, &sealed.bytes(), &at()).unwrap(), plain);
}

#[test]
fn flipped_bits_anywhere_fail() {
    let s = setup();
    let c = &s.cipher;
    let plain = data(2 * 1000 + 10);
    let sealed = seal(c, &plain, 1000, 0);
    let bytes = sealed.bytes();
    let h = sealed.header.len();
    for i in 0..bytes.len() {
        // Every header byte, then a sample of each chunk (start, middle, tag).
        let in_header = i < h;
        let off = (i - h.min(i)) % 1016;
        if !in_header && off >= 3 && off != 500 && off < 1013 {
            continue;
        }
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        let e = match open(c, &bad, &at()) {
            Ok(_) => panic!("flip at {i} accepted"),
            Err(e) => e,
        };
        if !in_header || (30..h).contains(&i) || (17..24).contains(&i) {
            // Chunks, the wrapped key, the nonce prefix.
            assert!(matches!(e, CryptoError::Authentication), "flip at {i}: {e:?}");
        }
    }
    // Wrong place.
    assert!(matches!(
        open(c, &bytes, &Aad::parts(&[b"object", b"acct_2/p_1/out.png"])),
        Err(CryptoError::Authentication)
    ));
}

#[test]
fn sealer_and_opener_refuse_misuse() {
    let s = setup();
    let c = &s.cipher;
    let (header, mut sealer) = c.stream_sealer_with_chunk(&at(), 0, 100).unwrap();
    assert!(sealer.seal_chunk(&[0; 99], false).is_err(), "short middle chunk");
    assert!(sealer.seal_chunk(&[0; 101], false).is_err(), "long middle chunk");
    assert!(sealer.seal_chunk(&[0; 101], true).is_err(), "long last chunk");
    let first = sealer.seal_chunk(&[1; 100], false).unwrap();
    let last = sealer.seal_chunk(&[2; 40], true).unwrap();
    assert!(sealer.seal_chunk(&[], true).is_err(), "after the last chunk");
    assert!(c.stream_sealer_with_chunk(&at(), 0, 0).is_err());

    let mut o = c.stream_opener(&header, &at()).unwrap();
    assert!(o.open_chunk(&first, true).is_err(), "a middle chunk claimed last");
    let mut o = c.stream_opener(&header, &at()).unwrap();
    assert_eq!(o.open_chunk(&first, false).unwrap(), vec![1; 100]);
    assert!(
        o.open_chunk(&last, false).is_err(),
        "the last chunk claimed not last"
    );
    let mut o = c.stream_opener(&header, &at()).unwrap();
    o.open_chunk(&first, false).unwrap();
    assert_eq!(o.open_chunk(&last, true).unwrap(), vec![2; 40]);
    assert!(o.open_chunk(&last, true).is_err(), "after the last chunk");
}

#[test]
fn rewrap_moves_the_header_across_rotate_and_retire() {
    let s = setup();
    let c = &s.cipher;
    let plain = data(3 * DEFAULT_CHUNK as usize + 5);
    let sealed = seal(c, &plain, DEFAULT_CHUNK, 0);
    let bytes = sealed.bytes();
    assert_eq!(c.rewrap_stream_header(&sealed.header).unwrap(), None);

    let v2 = s.ring.rotate().unwrap();
    let header = c.rewrap_stream_header(&sealed.header).unwrap().expect("moved");
    let h = StreamHeader::parse(&header).unwrap();
    assert_eq!(h.kek_version(), v2);
    assert_eq!(h.len(), header.len());
    assert_eq!(c.rewrap_stream_header(&header).unwrap(), None);
    let moved = sealed_with_header(&header, &sealed);

    s.ring.retire(1).unwrap();
    assert!(matches!(
        open(c, &bytes, &at()),
        Err(CryptoError::UnknownVersion(1))
    ));
    assert_eq!(open(c, &moved, &at()).unwrap(), plain);
    // A keyring opened afresh reads it too.
    let other = Cipher::new(s.ring.clone());
    assert_eq!(other.open_all(&moved, &at()).unwrap(), plain);
}

fn sealed_with_header(header: &[u8], s: &Sealed) -> Vec<u8> {
    let mut v = header.to_vec();
    for c in &s.chunks {
        v.extend_from_slice(c);
    }
    v
}

#[test]
fn shredded_streams_stay_shut() {
    let s = setup();
    let c = &s.cipher;
    let shred = s.ring.create_shred_key().unwrap();
    let plain = data(70_000);
    let bytes = seal(c, &plain, DEFAULT_CHUNK, shred).bytes();
    let backup = bytes.clone();
    assert_eq!(open(c, &bytes, &at()).unwrap(), plain);
    s.ring.destroy_shred_key(shred).unwrap();
    assert!(matches!(open(c, &backup, &at()), Err(CryptoError::Shredded(x)) if x == shred));
}

#[test]
fn sixty_four_mib_one_chunk_at_a_time() {
    let s = setup();
    let c = &s.cipher;
    const TOTAL: usize = 64 * 1024 * 1024;
    let k = DEFAULT_CHUNK as usize;
    let piece = |i: usize| -> Vec<u8> {
        let mut v = vec![0u8; k];
        for (j, b) in v.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(7) ^ (j as u8);
        }
        v
    };
    let (header, mut sealer) = c.stream_sealer(&at(), 0).unwrap();
    let mut opener = c.stream_opener(&header, &at()).unwrap();
    let n = TOTAL / k;
    let mut sealed_bytes = header.len();
    for i in 0..n {
        let last = i + 1 == n;
        let plain = piece(i);
        let sealed = sealer.seal_chunk(&plain, last).unwrap();
        sealed_bytes += sealed.len();
        // Only this chunk is in memory, sealed and opened.
        assert_eq!(opener.open_chunk(&sealed, last).unwrap(), plain, "chunk {i}");
    }
    assert_eq!(sealed_bytes, header.len() + TOTAL + n * 16);
}
