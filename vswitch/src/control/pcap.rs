//! The classic pcap file format (what `tcpdump -w` writes and Wireshark, tshark and every
//! capture tool read): a 24-byte file header, then a 16-byte header before each frame.
//! Timestamps in nanoseconds (magic `0xa1b23c4d`), link type Ethernet, little-endian.
//! <https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html>

/// The magic of a nanosecond-resolution pcap file.
pub const MAGIC_NS: u32 = 0xa1b2_3c4d;
/// The magic of a microsecond-resolution one (read only).
pub const MAGIC_US: u32 = 0xa1b2_c3d4;
/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;
pub const FILE_HEADER_LEN: usize = 24;
pub const RECORD_HEADER_LEN: usize = 16;

/// A pcap file being written into memory.
#[derive(Debug, Clone)]
pub struct PcapWriter {
    buf: Vec<u8>,
    snaplen: u32,
}

impl PcapWriter {
    /// A file whose frames are cut at `snaplen` bytes.
    pub fn new(snaplen: u32) -> Self {
        let mut buf = Vec::with_capacity(FILE_HEADER_LEN);
        buf.extend_from_slice(&MAGIC_NS.to_le_bytes());
        buf.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        buf.extend_from_slice(&4u16.to_le_bytes());
        buf.extend_from_slice(&0i32.to_le_bytes()); // thiszone: UTC
        buf.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        buf.extend_from_slice(&snaplen.to_le_bytes());
        buf.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        PcapWriter { buf, snaplen }
    }

    /// Appends one frame: `data` (cut at the snapshot length), which was `orig_len` bytes
    /// long, seen at `ts_ns` nanoseconds since the Unix epoch.
    pub fn record(&mut self, ts_ns: u64, orig_len: u32, data: &[u8]) {
        let n = data.len().min(self.snaplen as usize);
        let secs = (ts_ns / 1_000_000_000) as u32;
        let nanos = (ts_ns % 1_000_000_000) as u32;
        self.buf.reserve(RECORD_HEADER_LEN + n);
        self.buf.extend_from_slice(&secs.to_le_bytes());
        self.buf.extend_from_slice(&nanos.to_le_bytes());
        self.buf.extend_from_slice(&(n as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&orig_len.max(n as u32).to_le_bytes());
        self.buf.extend_from_slice(&data[..n]);
    }

    /// The file's bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// One frame read back from a pcap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub ts_ns: u64,
    pub orig_len: u32,
    pub data: &'a [u8],
}

/// Reads a classic pcap file (either byte order, micro- or nanosecond timestamps): its
/// snapshot length, link type and frames. Every length is checked; a truncated or malformed
/// file is an error saying where.
pub fn read(b: &[u8]) -> Result<(u32, u32, Vec<Record<'_>>), String> {
    let hdr = b
        .get(..FILE_HEADER_LEN)
        .ok_or("pcap: shorter than its 24-byte header")?;
    let raw = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let (le, ns) = match raw {
        MAGIC_NS => (true, true),
        MAGIC_US => (true, false),
        m if m.swap_bytes() == MAGIC_NS => (false, true),
        m if m.swap_bytes() == MAGIC_US => (false, false),
        m => return Err(format!("pcap: bad magic {m:#010x}")),
    };
    let u32_at = |s: &[u8], at: usize| {
        let w = [s[at], s[at + 1], s[at + 2], s[at + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let snaplen = u32_at(hdr, 16);
    let linktype = u32_at(hdr, 20);
    let mut out = Vec::new();
    let mut at = FILE_HEADER_LEN;
    while at < b.len() {
        let rh = b
            .get(at..at + RECORD_HEADER_LEN)
            .ok_or_else(|| format!("pcap: record header at byte {at} truncated"))?;
        let (secs, frac) = (u32_at(rh, 0) as u64, u32_at(rh, 4) as u64);
        let incl = u32_at(rh, 8) as usize;
        let orig_len = u32_at(rh, 12);
        let data = b
            .get(at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + incl)
            .ok_or_else(|| format!("pcap: record at byte {at} truncated ({incl} bytes)"))?;
        out.push(Record {
            ts_ns: secs * 1_000_000_000 + if ns { frac } else { frac * 1000 },
            orig_len,
            data,
        });
        at += RECORD_HEADER_LEN + incl;
    }
    Ok((snaplen, linktype, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_reads_back_with_its_header_fields() {
        let mut w = PcapWriter::new(64);
        w.record(1_700_000_000_123_456_789, 60, &[0xab; 60]);
        // Cut at the snapshot length; the original length kept.
        w.record(1_700_000_001_000_000_001, 1514, &[0xcd; 100]);
        let b = w.finish();
        assert_eq!(&b[..4], &[0x4d, 0x3c, 0xb2, 0xa1]);
        assert_eq!(b.len(), 24 + 16 + 60 + 16 + 64);
        let (snap, lt, recs) = read(&b).unwrap();
        assert_eq!((snap, lt), (64, LINKTYPE_ETHERNET));
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].ts_ns, 1_700_000_000_123_456_789);
        assert_eq!((recs[0].orig_len, recs[0].data), (60, &[0xab; 60][..]));
        assert_eq!(recs[1].ts_ns, 1_700_000_001_000_000_001);
        assert_eq!((recs[1].orig_len, recs[1].data.len()), (1514, 64));
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let mut w = PcapWriter::new(128);
        w.record(5, 42, &[1; 42]);
        let b = w.finish();
        for cut in 0..b.len() {
            // The file header alone is a valid empty file.
            if cut == FILE_HEADER_LEN {
                assert_eq!(read(&b[..cut]).unwrap().2.len(), 0);
            } else {
                assert!(read(&b[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert!(read(&[0u8; 24]).is_err());
    }
}
