//! Lines → a request body: timestamps at the wanted precision, gzip if asked.

use std::io::Write;

use std::path::PathBuf;

use super::Precision;

/// Joins lines into a body at the wanted precision, gzip-compressed if asked.
pub fn encode(lines: &[String], precision: Precision, gzip: bool) -> bytes::Bytes {
    let mut text = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        if precision == Precision::Ns {
            text.extend_from_slice(l.as_bytes());
        } else {
            // The encoder ends every line with its timestamp in ns.
            match l
                .rsplit_once(' ')
                .and_then(|(h, t)| Some((h, t.parse::<i64>().ok()?)))
            {
                Some((head, ns)) => {
                    text.extend_from_slice(head.as_bytes());
                    text.push(b' ');
                    let mut b = itoa::Buffer::new();
                    text.extend_from_slice(b.format(ns.div_euclid(precision.divisor())).as_bytes());
                }
                None => text.extend_from_slice(l.as_bytes()),
            }
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
            "m,t=a f=1 1700000000123000000".to_string(),
            "m f=\"x y\" -1500000".to_string(),
        ];
        let b = encode(&lines, Precision::Ms, false);
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            "m,t=a f=1 1700000000123\nm f=\"x y\" -2\n"
        );
        let b = encode(&lines, Precision::Ns, false);
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            format!("{}\n{}\n", lines[0], lines[1])
        );
    }

    #[test]
    fn gzip_bodies_decompress_to_the_lines() {
        use std::io::Read;
        let lines: Vec<String> = (0..100).map(|i| format!("m f={i} {i}")).collect();
        let b = encode(&lines, Precision::Ns, true);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&b[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out.lines().count(), 100);
        assert_eq!(out.lines().nth(7), Some("m f=7 7"));
    }
}
