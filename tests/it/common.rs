//! Helpers: a throwaway project, the `weir` binary, and DuckDB as an independent reader.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use weir::sink::lake::layout::{Layout, STATE};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `weir` command.
pub fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.env("RUST_LOG", "warn");
    c
}

/// Runs a command, returning its output; panics with stderr when `ok` does not match.
pub fn run(cmd: &mut Command, ok: bool) -> Output {
    let out = cmd.output().expect("spawn");
    if out.status.success() != ok {
        panic!(
            "{cmd:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A temporary project: the sample job and its SQL, with `events` generated events.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn ecommerce(events: u64, files: u32, batch: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("jobs")).unwrap();
        std::fs::create_dir_all(root.join("sql")).unwrap();
        copy_dir(&repo().join("sql/ecommerce"), &root.join("sql/ecommerce"));
        copy_dir(&repo().join("models"), &root.join("models"));
        let job = std::fs::read_to_string(repo().join("jobs/ecommerce.toml")).unwrap();
        let job = replace_section(&job, "[batch]", batch);
        std::fs::write(root.join("jobs/ecommerce.toml"), job).unwrap();
        run(
            weir()
                .args([
                    "generate",
                    "--events",
                    &events.to_string(),
                    "--files",
                    &files.to_string(),
                    "--out",
                ])
                .arg(root.join("data")),
            true,
        );
        Self { dir }
    }

    /// The sample job plus `all_events`, every event passed through: the exactly-once witness.
    pub fn with_all_events(events: u64, files: u32, batch: &str) -> Self {
        let p = Self::ecommerce(events, files, batch);
        p.write(
            "sql/ecommerce/all_events.sql",
            "SELECT event_id, event_type, CAST(event_time AS DATE) AS dt FROM events",
        );
        p
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn job(&self) -> PathBuf {
        self.root().join("jobs/ecommerce.toml")
    }

    pub fn lake(&self) -> PathBuf {
        self.root().join("lake")
    }

    /// The job's state folder in the lake (`plans`, `commits`, `loads`, ... are under it).
    pub fn state(&self) -> PathBuf {
        job_state(&self.lake(), "ecommerce")
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.root().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// `weir run` of the project's job.
    pub fn run_cmd(&self) -> Command {
        let mut c = weir();
        c.arg("run").arg(self.job()).arg("--quiet");
        c
    }
}

/// Replaces a `[section]` of a TOML text (up to the next section) with `body`.
pub fn replace_section(text: &str, header: &str, body: &str) -> String {
    let start = text.find(header).expect("section");
    let rest = &text[start + header.len()..];
    let end = rest
        .find("\n[")
        .map(|i| start + header.len() + i + 1)
        .unwrap_or(text.len());
    format!("{}{header}\n{body}\n\n{}", &text[..start], &text[end..])
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The test venv's Python, with DuckDB (installed by tests/setup.sh).
pub fn python_path() -> PathBuf {
    let p = std::env::var_os("WEIR_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run the tests with tests/run.sh, which installs DuckDB into .venv",
        p.display()
    );
    p
}

/// Runs SQL in DuckDB (UTC session) and returns the rows as CSV lines without a header.
pub fn duckdb(sql: &str) -> Vec<String> {
    let script = r#"
import csv, sys, duckdb
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
rows = con.execute(sys.stdin.read()).fetchall()
w = csv.writer(sys.stdout, lineterminator="\n")
for r in rows:
    w.writerow(r)
"#;
    let mut child = Command::new(python_path())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "duckdb failed on:\n{sql}\n{}",
        stderr(&out)
    );
    stdout(&out).lines().map(str::to_string).collect()
}

/// A DuckDB table expression over one lake table: its Delta table's current snapshot, read by
/// DuckDB's own Delta reader (`delta_scan`).
pub fn lake_table(lake: &Path, table: &str) -> String {
    format!("delta_scan('{}/{table}')", lake.display())
}

/// Runs a Python script in the test venv (DuckDB, deltalake, pyarrow); returns stdout lines.
pub fn python(script: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(python_path())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python failed:\n{script}\n{}",
        stderr(&out)
    );
    stdout(&out).lines().map(str::to_string).collect()
}

/// The live files of a lake table (paths relative to the table), read by the `deltalake` package.
pub fn delta_files(lake: &Path, table: &str) -> Vec<String> {
    let dir = lake.join(table);
    let script = "import sys, deltalake\nfor f in sorted(deltalake.DeltaTable(sys.argv[1]).file_uris()): print(f)";
    python(script, &[&dir.display().to_string()])
        .into_iter()
        .map(|f| {
            f.strip_prefix(&format!("{}/", dir.display()))
                .unwrap_or(&f)
                .to_string()
        })
        .collect()
}

/// A DuckDB table expression over the raw generated events.
pub fn raw_events(root: &Path) -> String {
    format!(
        "read_json('{}/data/events/*.jsonl*', format = 'newline_delimited', columns = {{event_id: 'VARCHAR', event_time: 'TIMESTAMPTZ', event_type: 'VARCHAR', session_id: 'VARCHAR', user_id: 'BIGINT', product_id: 'INTEGER', quantity: 'INTEGER', price: 'DECIMAL(10,2)', order_id: 'VARCHAR'}})",
        root.display()
    )
}

/// `job`'s state folder in the lake folder `lake`, where the engine's lake layout puts it.
pub fn job_state(lake: &Path, job: &str) -> PathBuf {
    lake.join(Layout::new(job).state())
}

/// The lake's identity record, `_weir/lake.json`.
pub fn lake_json(lake: &Path) -> PathBuf {
    lake.join(Layout::lake_id())
}

/// The JSON entries of one of a job's state folders (`commits`, `plans`, ...), read while a run
/// may be writing them: object_store writes `NAME.json#N` and links it to `NAME.json` when done,
/// and trims old entries, so only whole `.json` files count and one gone meanwhile is skipped.
pub fn state_entries(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let path = e.ok()?.path();
            if path.extension()? != "json" {
                return None;
            }
            match std::fs::read(&path) {
                Ok(body) => {
                    Some(serde_json::from_slice(&body).unwrap_or_else(|err| {
                        panic!("{} is not whole JSON: {err}", path.display())
                    }))
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => panic!("{}: {err}", path.display()),
            }
        })
        .collect()
}

/// Starts `weir run` of `p` again and again and SIGKILLs it after a random delay of `min_ms` plus
/// up to `spread_ms`, until `wanted` kills hit a running process (at most 40 starts); returns how
/// many did. The seed is printed (`what`) so that a failure can be retraced.
pub fn kill_at_random(
    p: &Project,
    wanted: usize,
    min_ms: u64,
    spread_ms: u64,
    what: &str,
) -> usize {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("{what} seed {seed}");
    let mut kills = 0;
    for _ in 0..40 {
        if kills >= wanted {
            break;
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut child = p
            .run_cmd()
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn weir");
        std::thread::sleep(std::time::Duration::from_millis(
            min_ms + (seed >> 33) % spread_ms,
        ));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL, its lease left behind
            kills += 1;
        }
        child.wait().unwrap();
    }
    kills
}

/// A free loopback port (bound, then released). A fixed port in the ephemeral range (32768-60999
/// here) can be taken meanwhile by any outgoing connection's local end.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
