//! Crash safety of `homeport serve`'s notary store: `kill -9` during a
//! burst of notary writes, restart on the same config, and check that the
//! SQLite store passes its integrity check, that every answer a client got
//! before the kill is in the store (the notary stores before answering),
//! and that the restarted notary serves the same, verifiable answers from
//! the store without asking the origins again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use homeport_core::signing::{self, SigningKey};
use homeport_server::store::{SqliteStore, Store};
use homeport_test_support::next_loopback;
use serde_json::Value;

/// Origins the notary is asked about.
const ORIGINS: usize = 200;
/// Rounds that end with a `kill -9`; a final round then ends with SIGTERM.
const CRASH_ROUNDS: usize = 3;
/// Acknowledged answers per crash round before the kill.
const ACKS_BEFORE_KILL: usize = 35;
/// Concurrent client connections during a burst.
const CONCURRENCY: usize = 24;

/// Open the store the way serve does; integrity check; every acknowledged
/// origin is present; every present row is the origin's exact document.
/// Returns how many origins are stored.
async fn check_store(db: &Path, o: &Origins, acked: &BTreeMap<String, Value>) -> usize {
    let store = SqliteStore::open(db).unwrap_or_else(|e| panic!("store does not open: {e}"));
    store
        .integrity_check()
        .await
        .unwrap_or_else(|e| panic!("integrity check after kill -9: {e}"));
    let mut stored = 0;
    for (name, doc) in o.docs.iter() {
        let row = store
            .server_keys(name)
            .await
            .unwrap_or_else(|e| panic!("{name}: reading the store: {e}"));
        match row {
            Some(row) => {
                stored += 1;
                assert_eq!(&row.json, doc, "{name}: stored JSON");
                assert_eq!(
                    Some(row.valid_until_ts),
                    doc["valid_until_ts"].as_u64(),
                    "{name}: stored valid_until_ts"
                );
                assert!(row.fetched_at > 0 && row.fetched_at <= now_ms());
            }
            None => assert!(
                !acked.contains_key(name),
                "{name}: the notary answered before the kill but the store lost the entry"
            ),
        }
    }
    stored
}

// ---- bursts ----

#[derive(Default)]
struct Burst {
    /// Names answered (with an entry) during the burst, with the answer.
    answered: Mutex<Vec<(String, Value)>>,
    acks: AtomicUsize,
    sent: AtomicUsize,
    killed: AtomicBool,
    /// Failures that happened before the kill (a bug, not the crash).
    early_errors: Mutex<Vec<String>>,
    late_errors: AtomicUsize,
}

/// Fire notary queries for `names` from `CONCURRENCY` connections at a
/// time until the list is done or the server dies.
fn start_burst(
    addr: SocketAddr,
    names: Vec<String>,
    burst: Arc<Burst>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    (0..CONCURRENCY)
        .map(|_| {
            let (names, next, burst) = (names.clone(), next.clone(), burst.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(name) = names.get(i) else { return };
                    burst.sent.fetch_add(1, Ordering::SeqCst);
                    match notary_query(addr, name).await {
                        Ok(Some(entry)) => {
                            burst.answered.lock().unwrap().push((name.clone(), entry));
                            burst.acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(None) if !burst.killed.load(Ordering::SeqCst) => {
                            burst
                                .early_errors
                                .lock()
                                .unwrap()
                                .push(format!("{name}: empty answer"));
                        }
                        Err(e) if !burst.killed.load(Ordering::SeqCst) => {
                            burst
                                .early_errors
                                .lock()
                                .unwrap()
                                .push(format!("{name}: {e}"));
                        }
                        _ => {
                            burst.late_errors.fetch_add(1, Ordering::SeqCst);
                            // The server is gone: stop this connection.
                            return;
                        }
                    }
                }
            })
        })
        .collect()
}

fn write_config(dir: &Path, o: &Origins, listen: SocketAddr) -> PathBuf {
    let db = format!(
        "database:\n  name: sqlite3\n  args:\n    database: '{}'\n",
        dir.join("homeport.db").display()
    );
    notary_config(dir, "homeport", o, listen, &db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_notary_writes_then_restart_keeps_every_answered_entry() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("the crash scenario took longer than 240 s");
}

async fn scenario() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let o = origins(dir.path(), ORIGINS);
    let notary_key = SigningKey::generate("notary_1").unwrap();
    std::fs::write(
        dir.path().join("notary.signing.key"),
        signing::format_key_file(std::slice::from_ref(&notary_key)),
    )
    .unwrap();
    let ip = IpAddr::V4(next_loopback());
    let addr = SocketAddr::new(ip, free_port(ip));
    let config = write_config(dir.path(), &o, addr);
    let db = dir.path().join("homeport.db");
    let log = dir.path().join("serve.log");

    let check = Command::new(env!("CARGO_BIN_EXE_homeport"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        "config OK\n",
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Every answer any client received, across all rounds.
    let mut acked: BTreeMap<String, Value> = BTreeMap::new();
    let all: Vec<String> = o.docs.keys().cloned().collect();

    for round in 0..=CRASH_ROUNDS {
        let mut serve = Serve::spawn(&config, &log);
        serve.wait_listening(addr).await;

        // After a crash: the store opens, passes the integrity check and
        // holds every acknowledged answer.
        let stored = check_store(&db, &o, &acked).await;
        // The restarted notary answers them from the store, identically,
        // without asking the origins again.
        let hits_before = origin_hits(&o);
        let names: Vec<String> = acked.keys().cloned().collect();
        let mut tasks = Vec::new();
        for chunk in names.chunks(names.len().div_ceil(8).max(1)) {
            let chunk = chunk.to_vec();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for n in chunk {
                    let e = notary_query(addr, &n).await;
                    out.push((n, e));
                }
                out
            }));
        }
        for t in tasks {
            for (n, e) in t.await.unwrap() {
                let e = e
                    .unwrap_or_else(|err| panic!("round {round}: {n} after restart: {err}"))
                    .unwrap_or_else(|| panic!("round {round}: {n}: empty answer after restart"));
                check_answer(&e, &n, &o, &notary_key);
                assert_eq!(&e, &acked[&n], "{n}: same answer before the kill and after");
            }
        }
        let hits_after = origin_hits(&o);
        for n in &names {
            let h = n.to_ascii_lowercase();
            assert_eq!(
                hits_before.get(&h),
                hits_after.get(&h),
                "round {round}: {n} was refetched from the origin instead of answered from the store"
            );
        }
        eprintln!(
            "round {round}: restart ok at {:.2?}; {stored} stored, {} acknowledged, re-served from the store",
            t0.elapsed(),
            acked.len()
        );

        if round == CRASH_ROUNDS {
            // Final round: every origin is answered (the rest fetched now),
            // then a clean shutdown, and the store is complete and intact.
            let pending: Vec<String> = all
                .iter()
                .filter(|n| !acked.contains_key(*n))
                .cloned()
                .collect();
            let burst = Arc::new(Burst::default());
            for t in start_burst(addr, pending, burst.clone()) {
                t.await.unwrap();
            }
            let early = burst.early_errors.lock().unwrap().clone();
            assert!(
                early.is_empty(),
                "final round: {early:?}\n{}",
                serve.log_text()
            );
            for (n, e) in burst.answered.lock().unwrap().iter() {
                check_answer(e, n, &o, &notary_key);
                acked.insert(n.clone(), e.clone());
            }
            assert_eq!(acked.len(), ORIGINS);
            assert_eq!(serve.sigterm().await, Some(0), "{}", serve.log_text());
            assert_eq!(check_store(&db, &o, &acked).await, ORIGINS);
            break;
        }

        // A burst of notary misses (each one a store write), killed with
        // SIGKILL once some answers are back.
        let pending: Vec<String> = all
            .iter()
            .filter(|n| !acked.contains_key(*n))
            .cloned()
            .collect();
        let burst = Arc::new(Burst::default());
        let workers = start_burst(addr, pending.clone(), burst.clone());
        let start = Instant::now();
        while burst.acks.load(Ordering::SeqCst) < ACKS_BEFORE_KILL {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "round {round}: only {} answers in 60 s; errors {:?}\n{}",
                burst.acks.load(Ordering::SeqCst),
                burst.early_errors.lock().unwrap(),
                serve.log_text()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        burst.killed.store(true, Ordering::SeqCst);
        let (acks_at_kill, sent_at_kill) = (
            burst.acks.load(Ordering::SeqCst),
            burst.sent.load(Ordering::SeqCst),
        );
        serve.sigkill();
        for w in workers {
            w.await.unwrap();
        }
        let early = burst.early_errors.lock().unwrap().clone();
        assert!(
            early.is_empty(),
            "round {round}: failures before the kill: {early:?}\n{}",
            serve.log_text()
        );
        let answered = burst.answered.lock().unwrap().clone();
        assert!(
            answered.len() < pending.len(),
            "round {round}: the burst finished before the kill, so nothing was interrupted"
        );
        for (n, e) in &answered {
            check_answer(e, n, &o, &notary_key);
            assert!(acked.insert(n.clone(), e.clone()).is_none(), "{n} twice");
        }
        let fetched = origin_hits(&o).len();
        eprintln!(
            "round {round}: killed at {:.2?} with {acks_at_kill} answered of {sent_at_kill} sent \
             ({} answered in all, {} cut off); origins fetched so far: {}",
            t0.elapsed(),
            answered.len(),
            burst.late_errors.load(Ordering::SeqCst),
            fetched
        );
        drop(serve);
    }
    eprintln!("done in {:.2?}", t0.elapsed());
}
