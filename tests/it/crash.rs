//! Exactly once under crashes: `weir run` killed with SIGKILL at random moments, restarted, and
//! the lake holds every input row exactly once. SIGTERM stops cleanly with the batch committed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Micro-batches of 100 records, four to a commit: a replay re-reads several.
const SMALL_BATCHES: &str =
    "max_records = 100\nmax_bytes = \"64MiB\"\nmax_age = \"5s\"\ncommit_every = 4";
const EVENTS: u64 = 60_000;

fn project() -> Project {
    Project::with_all_events(EVENTS, 4, SMALL_BATCHES)
}

/// Every generated event is in `all_events` exactly once, and `sales` has no duplicates.
fn assert_exactly_once(p: &Project) {
    let lake = p.lake();
    let counts = duckdb(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {}",
        lake_table(&lake, "all_events")
    ));
    assert_eq!(
        counts,
        [format!("{EVENTS},{EVENTS}")],
        "rows, distinct rows"
    );
    let missing = duckdb(&format!(
        "SELECT count(*) FROM (SELECT event_id FROM {} EXCEPT SELECT event_id FROM {})",
        raw_events(p.root()),
        lake_table(&lake, "all_events")
    ));
    assert_eq!(missing, ["0"]);
    let sales = duckdb(&format!(
        "SELECT (SELECT count(*) FROM {}) = (SELECT count(*) FROM {} WHERE event_type IN ('purchase', 'refund'))",
        lake_table(&lake, "sales"),
        raw_events(p.root())
    ));
    assert_eq!(sales, ["True"]);
}

/// Number of files in the job's `plans` or `commits` folder.
fn count(p: &Project, what: &str) -> usize {
    state_entries(&p.state().join(what)).len()
}

fn spawn(p: &Project) -> std::process::Child {
    p.run_cmd()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn weir")
}

#[test]
fn sigkill_at_random_moments_then_restart_is_exactly_once() {
    let p = project();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test seed {seed}");
    // Kill until several kills have hit a running process, at least two of them between a
    // batch's plan and its commit (so that a replay is exercised).
    let (mut interrupted, mut mid_batch, mut attempts) = (0, 0, 0);
    while (interrupted < 8 || mid_batch < 2 || count(&p, "commits") == 0) && attempts < 60 {
        attempts += 1;
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // A start now opens (or creates) the Delta tables and takes the lease: allow for it. On a
        // loaded machine, where no run lived long enough to commit, kills come later.
        let spread = if attempts > 10 && count(&p, "commits") == 0 {
            3000
        } else {
            500
        };
        let delay = Duration::from_millis(50 + (seed >> 33) % spread);
        let mut child = spawn(&p);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            interrupted += 1;
            child.wait().unwrap();
            if count(&p, "plans") > count(&p, "commits") {
                mid_batch += 1;
            }
        } else {
            child.wait().unwrap();
        }
    }
    assert!(
        interrupted >= 8,
        "only {interrupted} kills hit a running process"
    );
    assert!(
        mid_batch >= 1,
        "no kill landed between a plan and its commit"
    );
    assert!(
        count(&p, "commits") > 0,
        "the killed runs committed nothing"
    );
    let out = stdout(&run(&mut p.run_cmd(), true));
    assert!(
        out.contains("committed"),
        "the final run had work left: {out}"
    );
    assert_exactly_once(&p);
}

#[test]
fn sigterm_commits_the_batch_in_hand_and_exits_zero() {
    let p = project();
    let mut child = spawn(&p);
    let started = Instant::now();
    // Wait until at least one batch committed, then ask it to stop.
    while count(&p, "commits") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no commit within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let running = child.try_wait().unwrap().is_none();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let plans = count(&p, "plans");
    let done = count(&p, "commits");
    assert_eq!(
        plans, done,
        "every planned batch is committed after SIGTERM"
    );
    if running {
        assert!(done < 150, "the run stopped early ({done} batches)");
    }
    run(&mut p.run_cmd(), true);
    assert_exactly_once(&p);
}
