//! Back pressure, Exchange's model: the relay watches the free disk space under `SpoolDir`,
//! its own resident memory and the number of queued messages; each is Normal, Medium or
//! High with hysteresis, and the worst of them decides what new transactions get
//! (`RelayBackend::mail`): under Medium, `452 4.3.1` for everyone but OnPremises senders;
//! under High, for everyone. Delivery is never held back, so the pressure can drain.
//!
//! The state machine ([`Levels::next`]) is pure; [`monitor`] samples once a second and
//! feeds it, [`Pressure`] is what the sessions, `/metrics` and `/api/status` read.

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::Control;
use crate::policy::{PressureThresholds, Threshold};
use crate::queue::manager::QueueHandle;

/// How often the resources are sampled (Exchange samples every 2 s; memory can grow fast).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Normal = 0,
    Medium = 1,
    High = 2,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "Normal",
            Level::Medium => "Medium",
            Level::High => "High",
        }
    }

    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Normal,
            1 => Level::Medium,
            _ => Level::High,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Disk,
    Memory,
    Queue,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Disk, Resource::Memory, Resource::Queue];

    /// The `resource` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Resource::Disk => "disk",
            Resource::Memory => "memory",
            Resource::Queue => "queue",
        }
    }

    /// What is measured, for the log, the trace and `/api/status`.
    pub fn measure(self) -> &'static str {
        match self {
            Resource::Disk => "free disk space under SpoolDir (bytes)",
            Resource::Memory => "resident memory of the relay (bytes)",
            Resource::Queue => "queued messages",
        }
    }

    fn key_prefix(self) -> &'static str {
        match self {
            Resource::Disk => "DiskSpace",
            Resource::Memory => "Memory",
            Resource::Queue => "QueueLength",
        }
    }

    fn lower_is_worse(self) -> bool {
        self == Resource::Disk
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One resource's thresholds resolved to numbers (percentages applied to the whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub high: Option<u64>,
    pub medium: Option<u64>,
    pub normal: u64,
    /// Free disk space: a lower value is worse.
    pub lower_is_worse: bool,
}

impl Levels {
    /// The thresholds of `t` against `whole` (the size a percentage is of; `None` when it
    /// could not be read, which turns percentage levels off). `None`: the resource is off.
    pub fn resolve(
        t: &PressureThresholds,
        whole: Option<u64>,
        lower_is_worse: bool,
    ) -> Option<Levels> {
        let abs = |t: Threshold| match t {
            Threshold::Off => None,
            Threshold::Absolute(a) => Some(a),
            Threshold::Percent(p) => whole.map(|w| (w as f64 * p / 100.0) as u64),
        };
        let (high, medium) = (abs(t.high), abs(t.medium));
        if high.is_none() && medium.is_none() {
            return None;
        }
        Some(Levels {
            high,
            medium,
            normal: abs(t.normal).unwrap_or(if lower_is_worse { u64::MAX } else { 0 }),
            lower_is_worse,
        })
    }

    /// `value` is at or past threshold `t` (toward worse).
    fn reaches(&self, value: u64, t: u64) -> bool {
        if self.lower_is_worse {
            value <= t
        } else {
            value >= t
        }
    }

    /// `value` is back at or on the good side of `t`.
    fn back_to(&self, value: u64, t: u64) -> bool {
        if self.lower_is_worse {
            value >= t
        } else {
            value <= t
        }
    }

    /// The level after observing `value` in `current`: up as soon as a threshold is
    /// reached; down only once back at the lower level's threshold (High steps down to
    /// Medium at the Medium threshold, anything to Normal at the Normal threshold), so a
    /// value hovering around one threshold does not flap.
    pub fn next(&self, current: Level, value: u64) -> Level {
        let at_high = self.high.is_some_and(|h| self.reaches(value, h));
        let at_medium = self.medium.is_some_and(|m| self.reaches(value, m));
        if at_high {
            return Level::High;
        }
        if self.back_to(value, self.normal) {
            return Level::Normal;
        }
        match current {
            // Back at the Medium threshold: one step down (without a Medium level, High
            // lasts until the Normal threshold).
            Level::High => match self.medium {
                Some(m) if self.back_to(value, m) => Level::Medium,
                _ => Level::High,
            },
            Level::Medium => Level::Medium,
            Level::Normal if at_medium => Level::Medium,
            Level::Normal => Level::Normal,
        }
    }

    /// The threshold whose crossing moved a resource from `from` to `to`.
    fn crossed(&self, from: Level, to: Level) -> Option<u64> {
        match (from < to, to) {
            (true, Level::High) => self.high,
            (true, _) => self.medium,
            (false, Level::Medium) => self.medium,
            (false, _) => Some(self.normal),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Meter {
    value: Option<u64>,
    levels: Option<Levels>,
    level: Option<Level>,
}

/// The pressure of every resource, shared by the monitor (writer) and the sessions, the
/// admin API (readers).
pub struct Pressure {
    /// The worst level, read by every MAIL FROM without a lock.
    overall: AtomicU8,
    meters: Mutex<[Meter; 3]>,
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure {
            overall: AtomicU8::new(Level::Normal as u8),
            meters: Mutex::new(Default::default()),
        }
    }
}

impl Pressure {
    pub fn level(&self) -> Level {
        Level::from_u8(self.overall.load(Ordering::Acquire))
    }

    /// Records a sample of `resource` and moves its level; answers the transition when the
    /// level changed. `levels: None` (the resource is off) or `value: None` (it could not
    /// be read) leave it Normal.
    pub fn observe(
        &self,
        resource: Resource,
        levels: Option<Levels>,
        value: Option<u64>,
    ) -> Option<(Level, Level)> {
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        let m = &mut meters[resource.index()];
        let from = m.level.unwrap_or(Level::Normal);
        let to = match (levels, value) {
            (Some(l), Some(v)) => l.next(from, v),
            _ => Level::Normal,
        };
        m.value = value;
        m.levels = levels;
        m.level = Some(to);
        let overall = meters
            .iter()
            .map(|m| m.level.unwrap_or(Level::Normal))
            .max()
            .unwrap_or(Level::Normal);
        self.overall.store(overall as u8, Ordering::Release);
        (from != to).then_some((from, to))
    }

    /// Why the relay is under pressure: each resource not Normal, with its value and the
    /// threshold of its level (empty when Normal).
    pub fn reason(&self) -> String {
        let meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        Resource::ALL
            .iter()
            .filter_map(|&r| {
                let m = &meters[r.index()];
                let level = m.level.filter(|l| *l != Level::Normal)?;
                let levels = m.levels?;
                let threshold = if level == Level::High {
                    levels.high
                } else {
                    levels.medium
                };
                Some(format!(
                    "{} {}: {} {} (threshold {}{}Threshold {})",
                    r.label(),
                    level.as_str(),
                    r.measure(),
                    m.value.unwrap_or_default(),
                    r.key_prefix(),
                    level.as_str(),
                    threshold.unwrap_or_default()
                ))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Sets `connector_relay_back_pressure_state{resource}` (0 Normal, 1 Medium, 2 High)
    /// and `_value{resource}` from the last sample. Called when `/metrics` is scraped, as
    /// the other gauges of the admin API, so that the scrape shows this relay's values.
    pub fn set_gauges(&self) {
        let meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        for r in Resource::ALL {
            let m = &meters[r.index()];
            let level = m.level.unwrap_or(Level::Normal);
            metrics::gauge!("connector_relay_back_pressure_state", "resource" => r.label())
                .set(level as u8 as f64);
            if let Some(v) = m.value {
                metrics::gauge!("connector_relay_back_pressure_value", "resource" => r.label())
                    .set(v as f64);
            }
        }
    }

    /// `/api/status` `BackPressure`.
    pub fn status(&self) -> Value {
        let meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        let resources: Vec<Value> = Resource::ALL
            .iter()
            .map(|&r| {
                let m = &meters[r.index()];
                json!({
                    "Resource": r.label(),
                    "Measure": r.measure(),
                    "State": m.level.unwrap_or(Level::Normal).as_str(),
                    "Enabled": m.levels.is_some(),
                    "Value": m.value,
                    "HighThreshold": m.levels.and_then(|l| l.high),
                    "MediumThreshold": m.levels.and_then(|l| l.medium),
                    "NormalThreshold": m.levels.map(|l| l.normal),
                })
            })
            .collect();
        drop(meters);
        json!({
            "State": self.level().as_str(),
            "Reason": self.reason(),
            "Resources": resources,
        })
    }
}

/// Free and total bytes of the file system holding `dir` (space an unprivileged writer
/// may use: `f_bavail`, as `df` shows it).
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let unit = st.f_frsize as u64;
    Some((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// The relay's resident set size (`/proc/self/statm`, second field, in pages).
fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The memory the relay may use: physical RAM, or the cgroup's limit when lower (a
/// container limit or systemd `MemoryMax` is where the OOM killer strikes first).
fn memory_available_to_relay() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    let ram = (pages > 0).then(|| pages as u64 * page_size());
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok());
    match (ram, cgroup) {
        (Some(r), Some(c)) => Some(r.min(c)),
        (r, c) => r.or(c),
    }
}

/// Hands memory freed by the allocator back to the system, so that the resident size
/// falls once large messages are gone (glibc keeps freed heap pages otherwise, and a
/// relay whose RSS never falls would never leave memory pressure).
fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Samples every [`SAMPLE_EVERY`] until `stop`, with the thresholds of the policy in
/// effect at each sample (so a reload changes them at the next one).
pub(super) async fn monitor(
    pressure: Arc<Pressure>,
    control: Arc<Control>,
    queue: QueueHandle,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let policy = control.policy();
        let b = policy.relay.back_pressure;
        let spool_dir = policy.relay.spool_dir.clone();
        let memory_pressed = pressure.meters.lock().is_ok_and(|m| {
            m[Resource::Memory.index()]
                .level
                .is_some_and(|l| l != Level::Normal)
        });
        let sampled = tokio::task::spawn_blocking(move || {
            if memory_pressed {
                trim_allocator();
            }
            (
                disk_space(&spool_dir),
                resident_memory(),
                memory_available_to_relay(),
            )
        })
        .await;
        let (disk, rss, memory_whole) = sampled.unwrap_or((None, None, None));
        let depth = queue.stats().await.depth as u64;
        // Each resource: its thresholds, the whole a percentage is of, the value now.
        let samples = [
            (
                Resource::Disk,
                &b.disk,
                disk.map(|d| d.1),
                disk.map(|d| d.0),
            ),
            (Resource::Memory, &b.memory, memory_whole, rss),
            (Resource::Queue, &b.queue, None, Some(depth)),
        ];
        for (resource, thresholds, whole, value) in samples {
            let levels = Levels::resolve(thresholds, whole, resource.lower_is_worse());
            if let Some((from, to)) = pressure.observe(resource, levels, value) {
                log_change(resource, from, to, value, levels);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

fn log_change(
    resource: Resource,
    from: Level,
    to: Level,
    value: Option<u64>,
    levels: Option<Levels>,
) {
    let Some(l) = levels else {
        tracing::info!(
            resource = resource.label(),
            from = from.as_str(),
            "back pressure for this resource turned off (its High and Medium thresholds are Unlimited, or a percentage of a size that cannot be read)"
        );
        return;
    };
    let threshold = l.crossed(from, to);
    // Up: the threshold of the level entered; down: the one the value is back at.
    let key = format!("{}{}Threshold", resource.key_prefix(), to.as_str());
    if to > from {
        tracing::warn!(
            resource = resource.label(),
            measure = resource.measure(),
            from = from.as_str(),
            to = to.as_str(),
            value,
            threshold,
            key,
            "back pressure rises: new mail gets 452 4.3.1 ({})",
            if to == Level::High {
                "from every sender"
            } else {
                "except from OnPremises connectors"
            }
        );
    } else {
        tracing::info!(
            resource = resource.label(),
            measure = resource.measure(),
            from = from.as_str(),
            to = to.as_str(),
            value,
            threshold,
            key,
            "back pressure eases"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(normal: u64, medium: Option<u64>, high: Option<u64>) -> Levels {
        Levels {
            high,
            medium,
            normal,
            lower_is_worse: false,
        }
    }

    fn walk(l: &Levels, values: &[u64]) -> Vec<Level> {
        let mut level = Level::Normal;
        values
            .iter()
            .map(|&v| {
                level = l.next(level, v);
                level
            })
            .collect()
    }

    use Level::{High as H, Medium as M, Normal as N};

    #[test]
    fn rises_at_once_and_falls_only_past_the_lower_threshold() {
        let l = queue(2, Some(5), Some(8));
        assert_eq!(
            walk(&l, &[0, 4, 5, 4, 3, 2, 5, 9, 7, 6, 5, 4, 3, 2, 1, 10, 2]),
            [N, N, M, M, M, N, M, H, H, H, M, M, M, N, N, H, N]
        );
    }

    #[test]
    fn free_disk_space_lower_is_worse() {
        let l = Levels {
            high: Some(100),
            medium: Some(200),
            normal: 300,
            lower_is_worse: true,
        };
        assert_eq!(
            walk(&l, &[1000, 250, 200, 250, 299, 300, 90, 150, 200, 250, 301]),
            [N, N, M, M, M, N, H, H, M, M, N]
        );
    }

    #[test]
    fn a_level_turned_off_is_never_entered() {
        let no_high = queue(1, Some(3), None);
        assert_eq!(walk(&no_high, &[3, 1000, 2, 1]), [M, M, M, N]);
        let no_medium = queue(1, None, Some(3));
        assert_eq!(walk(&no_medium, &[2, 3, 2, 1, 2]), [N, H, H, N, N]);
    }

    #[test]
    fn resolve_percentages_and_off() {
        let t = PressureThresholds {
            high: Threshold::Percent(75.0),
            medium: Threshold::Percent(60.0),
            normal: Threshold::Percent(45.0),
        };
        let l = Levels::resolve(&t, Some(1000), false).unwrap();
        assert_eq!((l.high, l.medium, l.normal), (Some(750), Some(600), 450));
        assert_eq!(Levels::resolve(&t, None, false), None, "unknown whole: off");
        let off = PressureThresholds {
            high: Threshold::Off,
            medium: Threshold::Off,
            normal: Threshold::Absolute(1),
        };
        assert_eq!(Levels::resolve(&off, Some(1), false), None);
    }

    #[test]
    fn overall_is_the_worst_and_reason_names_it() {
        let p = Pressure::default();
        let q = queue(2, Some(5), Some(8));
        assert_eq!(p.observe(Resource::Queue, Some(q), Some(6)), Some((N, M)));
        assert_eq!(p.observe(Resource::Memory, None, Some(1 << 30)), None);
        assert_eq!(p.level(), M);
        assert!(
            p.reason().contains(
                "queue Medium: queued messages 6 (threshold QueueLengthMediumThreshold 5)"
            ),
            "{}",
            p.reason()
        );
        assert_eq!(p.observe(Resource::Queue, Some(q), Some(1)), Some((M, N)));
        assert_eq!(p.level(), N);
        assert_eq!(p.reason(), "");
    }

    #[test]
    fn the_sampled_values_are_plausible() {
        let (free, total) = disk_space(Path::new(".")).expect("statvfs");
        assert!(free <= total && total > 0);
        let rss = resident_memory().expect("statm");
        assert!(rss > 1 << 20, "{rss}");
        assert!(memory_available_to_relay().expect("RAM") > rss);
    }
}
