//! Live reload. The configuration in effect is one [`Live`] value in an `ArcSwap`; a reload
//! validates the new file exactly like `check`, builds the next generation (TLS from the
//! certificate files as they are now, inbound policy, backend, delivery engine) and swaps
//! it in whole. Sessions in progress keep the generation they started with; delivery
//! attempts started from now on use the new one. A config that fails validation, or whose
//! certificates cannot be loaded, is refused with its `file:line` errors and the running one
//! stays.
//!
//! Triggers: [`Control::reload`] (`RelayHandle::reload`, SIGHUP, `POST /api/reload`),
//! [`Control::edit`] (the admin API's connector changes), and [`Control::poll`] (every ~2 s:
//! the modification time, size and inode of the config file and of every certificate, key,
//! CA and CRL file it names). One mutex serializes all of them.
//!
//! Listener addresses, directories, the admin listener and token, the DNS servers, the
//! trace store and the connection limits are fixed for the relay's life: a change to them is logged ("restart
//! needed") and the running values stay (they are copied into the new policy, so the
//! policy in effect always says what is in effect).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::certs::{self, CertificateExpiry};
use super::live::{self, Shared, SwapTransport};
use super::{RelayBackend, StartError};
use crate::config::edit::{self, Edit, WriteError};
use crate::config::{ConfigError, Loaded};
use crate::policy::Policy;
use crate::smtp::server::Setup;

/// The configuration in effect.
#[derive(Debug)]
pub struct Live {
    pub policy: Arc<Policy>,
    /// The config text `policy` was loaded from; `None` when the relay was started from a
    /// policy without a file (tests).
    pub text: Option<Arc<str>>,
    /// 1 at start, +1 per accepted reload or change.
    pub generation: u64,
    /// Warnings of the loader for this text.
    pub warnings: Vec<ConfigError>,
    /// Every configured certificate with its expiry (see [`certs`]).
    pub certificates: Vec<CertificateExpiry>,
}

/// What started a reload (logs, `/api/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `RelayHandle::reload` or `POST /api/reload`.
    Request,
    Sighup,
    /// The poll saw the config file or a certificate file change.
    FileChange,
    /// A connector change through the admin API.
    Api,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Request => "request",
            Trigger::Sighup => "SIGHUP",
            Trigger::FileChange => "file change",
            Trigger::Api => "admin API",
        }
    }
}

/// Why a reload or change was refused. The running configuration stays in every case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error("the relay was started without a config file; there is nothing to reload or change")]
    NoConfigFile,
    /// Validation (or loading a certificate) failed: every problem, `file:line: key: reason`.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ConfigError>),
    /// The config file could not be written back (API changes).
    #[error("{0}")]
    Io(String),
    /// The config file changed on disk after the API change read it; writing would have
    /// silently undone that edit. Nothing was written or applied.
    #[error(
        "{0} was changed on disk since this change read it; the change was not applied (nothing was written). The relay reloads the file within a few seconds (or POST /api/reload); then read the connector again and retry"
    )]
    ChangedOnDisk(String),
}

/// An accepted reload.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub generation: u64,
    pub warnings: Vec<ConfigError>,
    /// Keys changed in the file that only a restart applies.
    pub restart_needed: Vec<&'static str>,
}

/// The result of [`Control::edit`].
#[derive(Debug, Clone)]
pub struct EditOutcome {
    pub old_text: String,
    pub new_text: String,
    /// The policy of `new_text` (in effect unless under whatIf).
    pub policy: Arc<Policy>,
    /// `None` under whatIf (nothing was written or applied).
    pub applied: Option<Reloaded>,
    pub warnings: Vec<ConfigError>,
}

/// The outcome of the last reload attempt, for `/api/status`.
#[derive(Debug, Clone)]
pub struct LastReload {
    /// Unix time.
    pub at: u64,
    pub trigger: Trigger,
    /// `Err`: the messages of the refused config (`file:line: key: reason`).
    pub result: Result<u64, Vec<String>>,
    pub restart_needed: Vec<&'static str>,
}

/// A file's fingerprint: modification and change times, size, inode (a replaced file has a
/// new inode even when the rest matches).
pub(super) type Stamp = (i64, i64, i64, i64, u64, u64);

/// Change detection for the poll: per watched file, its fingerprint (`None`: missing).
type Stamps = BTreeMap<PathBuf, Option<Stamp>>;

pub(super) fn stamp(path: &Path) -> Option<Stamp> {
    std::fs::metadata(path).ok().map(|m| stamp_of(&m))
}

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    (
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.size(),
        m.ino(),
    )
}

/// The files of `policy` whose content a reload reads: certificates, keys, CA, CRLs.
fn referenced_files(policy: &Policy) -> Vec<PathBuf> {
    let r = &policy.relay;
    let mut files: Vec<PathBuf> = Vec::new();
    files.extend(r.tls_certificate.iter().cloned());
    files.extend(r.tls_private_key.iter().cloned());
    for c in &r.certificates {
        files.push(c.certificate.clone());
        files.push(c.private_key.clone());
    }
    files.extend(r.trusted_ca_file.iter().cloned());
    files.extend(r.revocation_lists.iter().cloned());
    files
}

fn stamps_of(files: impl IntoIterator<Item = PathBuf>) -> Stamps {
    files
        .into_iter()
        .map(|p| {
            let s = stamp(&p);
            (p, s)
        })
        .collect()
}

struct State {
    /// What the poll compares against: the files as the last reload attempt read them.
    seen: Stamps,
    last: Option<LastReload>,
}

/// A generation built and ready to swap in.
struct Prepared {
    live: Live,
    generation: live::Generation,
    restart_needed: Vec<&'static str>,
    /// The referenced files as they were just before they were read.
    stamps: Stamps,
}

/// Owns the configuration in effect and every way of changing it.
pub struct Control {
    config_path: Option<PathBuf>,
    live: ArcSwap<Live>,
    setup: Arc<ArcSwap<Setup<RelayBackend>>>,
    transport: Arc<SwapTransport>,
    shared: Shared,
    state: Mutex<State>,
}

impl Control {
    pub(super) fn new(
        config_path: Option<PathBuf>,
        live: Live,
        setup: Arc<ArcSwap<Setup<RelayBackend>>>,
        transport: Arc<SwapTransport>,
        shared: Shared,
        config_stamp: Option<Stamp>,
    ) -> Control {
        let mut seen = stamps_of(referenced_files(&live.policy));
        if let Some(p) = &config_path {
            seen.insert(p.clone(), config_stamp);
        }
        Control {
            config_path,
            live: ArcSwap::from_pointee(live),
            setup,
            transport,
            shared,
            state: Mutex::new(State { seen, last: None }),
        }
    }

    /// The configuration in effect now.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Back pressure now (`/api/status`).
    pub fn pressure(&self) -> &Arc<super::pressure::Pressure> {
        &self.shared.pressure
    }

    pub(super) fn queue(&self) -> &crate::queue::manager::QueueHandle {
        &self.shared.queue
    }

    /// The policy in effect now.
    pub fn policy(&self) -> Arc<Policy> {
        self.live.load().policy.clone()
    }

    /// The config file the relay runs from, if it was started from one.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The resolver deliveries use (connector validation from the admin API sends with it).
    pub fn resolver(&self) -> Arc<dyn crate::dns::Resolver> {
        self.shared.resolver.clone()
    }

    /// Moves the messages of a gone node's spool into this relay's spool and queues them
    /// (`queue adopt`; see [`crate::queue::adopt`]). Blocking.
    pub fn adopt_spool(
        &self,
        from: &Path,
    ) -> Result<crate::queue::adopt::Adoption, crate::queue::adopt::AdoptError> {
        let (report, queued) = crate::queue::adopt::adopt(from, &self.shared.spool)?;
        for r in queued {
            self.shared.queue.adopt(r);
        }
        tracing::info!(
            from = %from.display(),
            adopted = report.adopted.len(),
            already_here = report.already_here.len(),
            corrupt = report.corrupt.len(),
            "spool adopted"
        );
        Ok(report)
    }

    /// The message trace the relay writes.
    pub fn events(&self) -> crate::trace::Events {
        self.shared.events.clone()
    }

    /// The outcome of the last reload attempt (any trigger), if there was one.
    pub fn last_reload(&self) -> Option<LastReload> {
        self.lock().last.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the config file and applies it. Blocking (file reads, certificate parsing):
    /// call from `spawn_blocking` in async code.
    pub fn reload(&self, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        let mut state = self.lock();
        self.reload_locked(&mut state, trigger)
    }

    /// Reloads when the config file or a file it names changed since the last attempt.
    /// Blocking. A refused config is not retried until one of the files changes again.
    pub fn poll(&self) {
        let mut state = self.lock();
        let changed = state.seen.iter().any(|(p, s)| stamp(p) != *s);
        if changed {
            let _ = self.reload_locked(&mut state, Trigger::FileChange);
        }
    }

    fn reload_locked(&self, state: &mut State, trigger: Trigger) -> Result<Reloaded, ReloadError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ReloadError::NoConfigFile);
        };
        // Fingerprint before reading: a change made during the read is seen by the next poll.
        let config_stamp = stamp(&path);
        let result = std::fs::read_to_string(&path)
            .map_err(|e| {
                vec![ConfigError {
                    file: path.clone(),
                    line: 0,
                    key: String::new(),
                    reason: format!("cannot read the config file: {e}"),
                }]
            })
            .and_then(|text| {
                let loaded = crate::config::load_str(&text, &path)?;
                Ok((text, loaded))
            });
        let prepared = result.and_then(|(text, loaded)| match self.prepare(text, loaded) {
            Ok(p) => Ok(p),
            Err((errors, stamps)) => {
                // The certificate files as read: the next change to them retries.
                let mut seen = stamps;
                seen.insert(path.clone(), config_stamp);
                state.seen = seen;
                Err(errors)
            }
        });
        match prepared {
            Ok(p) => {
                let mut seen = p.stamps.clone();
                seen.insert(path.clone(), config_stamp);
                state.seen = seen;
                Ok(self.commit(state, p, trigger))
            }
            Err(errors) => {
                state.seen.insert(path.clone(), config_stamp);
                Err(self.refused(state, trigger, errors))
            }
        }
    }

    /// Applies `edit` to the config file: validated like `check`, the next generation built,
    /// the file written atomically (comments kept) unless it changed on disk since it was
    /// read ([`ReloadError::ChangedOnDisk`]), then swapped in: the policy in effect changes
    /// only once the file holds the change. Under `what_if` nothing is written or applied.
    /// Blocking.
    pub fn edit(&self, e: &Edit, what_if: bool) -> Result<EditOutcome, ReloadError> {
        self.edit_with(|text, path| edit::apply(text, path, e), what_if)
    }

    /// [`Control::edit`] for any change of the config text: `change` gets the file's text
    /// and path and returns the validated new text (`connector-relay import` on the admin
    /// page changes several connectors at once). The same whatIf, write and swap rules.
    pub fn edit_with(
        &self,
        change: impl FnOnce(&str, &std::path::Path) -> Result<edit::Edited, Vec<ConfigError>>,
        what_if: bool,
    ) -> Result<EditOutcome, ReloadError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ReloadError::NoConfigFile);
        };
        let mut state = self.lock();
        let text = std::fs::read_to_string(&path)
            .map_err(|err| ReloadError::Io(format!("cannot read {}: {err}", path.display())))?;
        let read = edit::content_hash(text.as_bytes());
        let edited = change(&text, &path).map_err(ReloadError::Invalid)?;
        let warnings = edited.loaded.warnings.clone();
        if what_if {
            return Ok(EditOutcome {
                old_text: edited.old_text,
                new_text: edited.new_text,
                policy: Arc::new(edited.loaded.policy),
                applied: None,
                warnings,
            });
        }
        let prepared = self
            .prepare(edited.new_text.clone(), edited.loaded)
            .map_err(|(errors, _)| ReloadError::Invalid(errors))?;
        let written = edit::write_if_unchanged(&path, &edited.new_text, read).map_err(|err| {
            match err {
                WriteError::ChangedOnDisk => {
                    tracing::warn!(path = %path.display(), "connector change refused: the config file was changed on disk since the change read it");
                    ReloadError::ChangedOnDisk(path.display().to_string())
                }
                WriteError::Io(err) => {
                    ReloadError::Io(format!("cannot write {}: {err}", path.display()))
                }
            }
        })?;
        let mut seen = prepared.stamps.clone();
        // The file as written (from its own descriptor, not the path: an edit that lands
        // right after ours must still look like a change to the poll).
        seen.insert(path.clone(), Some(stamp_of(&written)));
        state.seen = seen;
        let policy = prepared.live.policy.clone();
        let applied = self.commit(&mut state, prepared, Trigger::Api);
        Ok(EditOutcome {
            old_text: edited.old_text,
            new_text: edited.new_text,
            policy,
            applied: Some(applied),
            warnings,
        })
    }

    /// Builds the next generation from a validated config, without swapping anything.
    fn prepare(
        &self,
        text: String,
        loaded: Loaded,
    ) -> Result<Prepared, (Vec<ConfigError>, Stamps)> {
        let old = self.live.load_full();
        let mut policy = loaded.policy;
        let restart_needed = keep_fixed(&old.policy, &mut policy);
        let path = self.config_path.clone().unwrap_or_default();
        let stamps = stamps_of(referenced_files(&policy));
        if !policy.relay.implicit_tls_listen.is_empty() && policy.relay.tls_certificate.is_none() {
            let error = ConfigError {
                file: path,
                line: 0,
                key: "TlsCertificate".into(),
                reason: "the running ImplicitTlsListen listeners need a certificate; removing it needs a restart".into(),
            };
            return Err((vec![error], stamps));
        }
        let policy = Arc::new(policy);
        let generation = live::build(&policy, &self.shared)
            .map_err(|e| (vec![start_error_as_config_error(&path, e)], stamps.clone()))?;
        let live = Live {
            certificates: certs::scan(&policy.relay),
            policy,
            text: Some(text.into()),
            generation: old.generation + 1,
            warnings: loaded.warnings,
        };
        Ok(Prepared {
            live,
            generation,
            restart_needed,
            stamps,
        })
    }

    /// Swaps a prepared generation in; logs it.
    fn commit(&self, state: &mut State, p: Prepared, trigger: Trigger) -> Reloaded {
        let generation = p.live.generation;
        let settings = live::queue_settings(&p.live.policy.relay);
        self.shared.queue.update_settings(settings);
        self.transport.store(p.generation.deliverer);
        self.setup.store(Arc::new(p.generation.setup));
        let warnings = p.live.warnings.clone();
        let certificates = p.live.certificates.clone();
        self.live.store(Arc::new(p.live));

        tracing::info!(
            trigger = trigger.as_str(),
            generation,
            "configuration reloaded; new sessions and delivery attempts use it"
        );
        for w in &warnings {
            tracing::warn!("{w}");
        }
        for key in &p.restart_needed {
            tracing::warn!(
                key = *key,
                "[Relay] {key} changed in the config file but cannot change while running; the running value stays until a restart"
            );
        }
        certs::warn_expiring(&certificates, "on reload");
        certs::set_gauges(&certificates);
        state.last = Some(LastReload {
            at: crate::queue::spool::unix_now(),
            trigger,
            result: Ok(generation),
            restart_needed: p.restart_needed.clone(),
        });
        Reloaded {
            generation,
            warnings,
            restart_needed: p.restart_needed,
        }
    }

    fn refused(
        &self,
        state: &mut State,
        trigger: Trigger,
        errors: Vec<ConfigError>,
    ) -> ReloadError {
        tracing::error!(
            trigger = trigger.as_str(),
            errors = errors.len(),
            "configuration refused; the running configuration stays in effect"
        );
        for e in &errors {
            tracing::error!("{e}");
        }
        state.last = Some(LastReload {
            at: crate::queue::spool::unix_now(),
            trigger,
            result: Err(errors.iter().map(ToString::to_string).collect()),
            restart_needed: Vec::new(),
        });
        ReloadError::Invalid(errors)
    }
}

/// A build failure (certificate, key, CA, CRL, SRS secret, DNS servers) as a config error
/// on the key that names the file.
fn start_error_as_config_error(file: &Path, e: StartError) -> ConfigError {
    let key = match &e {
        StartError::Tls(_) => "TlsCertificate",
        StartError::Dns(_) => "ExternalDnsServers",
        StartError::Srs { .. } => "SrsSecretFile",
        _ => "",
    };
    ConfigError {
        file: file.to_path_buf(),
        line: 0,
        key: key.to_string(),
        reason: e.to_string(),
    }
}

/// Copies the `[Relay]` values that cannot change while running from `old` into `new`;
/// returns the keys whose value in `new` differed.
fn keep_fixed(old: &Policy, new: &mut Policy) -> Vec<&'static str> {
    let (o, n) = (&old.relay, &mut new.relay);
    let mut changed = Vec::new();
    macro_rules! fixed {
        ($($field:ident => $key:literal),* $(,)?) => {$(
            if o.$field != n.$field {
                changed.push($key);
                n.$field = o.$field.clone();
            }
        )*};
    }
    fixed!(
        listen => "Listen",
        implicit_tls_listen => "ImplicitTlsListen",
        spool_dir => "SpoolDir",
        data_dir => "DataDir",
        admin_listen => "AdminListen",
        admin_token_file => "AdminTokenFile",
        dns_servers => "DnsServers",
        max_inbound_connection => "MaxInboundConnection",
        max_inbound_connection_per_source => "MaxInboundConnectionPerSource",
        max_inbound_connection_rate_per_source => "MaxInboundConnectionRatePerSource",
        inbound_connections_reserved_for_on_premises => "InboundConnectionsReservedForOnPremises",
        source_ipv6_prefix_length => "SourceIPv6PrefixLength",
        max_outbound_connections => "MaxOutboundConnections",
        trace_store => "TraceStore",
    );
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_keys_keep_their_running_values() {
        let load = |t: &str| {
            crate::config::load_str(t, Path::new("t.toml"))
                .unwrap()
                .policy
        };
        let old = load("[Relay]\nListen = [\"127.0.0.1:2525\"]\nSpoolDir = \"a\"\n");
        let mut new = load(
            "[Relay]\nListen = [\"127.0.0.1:2526\"]\nSpoolDir = \"a\"\nMaxRecipientsPerMessage = 7\n",
        );
        assert_eq!(keep_fixed(&old, &mut new), ["Listen"]);
        assert_eq!(new.relay.listen, old.relay.listen, "running value kept");
        assert_eq!(new.relay.max_recipients_per_message, 7, "live keys change");
    }
}
