//! The sync loop: for each bundle app, resolve its tag (polled with jitter, backing off
//! exponentially on failure; pinned digests are fetched once), pull what the cache lacks,
//! verify, compile and swap that one app. Any failure leaves the version serving as it is,
//! logs why and counts `outpost_sync_failures_total`. Registry push notifications nudge it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_config::{Reference, Source};
use tokio::sync::Notify;

use super::{AppSlot, Live, NodeContext, State};
use crate::bundle::fetch::pull_and_verify;
use crate::bundle::layout::Layout;
use crate::bundle::registry::{self, Credentials};
use crate::bundle::store::Store;
use crate::bundle::Rejection;

/// Longest wait between attempts after failures (or the poll interval, if longer).
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the caches (bundle blobs, compiled artifacts) are garbage-collected, and how long
/// an unreferenced blob or artifact is kept after its last use.
const GC_EVERY: Duration = Duration::from_secs(600);
const GC_GRACE: Duration = Duration::from_secs(3600);
/// A whole sync of one app (resolve, pull, verify, compile) gives up after this long.
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);

/// Repositories named by registry notifications, waiting for the loop.
#[derive(Default)]
pub struct Nudge {
    repositories: Mutex<HashSet<String>>,
    notify: Notify,
}

impl Nudge {
    /// Resolve every app whose source is this repository now.
    pub fn repository(&self, repository: &str) {
        self.repositories
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(repository.to_string());
        self.notify.notify_one();
    }

    fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.repositories.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

struct Schedule {
    due: Instant,
    failures: u32,
    /// Resolves still to do shortly after a notification.
    followups: u8,
}

/// CNCF distribution notifies of a manifest push before it writes the tag, so a resolve
/// triggered by the notification can still see the old tag: resolve again this soon after.
const FOLLOWUP: Duration = Duration::from_millis(100);

pub struct Syncer {
    pub ctx: Arc<NodeContext>,
    pub live: Arc<Live>,
    pub nudge: Arc<Nudge>,
}

fn repository_of(s: &Source) -> Option<(&str, &Reference)> {
    match s {
        Source::Oci {
            repository,
            reference,
            ..
        }
        | Source::Local {
            repository,
            reference,
        } => Some((repository.as_str(), reference)),
        Source::File(_) => None,
    }
}

/// `d` scaled by a random factor in [0.9, 1.1), so a fleet's nodes do not poll in step.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b).map_or(0.5, |_| u16::from_le_bytes(b) as f64 / 65536.0);
    d.mul_f64(0.9 + 0.2 * r)
}

fn backoff(poll: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(poll);
    jitter(poll.saturating_mul(1u32 << failures.min(16)).min(cap))
}

impl Syncer {
    pub async fn run(self) {
        let mut schedule: HashMap<u64, Schedule> = HashMap::new();
        let mut client: Option<(edge_config::Registry, oci_client::Client, Credentials)> = None;
        let mut last_gc = Instant::now();
        loop {
            if last_gc.elapsed() >= GC_EVERY {
                last_gc = Instant::now();
                self.collect_garbage().await;
            }
            let state = self.live.state.load_full();
            let registry_config = &state.config.registry;
            if client.as_ref().is_none_or(|(c, _, _)| c != registry_config) {
                let creds = Credentials::load(
                    registry_config.credentials_file.as_deref(),
                    registry_config.credentials_env.as_deref(),
                )
                .unwrap_or_else(|e| {
                    tracing::error!(error = %e, "registry credentials not loaded; pulling anonymously");
                    Credentials::default()
                });
                match registry::client(&registry_config.insecure) {
                    Ok(c) => client = Some((registry_config.clone(), c, creds)),
                    Err(e) => tracing::error!(error = %e, "no registry client"),
                }
            }
            let poll = registry_config.poll;
            let nudged = self.nudge.take();
            let mut next = Instant::now() + poll;
            let mut alive = HashSet::new();
            for slot in &state.slots {
                let Some((repository, reference)) = repository_of(&slot.spec.source) else {
                    continue;
                };
                alive.insert(slot.id);
                let entry = schedule.entry(slot.id).or_insert(Schedule {
                    due: Instant::now(),
                    failures: 0,
                    followups: 0,
                });
                if nudged.contains(repository) {
                    entry.due = Instant::now();
                    entry.followups = 3;
                }
                if let Reference::Digest(d) = reference {
                    if slot.own_digest().as_deref() == Some(d.as_str()) {
                        // Pinned and served: nothing can change it.
                        continue;
                    }
                }
                if entry.due <= Instant::now() {
                    let registry = client.as_ref().map(|(_, c, creds)| (c, creds));
                    match self.sync_app(slot, &state, registry).await {
                        Ok(()) => {
                            entry.failures = 0;
                            entry.due = Instant::now() + jitter(poll);
                        }
                        Err(()) => {
                            entry.failures += 1;
                            entry.due = Instant::now() + backoff(poll, entry.failures);
                        }
                    }
                    if entry.followups > 0 {
                        entry.followups -= 1;
                        entry.due = entry.due.min(Instant::now() + FOLLOWUP);
                    }
                }
                next = next.min(entry.due);
            }
            schedule.retain(|id, _| alive.contains(id));
            drop(state);
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = self.nudge.notify.notified() => {}
            }
        }
    }

    async fn collect_garbage(&self) {
        let state = self.live.state.load();
        let apps = state.slots.iter().map(|s| s.name.clone()).collect();
        // Every version serving, bundled or not, keeps its compiled module.
        let modules = state
            .slots
            .iter()
            .filter_map(|s| s.target().map(|t| t.app.digest.clone()))
            .collect();
        drop(state);
        let ctx = self.ctx.clone();
        let collected = tokio::task::spawn_blocking(move || {
            let blobs = crate::bundle::gc::collect(
                &ctx.cache,
                &apps,
                GC_GRACE,
                super::SIGNATURE_ANNOTATION,
            );
            (blobs, ctx.sandbox.collect_artifacts(&modules, GC_GRACE))
        })
        .await;
        if let Ok((blobs, (artifacts, artifact_bytes))) = collected {
            if blobs.blobs > 0 || artifacts > 0 {
                tracing::info!(
                    blobs = blobs.blobs,
                    blob_bytes = blobs.bytes,
                    artifacts,
                    artifact_bytes,
                    "cache collected"
                );
            }
        }
    }

    fn store_for(
        &self,
        source: &Source,
        registry: Option<(&oci_client::Client, &Credentials)>,
    ) -> Result<Store, Rejection> {
        match source {
            Source::Oci {
                registry: host,
                repository,
                ..
            } => {
                let (client, creds) =
                    registry.ok_or_else(|| Rejection::Unreachable("no registry client".into()))?;
                Ok(Store::Registry {
                    client: client.clone(),
                    auth: creds.auth_for(host),
                    registry: host.clone(),
                    repository: repository.clone(),
                })
            }
            Source::Local { repository, .. } => Ok(Store::Layout(Layout::open(
                &self.ctx.bundles.join(repository),
            )?)),
            Source::File(_) => Err(Rejection::NotFound("a file: source has no store".into())),
        }
    }

    /// One attempt for one app. Err(()) when it failed in a way a retry could fix.
    async fn sync_app(
        &self,
        slot: &Arc<AppSlot>,
        state: &State,
        registry: Option<(&oci_client::Client, &Credentials)>,
    ) -> Result<(), ()> {
        let started = Instant::now();
        let mut digest = None;
        let result = tokio::time::timeout(
            SYNC_TIMEOUT,
            self.try_sync(slot, state, registry, started, &mut digest),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Rejection::Unreachable(format!(
                "the sync took longer than {SYNC_TIMEOUT:?}"
            )))
        });
        match result {
            Ok(()) => Ok(()),
            Err(rejection) => {
                let reason = rejection.reason();
                self.ctx
                    .metrics
                    .sync_failures
                    .with_label_values(&[&slot.tenant, &slot.name, reason])
                    .inc();
                let serving = slot.digest();
                tracing::error!(
                    app = %slot.name, tenant = %slot.tenant, reason,
                    digest = digest.as_deref().unwrap_or(""),
                    serving = serving.as_deref().unwrap_or("nothing"),
                    "sync failed; the version serving stays: {rejection}"
                );
                let transient = rejection.transient();
                slot.set_error(rejection.to_string(), digest.filter(|_| !transient));
                if transient {
                    Err(())
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn try_sync(
        &self,
        slot: &Arc<AppSlot>,
        state: &State,
        registry: Option<(&oci_client::Client, &Credentials)>,
        started: Instant,
        digest_out: &mut Option<String>,
    ) -> Result<(), Rejection> {
        let store = self.store_for(&slot.spec.source, registry)?;
        let digest = match repository_of(&slot.spec.source) {
            Some((_, Reference::Tag(tag))) => store
                .resolve(tag)
                .await?
                .ok_or_else(|| Rejection::NotFound(format!("tag {tag} in {}", store.describe())))?,
            Some((_, Reference::Digest(d))) => d.clone(),
            None => return Ok(()),
        };
        *digest_out = Some(digest.clone());
        if slot.own_digest().as_deref() == Some(digest.as_str())
            || slot.refused().as_deref() == Some(digest.as_str())
        {
            return Ok(());
        }
        let resolved = started.elapsed();
        let caps = self.ctx.caps(&state.config);
        let (verified, times) =
            pull_and_verify(&store, &self.ctx.cache, &digest, slot.keys(), caps).await?;
        let compile_started = Instant::now();
        let ctx = self.ctx.clone();
        let for_compile = slot.clone();
        let (verified, app) = tokio::task::spawn_blocking(move || {
            let app = ctx.load_bundle(&for_compile, &verified);
            (verified, app)
        })
        .await
        .map_err(|e| Rejection::Module(format!("the compile task failed: {e}")))?;
        let app = app.map_err(Rejection::Module)?;
        let compiled = compile_started.elapsed();
        let swap_started = Instant::now();
        let before = slot.digest();
        let source = app.source.label();
        slot.swap(app, digest.clone());
        let swapped = swap_started.elapsed();
        self.ctx
            .metrics
            .app_version(&slot.tenant, &slot.name, before.as_deref(), &digest);
        self.ctx
            .metrics
            .sync_swaps
            .with_label_values(&[&slot.tenant, &slot.name])
            .inc();
        if let Err(e) = self.ctx.record(slot, &verified) {
            // Serving is right; only a restart without the registry would miss this version.
            tracing::warn!(app = %slot.name, error = %e, "could not record the version served in the cache");
        }
        tracing::info!(
            app = %slot.name, tenant = %slot.tenant, digest = %digest,
            previous = before.as_deref().unwrap_or("none"), module = source,
            resolve_ms = resolved.as_secs_f64() * 1e3,
            pull_ms = times.pull.as_secs_f64() * 1e3,
            verify_ms = times.verify.as_secs_f64() * 1e3,
            compile_ms = compiled.as_secs_f64() * 1e3,
            swap_us = swapped.as_secs_f64() * 1e6,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "app swapped to a new version"
        );
        Ok(())
    }
}
