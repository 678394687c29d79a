//! InfluxDB line protocol, encoded exactly:
//!
//! - measurement: `\`, `,`, ` ` escaped with `\`;
//! - tag keys, tag values, field keys: `\`, `,`, `=`, ` ` escaped with `\`;
//! - string field values: in double quotes, `\` and `"` escaped with `\`;
//! - line breaks (`\n`, `\r`) cannot appear raw anywhere in a line: they are written as the two
//!   characters `\n` / `\r` (as Telegraf does), so one point is always one line;
//! - numbers are floats in their shortest round-trip form (`2`, `2.5`: never `2i`, so one device
//!   sending 2 and another 2.5 do not conflict); booleans `true`/`false`;
//! - tags and fields sorted by key; timestamp in nanoseconds;
//! - a measurement, tag key, tag value or field key cannot end with a backslash in line
//!   protocol: trailing backslashes are left out (a tag left empty is omitted, a field key left
//!   empty is written `_`);
//! - a line starting with `#` is a comment (and `\#` is no escape): a measurement's leading `#`s
//!   are left out (an empty measurement is written `_`).
//!
//! NaN and infinite values cannot be written; [`Line`] leaves them out and names them in `skipped`.

/// Writes one line of line protocol. The caller adds tags and fields **sorted by key** (the
/// influx node sorts its tag and field lists at load time; `msg` is a sorted map).
///
/// ```
/// use rulechain::lineproto::Line;
/// let mut l = Line::new("telemetry");
/// l.tag("device", "pump 3");
/// l.float("current", 13.1);
/// l.boolean("running", true);
/// assert_eq!(l.finish(1_000).as_deref(), Some("telemetry,device=pump\\ 3 current=13.1,running=true 1000"));
/// ```
#[derive(Debug)]
pub struct Line {
    out: String,
    fields: usize,
    /// Fields left out because they were NaN or infinite.
    pub skipped: Vec<String>,
}

impl Line {
    /// Starts a line with its measurement.
    pub fn new(measurement: &str) -> Self {
        let mut out = String::with_capacity(96);
        // A line that starts with `#` is a comment, and `\#` is not an escape: leading `#`s
        // are left out.
        let measurement = match trim(measurement).trim_start_matches('#') {
            "" => "_",
            m => m,
        };
        escape(&mut out, measurement, false);
        Line {
            out,
            fields: 0,
            skipped: Vec::new(),
        }
    }

    /// Adds a tag (empty keys or values are left out, as InfluxDB cannot store them).
    pub fn tag(&mut self, key: &str, value: &str) {
        debug_assert_eq!(self.fields, 0, "tags come before fields");
        let (key, value) = (trim(key), trim(value));
        if key.is_empty() || value.is_empty() {
            return;
        }
        self.out.push(',');
        escape(&mut self.out, key, true);
        self.out.push('=');
        escape(&mut self.out, value, true);
    }

    fn key(&mut self, key: &str) {
        let key = match trim(key) {
            "" => "_",
            k => k,
        };
        self.out.push(if self.fields == 0 { ' ' } else { ',' });
        self.fields += 1;
        escape(&mut self.out, key, true);
        self.out.push('=');
    }

    /// Adds a float field; a NaN or infinite one is left out and recorded in `skipped`.
    pub fn float(&mut self, key: &str, v: f64) {
        if !v.is_finite() {
            self.skipped.push(key.to_string());
            return;
        }
        self.key(key);
        push_float(&mut self.out, v);
    }

    /// Adds a boolean field.
    pub fn boolean(&mut self, key: &str, v: bool) {
        self.key(key);
        self.out.push_str(if v { "true" } else { "false" });
    }

    /// Adds a string field.
    pub fn string(&mut self, key: &str, v: &str) {
        self.key(key);
        self.out.push('"');
        for c in v.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    /// Ends the line with its timestamp (ns). `None` when it has no field: such a point is not
    /// written.
    pub fn finish(mut self, ts_ns: i64) -> Option<String> {
        if self.fields == 0 {
            return None;
        }
        self.out.push(' ');
        self.out.push_str(itoa::Buffer::new().format(ts_ns));
        Some(self.out)
    }
}

/// A point on its way to InfluxDB: its line (ending with its timestamp in ns, as
/// [`Line::finish`] writes it) and that timestamp as a number, so a writer at another precision
/// rewrites the timestamp without reading it back from the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The whole line, timestamp (ns) last.
    pub line: String,
    /// Its timestamp (ns).
    pub ts_ns: i64,
}

impl Point {
    /// A point from a line [`Line::finish`] wrote with `ts_ns`.
    pub fn new(line: String, ts_ns: i64) -> Point {
        Point { line, ts_ns }
    }

    /// The line without its timestamp (and the space before it).
    pub fn head(&self) -> &str {
        let digits = itoa::Buffer::new().format(self.ts_ns).len();
        self.line
            .get(..self.line.len().saturating_sub(digits + 1))
            .unwrap_or(&self.line)
    }
}

/// Line protocol cannot end a measurement, tag key, tag value or field key with a backslash
/// (the parser reads it as escaping what follows): trailing backslashes are left out.
fn trim(s: &str) -> &str {
    s.trim_end_matches('\\')
}

/// Escapes `s` for a measurement (`equals` false) or a tag/field key or tag value (`equals`: `=`
/// is escaped too).
fn escape(out: &mut String, s: &str, equals: bool) {
    // One table lookup a byte (most names need no escaping): 1 = always escaped, 2 = `=`.
    const SPECIAL: [u8; 256] = {
        let mut t = [0u8; 256];
        t[b'\n' as usize] = 1;
        t[b'\r' as usize] = 1;
        t[b'\\' as usize] = 1;
        t[b',' as usize] = 1;
        t[b' ' as usize] = 1;
        t[b'=' as usize] = 2;
        t
    };
    let mask = if equals { 3 } else { 1 };
    if s.bytes().all(|b| SPECIAL[b as usize] & mask == 0) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            c if c == ',' || c == ' ' || (equals && c == '=') => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
}

/// A finite float in its shortest round-trip form, without a trailing `.0` (`2`, `2.5`).
fn push_float(out: &mut String, f: f64) {
    if f.fract() == 0.0 && f.abs() < 1e16 {
        out.push_str(itoa::Buffer::new().format(f as i64));
    } else {
        // zmij (serde_json's float writer) is two to three times faster than ryu here; it
        // spells a positive exponent `e+16` where ryu wrote `e16`, so lines stay as they were.
        let mut buf = zmij::Buffer::new();
        let s = buf.format_finite(f);
        match s.bytes().position(|b| b == b'+') {
            Some(i) => {
                out.push_str(&s[..i]);
                out.push_str(&s[i + 1..]);
            }
            None => out.push_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_exactly() {
        let mut l = Line::new("my meas,x=1");
        l.tag("device", "pump-3");
        l.tag("site", "a b=c,d");
        l.tag("empty", "");
        l.float("a=b", 2.5);
        l.float("bad", f64::NAN);
        l.string("note", "say \"hi\"\\\nbye");
        l.boolean("ok", true);
        l.float("temp", 2.0);
        let skipped = l.skipped.clone();
        assert_eq!(
            l.finish(1_710_000_000_000_000_000).unwrap(),
            "my\\ meas\\,x=1,device=pump-3,site=a\\ b\\=c\\,d a\\=b=2.5,note=\"say \\\"hi\\\"\\\\\\nbye\",ok=true,temp=2 1710000000000000000"
        );
        assert_eq!(skipped, vec!["bad".to_string()]);
    }

    #[test]
    fn floats_are_shortest_round_trip() {
        for (f, text) in [
            (2.0, "2"),
            (2.5, "2.5"),
            (-0.5, "-0.5"),
            (13.1, "13.1"),
            (1e21, "1e21"),
            (-1.5e300, "-1.5e300"),
            (1e-7, "1e-7"),
            (9.5e15, "9500000000000000"),
            (1.5e16, "1.5e16"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "0"),
        ] {
            let mut s = String::new();
            push_float(&mut s, f);
            assert_eq!(s, text);
            assert_eq!(s.parse::<f64>().unwrap(), f);
        }
    }

    #[test]
    fn a_points_head_is_its_line_without_the_timestamp() {
        for ts in [0, -1_500_000, 1_710_000_000_000_000_000] {
            let mut l = Line::new("m");
            l.float("x", 1.0);
            let p = Point::new(l.finish(ts).unwrap(), ts);
            assert_eq!(p.head(), "m x=1");
        }
    }

    #[test]
    fn no_finite_field_no_point() {
        let mut l = Line::new("m");
        l.float("x", f64::INFINITY);
        assert_eq!(l.skipped, vec!["x".to_string()]);
        assert_eq!(l.finish(0), None);
    }
}
