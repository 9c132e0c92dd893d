//! `Content-Encoding` of uploaded metadata: Nix 2.32+ compresses `.narinfo`, `.ls` and `log/`
//! bodies when told to (`narinfo-compression=br`, `ls-compression=xz`, `log-compression=zstd`).
//!
//! The cache stores the plain bytes, exactly what `nix copy --to file://` writes: every client
//! version can then read them, and nothing is ever served with a `Content-Encoding`. The
//! decoders are pure Rust and stream: the caller limits how many decoded bytes it reads, so a
//! decompression bomb costs no more than that limit.

use std::io::{self, Read};

/// A body encoding a Nix client may send on a PUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No header, `none` (Nix's name) or `identity` (HTTP's).
    Plain,
    Brotli,
    Xz,
    Zstd,
    Gzip,
    Bzip2,
}

/// Largest window a zstd frame may ask for (Nix's levels use at most 8 MiB; `--long` 128 MiB
/// is not used for metadata); a frame asking for more is refused instead of allocating.
const MAX_ZSTD_WINDOW: u64 = 64 << 20;
/// Largest xz decoder memory in KiB (preset 9 needs 65 MiB).
const MAX_XZ_MEMORY_KIB: u32 = 80 << 10;

impl Encoding {
    /// Parses a `Content-Encoding` value; `Err` carries the name we do not decode (415).
    pub fn parse(header: Option<&str>) -> Result<Encoding, String> {
        let Some(value) = header else {
            return Ok(Encoding::Plain);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "none" | "identity" => Ok(Encoding::Plain),
            "br" => Ok(Encoding::Brotli),
            "xz" => Ok(Encoding::Xz),
            "zstd" => Ok(Encoding::Zstd),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "bzip2" => Ok(Encoding::Bzip2),
            _ => Err(value.to_string()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Plain => "none",
            Encoding::Brotli => "br",
            Encoding::Xz => "xz",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
            Encoding::Bzip2 => "bzip2",
        }
    }

    /// A reader of the decoded bytes of `body`. A malformed stream reads as an
    /// [`io::ErrorKind::InvalidData`] error naming the encoding; a failing `body` (the client
    /// went away) keeps its own error.
    pub fn decoder<'a>(self, body: &'a mut dyn Read) -> io::Result<Box<dyn Read + 'a>> {
        let inner: Box<dyn Read + 'a> = match self {
            Encoding::Plain => return Ok(Box::new(body)),
            Encoding::Brotli => Box::new(brotli_decompressor::Decompressor::new(body, 64 << 10)),
            Encoding::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
                body,
                true,
                MAX_XZ_MEMORY_KIB,
            )),
            Encoding::Zstd => Box::new(
                ruzstd::decoding::StreamingDecoder::new_with_max_window_size(body, MAX_ZSTD_WINDOW)
                    .map_err(|e| invalid(self, &e))?,
            ),
            Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
            Encoding::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(body)),
        };
        Ok(Box::new(Decoded {
            inner,
            encoding: self,
        }))
    }
}

/// Marks decoder errors as the client's fault (400), unless the connection itself failed.
struct Decoded<'a> {
    inner: Box<dyn Read + 'a>,
    encoding: Encoding,
}

impl Read for Decoded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::TimedOut
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted => e,
            _ => invalid(self.encoding, &e),
        })
    }
}

fn invalid(encoding: Encoding, e: &dyn std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "body is not valid {} (Content-Encoding: {}): {e}",
            encoding.name(),
            encoding.name()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] =
        b"StorePath: /nix/store/4q1c78ism9fv0myqldmih68c6yjmpi2d-x\nURL: nar/x.nar\n";

    /// `TEXT` compressed with each encoding, by independent encoders.
    fn compressed(encoding: Encoding, plain: &[u8]) -> Vec<u8> {
        match encoding {
            Encoding::Plain => plain.to_vec(),
            Encoding::Brotli => {
                let mut out = Vec::new();
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(plain).unwrap();
                drop(w);
                out
            }
            Encoding::Xz => {
                let mut w = lzma_rust2::XzWriter::new(Vec::new(), Default::default()).unwrap();
                w.write_all(plain).unwrap();
                w.finish().unwrap()
            }
            Encoding::Zstd => ruzstd::encoding::compress_to_vec(
                plain,
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
            Encoding::Gzip => {
                let mut w =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                w.write_all(plain).unwrap();
                w.finish().unwrap()
            }
            Encoding::Bzip2 => {
                let mut w = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
                w.write_all(plain).unwrap();
                w.finish().unwrap()
            }
        }
    }

    const ALL: [Encoding; 6] = [
        Encoding::Plain,
        Encoding::Brotli,
        Encoding::Xz,
        Encoding::Zstd,
        Encoding::Gzip,
        Encoding::Bzip2,
    ];

    #[test]
    fn names_nix_sends() {
        for (name, want) in [
            ("none", Encoding::Plain),
            ("identity", Encoding::Plain),
            ("br", Encoding::Brotli),
            ("xz", Encoding::Xz),
            ("ZSTD", Encoding::Zstd),
            ("gzip", Encoding::Gzip),
            ("bzip2", Encoding::Bzip2),
        ] {
            assert_eq!(Encoding::parse(Some(name)), Ok(want), "{name}");
        }
        assert_eq!(Encoding::parse(None), Ok(Encoding::Plain));
        assert_eq!(Encoding::parse(Some("lz4")), Err("lz4".to_string()));
        assert!(Encoding::parse(Some("compress")).is_err());
    }

    #[test]
    fn every_encoding_decodes_to_the_plain_bytes() {
        for encoding in ALL {
            let body = compressed(encoding, TEXT);
            let mut out = Vec::new();
            encoding
                .decoder(&mut &body[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, TEXT, "{encoding:?}");
        }
    }

    #[test]
    fn garbage_is_invalid_data() {
        for encoding in ALL.into_iter().skip(1) {
            let mut body = compressed(encoding, TEXT);
            let mid = body.len() / 2;
            body[mid..].iter_mut().for_each(|b| *b ^= 0x5a);
            body.truncate(body.len() - 3);
            let mut out = Vec::new();
            let e = match encoding.decoder(&mut &body[..]) {
                Ok(mut r) => r.read_to_end(&mut out).unwrap_err(),
                Err(e) => e,
            };
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{encoding:?}: {e}");
            assert!(e.to_string().contains(encoding.name()), "{e}");
        }
    }

    #[test]
    fn a_bomb_is_read_only_as_far_as_the_caller_asks() {
        let zeros = vec![0u8; 2 << 20];
        for encoding in ALL.into_iter().skip(1) {
            let body = compressed(encoding, &zeros);
            assert!(body.len() < 1 << 20, "{encoding:?}: {}", body.len());
            let mut out = Vec::new();
            let mut wire = &body[..];
            let r = encoding.decoder(&mut wire).unwrap();
            let n = r.take(512 << 10).read_to_end(&mut out).unwrap();
            assert_eq!(n, 512 << 10, "{encoding:?}");
        }
    }
}
