//! Lines → a request body: timestamps at the wanted precision, gzip if asked.

use std::io::Write;

use std::path::PathBuf;

use crate::config::settings::Precision;
use crate::lineproto::Point;

/// Joins points into a body at the wanted precision, gzip-compressed if asked.
pub fn encode(points: &[Point], precision: Precision, gzip: bool) -> bytes::Bytes {
    let mut text = Vec::with_capacity(points.iter().map(|p| p.line.len() + 1).sum());
    for p in points {
        if precision == Precision::Ns {
            text.extend_from_slice(p.line.as_bytes());
        } else {
            // The line's timestamp is in ns: its head, then the point's time at the precision.
            text.extend_from_slice(p.head().as_bytes());
            text.push(b' ');
            let mut b = itoa::Buffer::new();
            text.extend_from_slice(b.format(p.ts_ns.div_euclid(precision.divisor())).as_bytes());
        }
        text.push(b'\n');
    }
    if !gzip {
        return text.into();
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(text.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = gz.write_all(&text);
    gz.finish().unwrap_or_default().into()
}

/// A request body: one batch.
pub(super) struct Batch {
    pub(super) body: bytes::Bytes,
    pub(super) gzip: bool,
    pub(super) points: usize,
    /// The spool file it came from (deleted once the batch is done).
    pub(super) file: Option<PathBuf>,
    /// Its first line (shortened), for the log when the server refuses the batch.
    pub(super) first: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_rewrites_the_trailing_timestamp() {
        let lines = vec![
            Point::new(
                "m,t=a f=1 1700000000123000000".into(),
                1_700_000_000_123_000_000,
            ),
            Point::new("m f=\"x y\" -1500000".into(), -1_500_000),
        ];
        let b = encode(&lines, Precision::Ms, false);
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            "m,t=a f=1 1700000000123\nm f=\"x y\" -2\n"
        );
        let b = encode(&lines, Precision::Ns, false);
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            format!("{}\n{}\n", lines[0].line, lines[1].line)
        );
    }

    #[test]
    fn gzip_bodies_decompress_to_the_lines() {
        use std::io::Read;
        let lines: Vec<Point> = (0..100)
            .map(|i| Point::new(format!("m f={i} {i}"), i))
            .collect();
        let b = encode(&lines, Precision::Ns, true);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&b[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out.lines().count(), 100);
        assert_eq!(out.lines().nth(7), Some("m f=7 7"));
    }
}
