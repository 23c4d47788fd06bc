//! `[Relay]` back-pressure thresholds: `DiskSpace{High,Medium,Normal}Threshold`,
//! `Memory{High,Medium,Normal}Threshold`, `QueueLength{High,Medium,Normal}Threshold`.
//!
//! Only the High key needs writing: Medium and Normal are derived from it (the same factors
//! for a size and a percentage), so one key moves a resource's whole band.

use toml_edit::Item;

use super::reader::{Ctx, Lines, Reader, describe};
use super::units::parse_size;
use crate::policy::{BackPressureSettings, PressureThresholds, Threshold};

/// What a resource's values are.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Free disk space: a size or a percentage of the file system; lower is worse.
    DiskFree,
    /// Memory: a size or a percentage of the memory the relay may use.
    Memory,
    /// A number of messages.
    Count,
}

impl Kind {
    fn lower_is_worse(self) -> bool {
        self == Kind::DiskFree
    }

    /// Medium as a multiple of High, Normal as a multiple of Medium (and of High when
    /// Medium is off): free space must be 2× the High level, then 1.5× Medium (3× High);
    /// memory and queue 80% of High, then 75% of Medium (60% of High).
    fn factors(self) -> (f64, f64, f64) {
        match self {
            Kind::DiskFree => (2.0, 1.5, 3.0),
            Kind::Memory | Kind::Count => (0.8, 0.75, 0.6),
        }
    }

    fn example(self) -> &'static str {
        match self {
            Kind::DiskFree => {
                "a size such as \"1GB\", a percentage such as \"2%\", or \"Unlimited\""
            }
            Kind::Memory => {
                "a size such as \"2GB\", a percentage such as \"75%\", or \"Unlimited\""
            }
            Kind::Count => "a number of messages such as 100000, or \"Unlimited\"",
        }
    }

    /// [`Kind::example`] without the way to turn a level off (for Normal thresholds).
    fn value_example(self) -> &'static str {
        match self {
            Kind::DiskFree => "a size such as \"3GB\" or a percentage such as \"6%\"",
            Kind::Memory => "a size such as \"1GB\" or a percentage such as \"45%\"",
            Kind::Count => "a number of messages such as 60000",
        }
    }
}

pub(super) fn build(ctx: &mut Ctx, r: &mut Reader<'_>) -> BackPressureSettings {
    let defaults = BackPressureSettings::default();
    BackPressureSettings {
        disk: resource(ctx, r, "DiskSpace", Kind::DiskFree, defaults.disk.high),
        memory: resource(ctx, r, "Memory", Kind::Memory, defaults.memory.high),
        queue: resource(ctx, r, "QueueLength", Kind::Count, defaults.queue.high),
    }
}

fn keys(prefix: &str) -> [&'static str; 3] {
    match prefix {
        "DiskSpace" => [
            "DiskSpaceHighThreshold",
            "DiskSpaceMediumThreshold",
            "DiskSpaceNormalThreshold",
        ],
        "Memory" => [
            "MemoryHighThreshold",
            "MemoryMediumThreshold",
            "MemoryNormalThreshold",
        ],
        _ => [
            "QueueLengthHighThreshold",
            "QueueLengthMediumThreshold",
            "QueueLengthNormalThreshold",
        ],
    }
}

fn resource(
    ctx: &mut Ctx,
    r: &mut Reader<'_>,
    prefix: &str,
    kind: Kind,
    default_high: Threshold,
) -> PressureThresholds {
    let [kh, km, kn] = keys(prefix);
    let errors_before = ctx.errors.len();
    let high = threshold(ctx, r, kh, kind, true);
    let medium = threshold(ctx, r, km, kind, true);
    let normal = threshold(ctx, r, kn, kind, false);
    let (medium_of_high, normal_of_medium, normal_of_high) = kind.factors();
    let high = high.unwrap_or(default_high);
    let medium = medium.unwrap_or_else(|| scale(high, medium_of_high));
    // From Medium when it is on (written or derived), so that a Medium written alone
    // brings its Normal along; the defaults come out the same.
    let normal = normal.unwrap_or_else(|| match medium {
        Threshold::Off => scale(high, normal_of_high),
        m => scale(m, normal_of_medium),
    });
    let t = PressureThresholds {
        high,
        medium,
        normal,
    };
    if ctx.errors.len() == errors_before {
        order_rules(ctx, &r.lines, [kh, km, kn], kind, &t);
    }
    t
}

/// `t` times `factor`, of the same kind (`Off` stays off).
fn scale(t: Threshold, factor: f64) -> Threshold {
    match t {
        Threshold::Off => Threshold::Off,
        // Rounded away from the worse side, so that small counts stay in strict order
        // (a Medium of 1 message gets a Normal of 0, not 1).
        Threshold::Absolute(a) if factor < 1.0 => {
            Threshold::Absolute((a as f64 * factor).floor() as u64)
        }
        Threshold::Absolute(a) => Threshold::Absolute((a as f64 * factor).ceil() as u64),
        Threshold::Percent(p) => Threshold::Percent((p * factor).min(100.0)),
    }
}

fn threshold(
    ctx: &mut Ctx,
    r: &mut Reader<'_>,
    key: &'static str,
    kind: Kind,
    may_be_off: bool,
) -> Option<Threshold> {
    let (item, line) = r.item(ctx, key)?;
    match parse(item, kind, may_be_off) {
        Ok(t) => Some(t),
        Err(e) => {
            ctx.error(line, key, e);
            None
        }
    }
}

fn parse(item: &Item, kind: Kind, may_be_off: bool) -> Result<Threshold, String> {
    let off = |what: &str| {
        if may_be_off {
            Ok(Threshold::Off)
        } else {
            Err(format!(
                "cannot be {what}: a Normal threshold is the level where the resource counts as normal again; write {}",
                kind.value_example()
            ))
        }
    };
    if let Some(n) = item.as_integer() {
        return match u64::try_from(n) {
            Err(_) => Err(format!("{n} is negative; expected {}", kind.example())),
            Ok(0) if may_be_off => off("0"),
            Ok(n) => Ok(Threshold::Absolute(n)),
        };
    }
    let Some(s) = item.as_str() else {
        return Err(format!(
            "expected {}, found {}",
            kind.example(),
            describe(item)
        ));
    };
    let text = s.trim();
    if text.eq_ignore_ascii_case("Unlimited") {
        return off("\"Unlimited\"");
    }
    if let Some(number) = text.strip_suffix('%') {
        if kind == Kind::Count {
            return Err(format!(
                "{s:?}: a queue length is a number of messages, not a percentage"
            ));
        }
        let p: f64 = number
            .trim()
            .parse()
            .ok()
            .filter(|p: &f64| p.is_finite() && (0.0..=100.0).contains(p))
            .ok_or_else(|| format!("{s:?} is not a percentage between 0% and 100%"))?;
        if p == 0.0 {
            return if may_be_off {
                off("0%")
            } else {
                Ok(Threshold::Percent(0.0))
            };
        }
        return Ok(Threshold::Percent(p));
    }
    let n = match kind {
        Kind::Count => text
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is not {}", kind.example()))?,
        Kind::DiskFree | Kind::Memory => parse_size(text)?,
    };
    if n == 0 {
        return off("0");
    }
    Ok(Threshold::Absolute(n))
}

/// The thresholds in effect, one line for `connector-relay check` (derived levels
/// included, so that an administrator sees the whole band a High key implies).
pub fn summary(b: &BackPressureSettings) -> String {
    let band = |t: &PressureThresholds, kind: Kind| {
        if t.high == Threshold::Off && t.medium == Threshold::Off {
            return "off".to_string();
        }
        format!(
            "High {}, Medium {}, Normal {}",
            show(t.high, kind),
            show(t.medium, kind),
            show(t.normal, kind)
        )
    };
    format!(
        "back pressure: disk free {}; memory {}; queue messages {}",
        band(&b.disk, Kind::DiskFree),
        band(&b.memory, Kind::Memory),
        band(&b.queue, Kind::Count)
    )
}

/// A comparable value: the number and whether it is a percentage.
fn value(t: Threshold) -> Option<(f64, bool)> {
    match t {
        Threshold::Off => None,
        Threshold::Absolute(a) => Some((a as f64, false)),
        Threshold::Percent(p) => Some((p, true)),
    }
}

fn show(t: Threshold, kind: Kind) -> String {
    match t {
        Threshold::Off => "Unlimited".into(),
        Threshold::Absolute(a) if kind != Kind::Count => size_text(a),
        Threshold::Absolute(a) => a.to_string(),
        Threshold::Percent(p) => format!("\"{p}%\""),
    }
}

/// A size in the largest unit that divides it (`"5GB"`), as an administrator writes it.
fn size_text(bytes: u64) -> String {
    for (unit, shift) in [("TB", 40), ("GB", 30), ("MB", 20), ("KB", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("\"{}{unit}\"", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// High, Medium and Normal must be in order of severity (strictly, or there is no
/// hysteresis) and of one kind (a percentage and a size cannot be ordered before the
/// relay knows the size of the disk or of the memory).
fn order_rules(
    ctx: &mut Ctx,
    lines: &Lines,
    keys: [&'static str; 3],
    kind: Kind,
    t: &PressureThresholds,
) {
    let [kh, km, kn] = keys;
    // The key to blame: the first written of `candidates`, else the first.
    let blame = |candidates: &[&'static str]| -> (&'static str, usize) {
        let key = candidates
            .iter()
            .copied()
            .find(|k| lines.has(k))
            .unwrap_or(candidates[0]);
        (key, lines.of(key))
    };
    let pairs = [
        (t.medium, km, t.high, kh, "Medium", "High"),
        (t.normal, kn, t.medium, km, "Normal", "Medium"),
        (t.normal, kn, t.high, kh, "Normal", "High"),
    ];
    let better = if kind.lower_is_worse() {
        "above"
    } else {
        "below"
    };
    for (lower, lower_key, upper, upper_key, lower_name, upper_name) in pairs {
        let (Some((a, a_pct)), Some((b, b_pct))) = (value(lower), value(upper)) else {
            continue;
        };
        if a_pct != b_pct {
            let (key, line) = blame(&[lower_key, upper_key]);
            ctx.error(
                line,
                key,
                format!(
                    "{lower_key} ({}) and {upper_key} ({}) mix a percentage and an absolute value; write both as sizes or both as percentages",
                    show(lower, kind),
                    show(upper, kind)
                ),
            );
            return;
        }
        let in_order = if kind.lower_is_worse() { a > b } else { a < b };
        if !in_order {
            let (key, line) = blame(&[lower_key, upper_key]);
            ctx.error(
                line,
                key,
                format!(
                    "the {lower_name} level ({lower_key} = {}) must be {better} the {upper_name} level ({upper_key} = {}{})",
                    show(lower, kind),
                    show(upper, kind),
                    if lines.has(upper_key) {
                        String::new()
                    } else if upper_key == kh {
                        ", the default".to_string()
                    } else {
                        format!(", derived from {kh}")
                    }
                ),
            );
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;

    fn load(extra: &str) -> Result<BackPressureSettings, String> {
        let text = format!("[Relay]\nAcceptedDomains = [\"contoso.test\"]\n{extra}\n");
        load_str(&text, Path::new("t.toml"))
            .map(|l| l.policy.relay.back_pressure)
            .map_err(|e| {
                e.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
    }

    #[test]
    fn defaults_and_derivation() {
        assert_eq!(load("").unwrap(), BackPressureSettings::default());
        let b = load("QueueLengthHighThreshold = 1000\nDiskSpaceHighThreshold = \"2%\"").unwrap();
        assert_eq!(b.queue.medium, Threshold::Absolute(800));
        assert_eq!(b.queue.normal, Threshold::Absolute(600));
        assert_eq!(b.disk.medium, Threshold::Percent(4.0));
        assert_eq!(b.disk.normal, Threshold::Percent(6.0));
        let b = load("QueueLengthHighThreshold = \"Unlimited\"").unwrap();
        assert_eq!(b.queue.medium, Threshold::Off, "the whole resource off");
        let b = load("QueueLengthHighThreshold = 0\nQueueLengthMediumThreshold = 400").unwrap();
        assert_eq!(b.queue.high, Threshold::Off);
        assert_eq!(b.queue.normal, Threshold::Absolute(300));
        let b = load("QueueLengthMediumThreshold = 1").unwrap();
        assert_eq!(
            b.queue.normal,
            Threshold::Absolute(0),
            "from Medium, rounded down"
        );
        let b = load("DiskSpaceMediumThreshold = \"5GB\"").unwrap();
        assert_eq!(
            b.disk.normal,
            Threshold::Absolute(15 << 29),
            "1.5 times Medium"
        );
        let b = load("MemoryHighThreshold = \"1GB\"").unwrap();
        assert_eq!(b.memory.high, Threshold::Absolute(1 << 30));
    }

    #[test]
    fn check_line() {
        assert_eq!(
            summary(&load("QueueLengthHighThreshold = \"Unlimited\"").unwrap()),
            "back pressure: disk free High \"1GB\", Medium \"2GB\", Normal \"3GB\"; memory High \"75%\", Medium \"60%\", Normal \"45%\"; queue messages off"
        );
    }

    #[test]
    fn refused_values() {
        let e = load("QueueLengthMediumThreshold = 200000").unwrap_err();
        assert!(
            e.contains("t.toml:3: QueueLengthMediumThreshold: the Medium level"),
            "{e}"
        );
        let e = load("DiskSpaceNormalThreshold = \"1GB\"").unwrap_err();
        assert!(e.contains("must be above the Medium level"), "{e}");
        let e = load("QueueLengthHighThreshold = \"50%\"").unwrap_err();
        assert!(e.contains("not a percentage"), "{e}");
        let e = load("MemoryNormalThreshold = \"Unlimited\"").unwrap_err();
        assert!(e.contains("MemoryNormalThreshold: cannot be"), "{e}");
        let e = load("MemoryHighThreshold = \"120%\"").unwrap_err();
        assert!(e.contains("between 0% and 100%"), "{e}");
        let e = load("MemoryMediumThreshold = \"1GB\"").unwrap_err();
        assert!(e.contains("mix a percentage"), "{e}");
    }
}
