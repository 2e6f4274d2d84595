//! Crash safety of the store (decision 0021) with real processes and real SIGKILLs: a child
//! process (this test binary, running the ignored `child_writes_until_killed`) appends status
//! events, acks some of them, sets a counter and saves the runtime state as fast as it can,
//! printing a line after each call returned; the test kills it at a random instant, opens
//! the store again and checks that everything the child was told is durable is there, with
//! no seq gap or reuse, and that nothing half-written is visible. Then the next child goes
//! on in the same store.

use hammer_manager::outbox::Outbox;
use hammer_manager::runtime::state::{RuntimeState, StateStore};
use hammer_manager::runtime::Report;
use hammer_manager::store::{open_db, Counter, Store};
use hammer_protocol::Phase;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The store folder of the child, set only in the child's environment.
const CHILD_ENV: &str = "HAMMER_STORE_TEST_CHILD";
const ROUNDS: u32 = 16;

/// What one child said it had stored.
#[derive(Default)]
struct Told {
    /// seq → detail of every event `append` returned.
    stored: BTreeMap<u64, String>,
    acked: u64,
    cmd_seq: u64,
    runtime: u64,
}

fn parse(out: &str) -> Told {
    let mut told = Told::default();
    // A kill can cut the last line: only whole lines count.
    let whole = out.rsplit_once('\n').map_or("", |(w, _)| w);
    for line in whole.lines() {
        // libtest writes "test NAME ... " before the child's first line.
        let line = line.rsplit("... ").next().unwrap_or(line);
        let mut w = line.split(' ');
        match (w.next(), w.next(), w.next()) {
            (Some("stored"), Some(seq), Some(detail)) => {
                told.stored.insert(seq.parse().unwrap(), detail.to_string());
            }
            (Some("acked"), Some(n), None) => told.acked = n.parse().unwrap(),
            (Some("cmd"), Some(n), None) => told.cmd_seq = n.parse().unwrap(),
            (Some("runtime"), Some(n), None) => told.runtime = n.parse().unwrap(),
            // libtest's own lines ("running 1 test", blank ones).
            _ => {}
        }
    }
    told
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

#[test]
fn sigkill_at_any_instant_leaves_every_returned_write_and_no_torn_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    // seq → detail of every event any child was told is stored, across all rounds.
    let mut all: BTreeMap<u64, String> = BTreeMap::new();
    let mut acked_at_least = 0;
    let mut epoch = None;
    for round in 0..ROUNDS {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "store_sigkill::child_writes_until_killed",
                "--ignored",
            ])
            .args(["--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, format!("{}\n{round}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the child has stored something, then a random moment more.
        let mut stdout = child.stdout.take().unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while !out.windows(7).any(|w| w == b"stored ") {
            let n = stdout.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "round {round}: the child ended: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
        std::thread::sleep(Duration::from_millis(random_below(300)));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        stdout.read_to_end(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            !status.success(),
            "round {round}: the child ended by itself: {out}"
        );
        let told = parse(&out);
        assert!(
            !told.stored.is_empty(),
            "round {round}: the child stored nothing: {out}"
        );

        // The store as the next manager would find it.
        let db = open_db(&dir).unwrap();
        let outbox = Outbox::new(Store::open(&db).unwrap());
        let store = outbox.store();
        assert_eq!(
            *epoch.get_or_insert(store.epoch()),
            store.epoch(),
            "round {round}"
        );
        let acked = store.get(Counter::AckedSeq);
        let last = outbox.last_seq();
        assert!(
            acked >= told.acked && acked >= acked_at_least,
            "round {round}"
        );
        acked_at_least = acked;
        let unacked = outbox.unacked().unwrap();
        let seqs: Vec<u64> = unacked.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (acked + 1..=last).collect::<Vec<_>>(),
            "round {round}: the unacked events are acked+1..=last with no gap"
        );
        for (seq, detail) in &told.stored {
            all.insert(*seq, detail.clone());
        }
        assert!(
            all.keys().next_back().copied().unwrap_or(0) <= last,
            "round {round}: a returned append is missing (last {last})"
        );
        for ev in &unacked {
            let detail = ev.detail.as_deref().unwrap();
            assert!(detail.starts_with('r'), "{detail}");
            if let Some(told) = all.get(&ev.seq) {
                assert_eq!(told, detail, "round {round}: seq {} was reused", ev.seq);
            }
        }
        // The counter and the runtime state: the last returned write, or the one in flight.
        let cmd = store.get(Counter::CmdSeq);
        assert!(
            cmd == told.cmd_seq || cmd == told.cmd_seq + 1 || told.cmd_seq == 0,
            "round {round}: cmd_seq {cmd}, the child last set {}",
            told.cmd_seq
        );
        let rt = StateStore::open(&db).unwrap().load().unwrap();
        let saved = rt.rolled_back.iter().next_back().copied().unwrap_or(0);
        assert!(
            saved == told.runtime || saved == told.runtime + 1 || told.runtime == 0,
            "round {round}: runtime state {saved}, the child last saved {}",
            told.runtime
        );
        eprintln!(
            "round {round}: {} events stored by the child, last seq {last}, acked {acked}, {} unacked",
            told.stored.len(),
            unacked.len()
        );
    }
    let log = dir.join("store").join("outbox.log");
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(
        len < 1024 * 1024,
        "the acked part of the log is trimmed ({len} bytes)"
    );
}

/// [`sigkill_at_any_instant_leaves_every_returned_write_and_no_torn_one`]'s child:
/// `DATA\nROUND` in [`CHILD_ENV`]. Writes until it is killed.
#[test]
#[ignore = "run by sigkill_at_any_instant_leaves_every_returned_write_and_no_torn_one in a child"]
fn child_writes_until_killed() {
    let Ok(arg) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, round) = arg.split_once('\n').unwrap();
    let db = open_db(std::path::Path::new(dir)).unwrap();
    let outbox = Outbox::new(Store::open(&db).unwrap());
    let runtime = StateStore::open(&db).unwrap();
    let mut state: RuntimeState = runtime.load().unwrap();
    let mut cmd = outbox.store().get(Counter::CmdSeq);
    let end = Instant::now() + Duration::from_secs(60);
    for i in 0u64.. {
        assert!(Instant::now() < end, "not killed within a minute");
        let mut report = Report::new(Phase::Running, format!("r{round}-e{i}"));
        // Every fourth event is big, so the log grows past its compaction threshold.
        if i % 4 == 0 {
            report.log_tail = vec!["x".repeat(200); 40];
        }
        let ev = outbox.append(report).unwrap();
        println!("stored {} r{round}-e{i}", ev.seq);
        // The service acks all but the newest event every third time.
        if i % 3 == 2 && outbox.ack(ev.seq - 1).unwrap() {
            println!("acked {}", ev.seq - 1);
        }
        if i % 5 == 0 {
            cmd += 1;
            outbox.store().set(Counter::CmdSeq, cmd).unwrap();
            println!("cmd {cmd}");
        }
        if i % 7 == 0 {
            let n = state.rolled_back.iter().next_back().copied().unwrap_or(0) + 1;
            state.rolled_back.insert(n);
            runtime.save(&state).unwrap();
            println!("runtime {n}");
        }
    }
}
