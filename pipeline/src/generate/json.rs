//! Hand-written JSON: a field-by-field object writer into a reused byte buffer, with
//! the number, id and timestamp formatting it needs. Far faster than building values,
//! and the one place where a bad message's field-level fault is applied.

/// A field-level fault: the field at `path` (`ts`, or `after.role` inside a CDC
/// envelope) is left out or replaced by raw JSON text of the wrong kind.
#[derive(Debug, Clone)]
pub(super) struct Fault {
    pub path: String,
    pub action: FaultAction,
}

#[derive(Debug, Clone)]
pub(super) enum FaultAction {
    Omit,
    Raw(String),
}

/// A CDC row value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
    Str(String),
    Int(i64),
    /// A double written with at most this many decimals.
    F64(f64, u8),
    Bool(bool),
    /// Epoch milliseconds, written as RFC 3339 with `Z`.
    Ts(i64),
    Null,
    /// Left out of the object altogether.
    Missing,
}

/// How an event's `ts` is spelled: the instant plus the format variations the
/// contract allows (0 to 9 fractional digits, `Z` or a numeric offset).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ts {
    pub ms: i64,
    /// Nanoseconds below the millisecond, shown only with more than 3 digits.
    pub sub_ms_ns: u32,
    pub digits: u8,
    /// Minutes east of UTC; `None` writes `Z`.
    pub offset_min: Option<i16>,
}

impl Ts {
    pub(super) fn utc_ms(ms: i64) -> Self {
        Ts { ms, sub_ms_ns: 0, digits: 3, offset_min: None }
    }

    /// The instant as written, to the millisecond (fewer digits truncate it).
    pub(super) fn written_ms(&self) -> i64 {
        match self.digits {
            0 => self.ms - self.ms.rem_euclid(1000),
            1 => self.ms - self.ms.rem_euclid(100),
            2 => self.ms - self.ms.rem_euclid(10),
            _ => self.ms,
        }
    }

    /// Writes `YYYY-MM-DDTHH:MM:SS[.f]Z|±HH:MM` through a stack buffer: this runs for
    /// every event.
    pub(super) fn write(&self, buf: &mut Vec<u8>) {
        let offset_ms = i64::from(self.offset_min.unwrap_or(0)) * 60_000;
        let local = self.ms + offset_ms;
        let in_day = local.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(local.div_euclid(86_400_000));
        let secs = (in_day / 1000) as u32;
        let mut out = *b"0000-00-00T00:00:00.000000000+00:00";
        let digits = |out: &mut [u8], mut v: u32| {
            for b in out.iter_mut().rev() {
                *b = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        digits(&mut out[0..4], y.clamp(0, 9999) as u32);
        digits(&mut out[5..7], m);
        digits(&mut out[8..10], d);
        digits(&mut out[11..13], secs / 3600);
        digits(&mut out[14..16], secs / 60 % 60);
        digits(&mut out[17..19], secs % 60);
        let mut len = 19;
        if self.digits > 0 {
            let n = usize::from(self.digits.min(9));
            let nanos = (in_day % 1000) as u32 * 1_000_000 + self.sub_ms_ns;
            digits(&mut out[20..20 + n], nanos / 10u32.pow(9 - n as u32));
            len = 20 + n;
        }
        match self.offset_min {
            None => {
                out[len] = b'Z';
                len += 1;
            }
            Some(off) => {
                out[len] = if off < 0 { b'-' } else { b'+' };
                let off = u32::from(off.unsigned_abs());
                digits(&mut out[len + 1..len + 3], off / 60);
                out[len + 3] = b':';
                digits(&mut out[len + 4..len + 6], off % 60);
                len += 6;
            }
        }
        buf.extend_from_slice(&out[..len]);
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[inline]
pub(super) fn write_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

#[inline]
pub(super) fn write_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    write_u64(buf, v.unsigned_abs());
}

/// An id like `u-17`, in one copy.
#[inline]
pub(super) fn write_id(buf: &mut Vec<u8>, prefix: &str, n: u64) {
    let mut tmp = [0u8; 40];
    let p = prefix.len().min(20);
    tmp[..p].copy_from_slice(&prefix.as_bytes()[..p]);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = p + digits.len() - i;
    tmp[p..len].copy_from_slice(&digits[i..]);
    buf.extend_from_slice(&tmp[..len]);
}

/// A double with at most `decimals` decimals, trailing zeros dropped (`12.5`, `40`):
/// integral values come out as JSON integers, which a double field must accept.
#[inline]
pub(super) fn write_f64(buf: &mut Vec<u8>, x: f64, decimals: u8) {
    let x = if x.is_finite() { x } else { 0.0 };
    let mut width = u32::from(decimals.min(9));
    let scale = 10u64.pow(width);
    let scaled = (x.abs() * scale as f64).round() as u64;
    let mut out = [0u8; 40];
    let mut i = out.len();
    let mut frac = scaled % scale;
    while width > 0 && frac.is_multiple_of(10) {
        frac /= 10;
        width -= 1;
    }
    for _ in 0..width {
        i -= 1;
        out[i] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    if width > 0 {
        i -= 1;
        out[i] = b'.';
    }
    let mut int = scaled / scale;
    loop {
        i -= 1;
        out[i] = b'0' + (int % 10) as u8;
        int /= 10;
        if int == 0 {
            break;
        }
    }
    if x < 0.0 && scaled != 0 {
        i -= 1;
        out[i] = b'-';
    }
    buf.extend_from_slice(&out[i..]);
}

/// Two lowercase hex digits per byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    pairs
};

/// A 128-bit id as a version-4 UUID string (without quotes).
#[inline]
pub(super) fn write_uuid(buf: &mut Vec<u8>, id: u128) {
    let id = (id & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let bytes = id.to_be_bytes();
    let mut out = [b'-'; 36];
    let mut pos = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            pos += 1;
        }
        out[pos..pos + 2].copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
        pos += 2;
    }
    buf.extend_from_slice(&out);
}

/// A JSON string literal; only quotes, backslashes and control characters need escaping.
#[inline]
pub(super) fn write_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    // A fold without early exit: LLVM vectorises it, and most strings are clean.
    let needs_escape = s.bytes().fold(false, |acc, b| acc | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escape {
        buf.extend_from_slice(s.as_bytes());
    } else {
        for c in s.chars() {
            match c {
                '"' => buf.extend_from_slice(b"\\\""),
                '\\' => buf.extend_from_slice(b"\\\\"),
                '\n' => buf.extend_from_slice(b"\\n"),
                '\t' => buf.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x20 => {
                    buf.extend_from_slice(b"\\u00");
                    buf.push(b"0123456789abcdef"[(c as usize) >> 4]);
                    buf.push(b"0123456789abcdef"[(c as usize) & 0xf]);
                }
                c => {
                    let mut tmp = [0u8; 4];
                    buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
                }
            }
        }
    }
    buf.push(b'"');
}

/// Writes one JSON object field by field. Every field goes through [`Obj::key`], which
/// applies the message's fault, if any, when it meets the faulted field.
pub(super) struct Obj<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
    fault: Option<&'a Fault>,
    /// Path of this object inside the message: `""` at the top, `"after."` in a CDC row.
    prefix: &'static str,
    ts: Ts,
    applied: bool,
    /// Where the event time's text starts, so it can be re-spelt in place.
    ts_at: Option<usize>,
}

/// What [`Obj::finish`] reports about the written object.
pub(super) struct Written {
    pub fault_applied: bool,
    pub ts_at: Option<usize>,
}

impl<'a> Obj<'a> {
    pub(super) fn new(buf: &'a mut Vec<u8>, fault: Option<&'a Fault>, ts: Ts) -> Self {
        buf.push(b'{');
        Obj { buf, first: true, fault, prefix: "", ts, applied: false, ts_at: None }
    }

    /// Closes the object after the `extra` fields (raw `"name":value` text, unknown to
    /// the schema).
    pub(super) fn finish(self, extra: Option<&str>) -> Written {
        if let Some(extra) = extra {
            if !self.first {
                self.buf.push(b',');
            }
            self.buf.extend_from_slice(extra.as_bytes());
        }
        self.buf.push(b'}');
        Written { fault_applied: self.applied, ts_at: self.ts_at }
    }

    #[inline]
    fn is_faulted(&self, name: &str) -> bool {
        self.fault.is_some_and(|f| {
            f.path.len() == self.prefix.len() + name.len()
                && f.path.starts_with(self.prefix)
                && f.path.ends_with(name)
        })
    }

    #[inline]
    fn name(&mut self, name: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(b'"');
        self.buf.push(b':');
    }

    /// Writes `"name":` and returns true when the caller should write the value;
    /// a faulted field is instead left out or given its wrong value here.
    #[inline]
    fn key(&mut self, name: &str) -> bool {
        if let Some(fault) = self.fault.filter(|_| self.is_faulted(name)) {
            self.applied = true;
            if let FaultAction::Raw(raw) = &fault.action {
                self.name(name);
                self.buf.extend_from_slice(raw.as_bytes());
            }
            return false;
        }
        self.name(name);
        true
    }

    #[inline]
    pub(super) fn str(&mut self, name: &str, v: &str) {
        if self.key(name) {
            write_str(self.buf, v);
        }
    }

    /// An id like `u-17`.
    #[inline]
    pub(super) fn id(&mut self, name: &str, prefix: &str, n: u64) {
        if self.key(name) {
            self.buf.push(b'"');
            write_id(self.buf, prefix, n);
            self.buf.push(b'"');
        }
    }

    #[inline]
    pub(super) fn uuid(&mut self, name: &str, id: u128) {
        if self.key(name) {
            self.buf.push(b'"');
            write_uuid(self.buf, id);
            self.buf.push(b'"');
        }
    }

    #[inline]
    pub(super) fn int(&mut self, name: &str, v: i64) {
        if self.key(name) {
            write_i64(self.buf, v);
        }
    }

    #[inline]
    pub(super) fn f64(&mut self, name: &str, v: f64, decimals: u8) {
        if self.key(name) {
            write_f64(self.buf, v, decimals);
        }
    }

    #[inline]
    pub(super) fn bool(&mut self, name: &str, v: bool) {
        if self.key(name) {
            self.buf.extend_from_slice(if v { b"true" } else { b"false" });
        }
    }

    /// An optional field without a value: `null`, or left out when `omit`.
    #[inline]
    pub(super) fn none(&mut self, name: &str, omit: bool) {
        if omit {
            if self.is_faulted(name) {
                self.key(name);
            }
        } else if self.key(name) {
            self.buf.extend_from_slice(b"null");
        }
    }

    /// The message's event time, as prepared by the output.
    #[inline]
    pub(super) fn ts(&mut self, name: &str) {
        if self.key(name) {
            self.buf.push(b'"');
            self.ts_at = Some(self.buf.len());
            self.ts.write(self.buf);
            self.buf.push(b'"');
        }
    }

    #[inline]
    pub(super) fn val(&mut self, name: &str, v: &Val) {
        match v {
            Val::Str(s) => self.str(name, s),
            Val::Int(i) => self.int(name, *i),
            Val::F64(x, decimals) => self.f64(name, *x, *decimals),
            Val::Bool(b) => self.bool(name, *b),
            Val::Ts(ms) => {
                if self.key(name) {
                    self.buf.push(b'"');
                    Ts::utc_ms(*ms).write(self.buf);
                    self.buf.push(b'"');
                }
            }
            Val::Null => self.none(name, false),
            Val::Missing => self.none(name, true),
        }
    }

    /// A nested object whose fields are addressed as `prefix` + name by the fault.
    pub(super) fn object(&mut self, name: &str, prefix: &'static str, write: impl FnOnce(&mut Obj<'_>)) {
        if self.key(name) {
            let mut inner = Obj::new(self.buf, self.fault, self.ts);
            inner.prefix = prefix;
            write(&mut inner);
            self.applied |= inner.finish(None).fault_applied;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts_text(ts: Ts) -> String {
        let mut buf = Vec::new();
        ts.write(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn timestamps_in_every_spelling() {
        // 2026-03-01T09:15:02.125Z
        let ms = 1_772_356_502_125;
        let ts = |digits, sub_ms_ns, offset_min| Ts { ms, sub_ms_ns, digits, offset_min };
        assert_eq!(ts_text(ts(3, 0, None)), "2026-03-01T09:15:02.125Z");
        assert_eq!(ts_text(ts(0, 0, None)), "2026-03-01T09:15:02Z");
        assert_eq!(ts_text(ts(6, 456_789, None)), "2026-03-01T09:15:02.125456Z");
        assert_eq!(ts_text(ts(9, 456_789, None)), "2026-03-01T09:15:02.125456789Z");
        assert_eq!(ts_text(ts(3, 0, Some(120))), "2026-03-01T11:15:02.125+02:00");
        assert_eq!(ts_text(ts(3, 0, Some(-570))), "2026-02-28T23:45:02.125-09:30");
        assert_eq!(ts(0, 0, None).written_ms(), ms - 125);
        let parsed = chrono::DateTime::parse_from_rfc3339("2026-03-01T11:15:02.125+02:00").unwrap();
        assert_eq!(parsed.timestamp_millis(), ms);
    }

    #[test]
    fn numbers_and_ids() {
        let mut buf = Vec::new();
        write_f64(&mut buf, 41.2370, 3);
        buf.push(b' ');
        write_f64(&mut buf, 12.0, 3);
        buf.push(b' ');
        write_f64(&mut buf, -0.05, 2);
        buf.push(b' ');
        write_f64(&mut buf, 0.007, 3);
        buf.push(b' ');
        write_uuid(&mut buf, u128::MAX);
        buf.push(b' ');
        write_str(&mut buf, "Ana \"Nana\" \\ Łukasz\u{1}");
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "41.237 12 -0.05 0.007 ffffffff-ffff-4fff-bfff-ffffffffffff \"Ana \\\"Nana\\\" \\\\ Łukasz\\u0001\""
        );
    }

    #[test]
    fn faults_apply_to_their_field_only() {
        let fault = Fault { path: "after.role".into(), action: FaultAction::Raw("7".into()) };
        let mut buf = Vec::new();
        let mut o = Obj::new(&mut buf, Some(&fault), Ts::utc_ms(0));
        o.str("role", "learner");
        o.object("after", "after.", |o| {
            o.str("role", "learner");
            o.none("locale", true);
        });
        assert!(o.finish(Some("\"client\":\"web\"")).fault_applied);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            r#"{"role":"learner","after":{"role":7},"client":"web"}"#
        );
    }
}
