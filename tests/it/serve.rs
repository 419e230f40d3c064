//! `weir serve` and `weir run --serve` as users meet them: the dashboard in Debian's chromium
//! (driven by playwright), the JSON/CSV/Arrow API, and the PostgreSQL endpoint through psql and
//! psycopg; every number checked against DuckDB over the lake or the raw events.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::kinesis;

const BATCH: &str = "max_records = 2000\nmax_bytes = \"64MiB\"\nmax_age = \"1s\"";

/// A project with the sample dashboard.
fn project(events: u64) -> Project {
    let p = Project::ecommerce(events, 2, BATCH);
    p.write(
        "dashboards/shop.toml",
        &std::fs::read_to_string(repo().join("dashboards/shop.toml")).unwrap(),
    );
    p
}

/// A running `weir serve` or `weir run --serve`, killed when dropped; its ports are those it
/// printed (it binds port 0: no clash with another test or a server left behind).
struct Server {
    child: Child,
    http: u16,
    pg: u16,
    /// Its stderr so far (read on, so that the pipe never fills).
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Spawns `cmd` and waits for the addresses it prints ("dashboards on http://ADDR/",
    /// "PostgreSQL on ADDR: ..."), those of `want` (http, pg).
    fn start(mut cmd: Command, want: (bool, bool)) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weir");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = BufReader::new(child.stderr.take().unwrap());
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                kept.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let port = |line: &str, marker: &str| -> Option<u16> {
            let rest = &line[line.find(marker)? + marker.len()..];
            let addr: String = rest
                .chars()
                .take_while(|c| *c != '/' && *c != ' ')
                .collect();
            addr.trim_end_matches(':').rsplit(':').next()?.parse().ok()
        };
        let (mut http, mut pg) = (None, None);
        let started = Instant::now();
        while (want.0 && http.is_none()) || (want.1 && pg.is_none()) {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    http = http.or_else(|| port(&line, "dashboards on http://"));
                    pg = pg.or_else(|| port(&line, "PostgreSQL on "));
                }
                Err(_) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        std::thread::sleep(Duration::from_millis(200));
                        panic!(
                            "weir exited ({status:?}) before listening:\n{}",
                            log.lock().unwrap()
                        );
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(120),
                        "weir did not say where it listens:\n{}",
                        log.lock().unwrap()
                    );
                }
            }
        }
        Self {
            child,
            http: http.unwrap_or(0),
            pg: pg.unwrap_or(0),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// `weir serve` of the project's job on `bind`, HTTP and PostgreSQL on ports of its choosing.
fn serve(p: &Project, env: &[(&str, &str)], bind: &str) -> Server {
    let mut c = weir();
    c.arg("serve")
        .arg(p.job())
        .args(["--http", &format!("{bind}:0")])
        .args(["--pg", &format!("{bind}:0")]);
    for (k, v) in env {
        c.env(k, v);
    }
    Server::start(c, (true, true))
}

/// GET over HTTP/1.0; returns (status, body).
fn get(port: u16, path: &str, auth: Option<&str>) -> (u16, Vec<u8>) {
    get_as(port, path, auth, "127.0.0.1")
}

/// [`get`] with this Host header.
fn get_as(port: u16, path: &str, auth: Option<&str>, host: &str) -> (u16, Vec<u8>) {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(c, "GET {path} HTTP/1.0\r\nHost: {host}\r\n{auth}\r\n").unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = out[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..line]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[line + 2..line + 2 + n]);
        b = &b[line + 2 + n + 2..];
    }
}

fn get_json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = get(port, path, None);
    let v: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&body)));
    assert_eq!(status, 200, "{path}: {v}");
    v
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A panel's answer by title.
fn panel<'a>(d: &'a serde_json::Value, title: &str) -> &'a serde_json::Value {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title} in {d}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

fn num(s: &str) -> f64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

fn psql(port: u16, args: &[&str], password: Option<&str>) -> std::process::Output {
    let mut c = Command::new("psql");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "analyst",
        "-d",
        "shop",
    ])
    .args(["-X", "-w", "-v", "ON_ERROR_STOP=0"])
    .args(args)
    .env_remove("PGPASSWORD");
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    c.output().expect("psql (installed by tests/setup.sh)")
}

#[test]
fn api_and_postgres_endpoint_answer_like_duckdb_and_refuse_writes() {
    let p = project(6000);
    run(&mut p.run_cmd(), true);
    let lake = p.lake();
    let server = serve(&p, &[], "127.0.0.1");
    let (http, pg) = (server.http, server.pg);
    // A page elsewhere cannot read the lake by calling its own host name 127.0.0.1.
    assert_eq!(
        get_as(http, "/api/d/shop", None, "evil.example:8080").0,
        403
    );
    assert_eq!(get_as(http, "/api/d/shop", None, "localhost:8080").0, 200);

    // Dashboard panels: the number panels against DuckDB over the raw events and over the lake.
    let d = get_json(http, "/api/d/shop");
    let revenue = panel(&d, "Revenue, net of refunds")["rows"][0][0]
        .as_f64()
        .unwrap();
    let raw = duckdb(&format!(
        "SELECT sum(CASE WHEN event_type = 'refund' THEN -quantity * price ELSE quantity * price END) \
         FROM {} WHERE event_type IN ('purchase', 'refund')",
        raw_events(p.root())
    ));
    assert!(close(revenue, num(&raw[0])), "{revenue} vs raw {raw:?}");
    let orders = panel(&d, "Orders")["rows"][0][0].as_f64().unwrap();
    let raw_orders = duckdb(&format!(
        "SELECT count(DISTINCT order_id) FROM {} WHERE event_type = 'purchase'",
        raw_events(p.root())
    ));
    assert!(
        close(orders, num(&raw_orders[0])),
        "{orders} vs {raw_orders:?}"
    );
    let conversion = panel(&d, "View to purchase conversion (%)")["rows"][0][0]
        .as_f64()
        .unwrap();
    let lake_conv = duckdb(&format!(
        "SELECT round(100.0 * sum(purchases) / sum(views), 2) FROM {}",
        lake_table(&lake, "funnel")
    ));
    assert!(
        close(conversion, num(&lake_conv[0])),
        "{conversion} vs {lake_conv:?}"
    );
    let low = panel(&d, "Products low on stock")["rows"][0][0]
        .as_f64()
        .unwrap();
    let lake_low = duckdb(&format!(
        "SELECT count(*) FROM {} WHERE low_stock",
        lake_table(&lake, "stock")
    ));
    assert!(close(low, num(&lake_low[0])), "{low} vs {lake_low:?}");
    let listed = panel(&d, "Low stock")["rows"].as_array().unwrap().len();
    assert_eq!(listed, (low as usize).min(20));
    for panel in d["panels"].as_array().unwrap() {
        assert!(panel.get("error").is_none(), "{panel}");
    }
    assert_eq!(d["freshness"]["batch"].as_u64(), Some(p_last_batch(&lake)));

    // /api/query: JSON, CSV and Arrow give DuckDB's rows.
    let sql = "SELECT dt, kind, count(*) AS n, sum(revenue) AS revenue FROM sales GROUP BY dt, kind ORDER BY dt, kind";
    let expected = duckdb(&format!(
        "SELECT dt, kind, count(*), sum(revenue) FROM {} GROUP BY dt, kind ORDER BY dt, kind",
        lake_table(&lake, "sales")
    ));
    let j = get_json(http, &format!("/api/query?sql={}", url_encode(sql)));
    assert_eq!(
        j["columns"],
        serde_json::json!(["dt", "kind", "n", "revenue"])
    );
    let got: Vec<String> = j["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{},{},{},{:.2}",
                r[0].as_str().unwrap(),
                r[1].as_str().unwrap(),
                r[2],
                r[3].as_f64().unwrap()
            )
        })
        .collect();
    assert_eq!(got, expected);
    let (status, csv) = get(
        http,
        &format!("/api/query?format=csv&sql={}", url_encode(sql)),
        None,
    );
    assert_eq!(status, 200);
    let csv = String::from_utf8(csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("dt,kind,n,revenue"));
    assert_eq!(lines.collect::<Vec<_>>(), expected);
    let (status, arrow) = get(
        http,
        &format!("/api/query?format=arrow&sql={}", url_encode(sql)),
        None,
    );
    assert_eq!(status, 200);
    let file = p.root().join("answer.arrows");
    std::fs::write(&file, arrow).unwrap();
    let rows = python(
        "import sys, pyarrow.ipc as ipc\nt = ipc.open_stream(open(sys.argv[1], 'rb')).read_all()\nfor r in t.to_pylist(): print(f\"{r['dt']},{r['kind']},{r['n']},{r['revenue']}\")",
        &[&file.display().to_string()],
    );
    assert_eq!(rows, expected);
    let (status, body) = get(
        http,
        &format!("/api/query?sql={}", url_encode("DROP TABLE sales")),
        None,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("only queries"));

    // psql: \dt lists the lake's tables, \d a table's columns, a query equals DuckDB's.
    let out = psql(pg, &["-c", "\\dt"], None);
    let listing = stdout(&out);
    assert!(out.status.success(), "{listing}{}", stderr(&out));
    for t in ["sales", "funnel", "revenue", "stock", "_dead_letters"] {
        assert!(listing.contains(t), "\\dt lacks {t}:\n{listing}");
    }
    let out = psql(pg, &["-c", "\\d stock"], None);
    let described = stdout(&out);
    assert!(out.status.success(), "{described}{}", stderr(&out));
    for c in ["product_id", "stock_left", "low_stock", "last_movement"] {
        assert!(described.contains(c), "\\d stock lacks {c}:\n{described}");
    }
    let out = psql(
        pg,
        &["-At", "-c", "SELECT count(*), sum(units_sold) FROM stock"],
        None,
    );
    let lake_stock = duckdb(&format!(
        "SELECT count(*), sum(units_sold) FROM {}",
        lake_table(&lake, "stock")
    ));
    assert_eq!(stdout(&out).trim().replace('|', ","), lake_stock[0]);

    // Writes, DDL, COPY and unsafe SET are refused with an error, and the session goes on.
    let out = psql(
        pg,
        &[
            "-At",
            "-c",
            "DELETE FROM sales",
            "-c",
            "CREATE TABLE t (a int)",
            "-c",
            "COPY sales TO '/tmp/weir-copy.csv'",
            "-c",
            "EXPLAIN ANALYZE INSERT INTO sales (event_id) VALUES ('x')",
            "-c",
            "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/weir-copy.csv'",
            "-c",
            "SET datafusion.execution.batch_size = 1",
            "-c",
            "SET timezone = 'Asia/Tokyo'",
            "-c",
            "SELECT 41 + 1",
        ],
        None,
    );
    let err = stderr(&out);
    assert_eq!(err.matches("read-only").count(), 5, "{err}");
    assert!(
        err.contains("SET datafusion.execution.batch_size is refused"),
        "{err}"
    );
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["SET", "42"],
        "{err}"
    );
    assert!(
        err.contains("ERROR:  COPY is refused: Weir's PostgreSQL endpoint is read-only"),
        "{err}"
    );
    assert!(!Path::new("/tmp/weir-copy.csv").exists());
    // The ignored SET changed nothing for the next client (one session is shared).
    let out = psql(pg, &["-At", "-c", "SELECT count(*) FROM sales"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let j = get_json(
        http,
        &format!(
            "/api/query?sql={}",
            url_encode("SELECT arrow_typeof(now()) AS t")
        ),
    );
    assert!(
        j["rows"][0][0].as_str().unwrap().contains("Timestamp") && !j.to_string().contains("Tokyo"),
        "{j}"
    );

    // psycopg: the extended protocol with a parameter, and a refused INSERT's SQLSTATE.
    let got = python(
        r#"
import sys, psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="bi", dbname="shop", autocommit=True) as c:
    rows = c.execute("SELECT kind, count(*) FROM sales WHERE quantity >= %s GROUP BY kind ORDER BY kind", (2,)).fetchall()
    for k, n in rows:
        print(f"{k},{n}")
    try:
        c.execute("INSERT INTO sales (event_id) VALUES ('x')")
        print("insert ran")
    except psycopg.Error as e:
        print("refused", e.sqlstate)
"#,
        &[&pg.to_string()],
    );
    let mut expected = duckdb(&format!(
        "SELECT kind, count(*) FROM {} WHERE quantity >= 2 GROUP BY kind ORDER BY kind",
        lake_table(&lake, "sales")
    ));
    expected.push("refused 25006".into());
    assert_eq!(got, expected);

    // What Metabase and Grafana send when they connect and list tables and columns.
    let got = python(
        r#"
import sys, psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="metabase", dbname="shop", autocommit=True) as c:
    for s in ["SET extra_float_digits = 2",
              "SET application_name = 'Metabase v0.55.1'",
              "SHOW TRANSACTION ISOLATION LEVEL",
              "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
              "show timezone"]:
        c.execute(s)
    tables = c.execute("""SELECT "n"."nspname" AS "schema", "c"."relname" AS "name" FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid" WHERE ("n"."nspname" !~ '^pg_') AND ("n"."nspname" <> 'information_schema') AND c.relkind in ('r', 'p', 'v', 'f', 'm') AND ("n"."nspname" IN ('public')) ORDER BY "schema" ASC, "name" ASC""").fetchall()
    print("metabase", ",".join(t[1] for t in tables))
    grafana = c.execute("""SELECT quote_ident(table_name) AS "table" FROM information_schema.tables WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog') ORDER BY 1""").fetchall()
    print("grafana", ",".join(t[0] for t in grafana))
    cols = c.execute("""SELECT quote_ident(column_name) AS "column", data_type AS "type" FROM information_schema.columns WHERE quote_ident(table_schema) = 'public' AND quote_ident(table_name) = 'stock'""").fetchall()
    print("columns", ",".join(col for col, _ in cols))
"#,
        &[&pg.to_string()],
    );
    for (i, tool) in ["metabase", "grafana"].iter().enumerate() {
        let listed: std::collections::BTreeSet<&str> = got[i]
            .strip_prefix(&format!("{tool} "))
            .unwrap_or_default()
            .split(',')
            .collect();
        for t in [
            "_dead_letters",
            "_late",
            "funnel",
            "revenue",
            "sales",
            "stock",
        ] {
            assert!(listed.contains(t), "{tool} lacks {t}: {got:?}");
        }
    }
    assert!(
        got[2].starts_with("columns product_id,name,category,units_sold"),
        "{got:?}"
    );

    // A new commit is seen by the next query, without restarting the server: by a dashboard,
    // and by a statement prepared before it (psycopg, server-side prepared).
    let before = revenue;
    run(
        weir()
            .args([
                "generate", "--events", "500", "--files", "1", "--seed", "99", "--out",
            ])
            .arg(p.root().join("more")),
        true,
    );
    let counts = python(
        r#"
import subprocess, sys, psycopg
port, weir, job, more = sys.argv[1:5]
with psycopg.connect(host="127.0.0.1", port=int(port), user="bi", dbname="shop", autocommit=True) as c:
    q = "SELECT count(*) FROM sales WHERE quantity >= %s"
    before = c.execute(q, (0,), prepare=True).fetchone()[0]
    subprocess.run([weir, "run", job, "--quiet", "--input", more], check=True, stdout=subprocess.DEVNULL)
    after = c.execute(q, (0,), prepare=True).fetchone()[0]
    print(before, after)
"#,
        &[
            &pg.to_string(),
            env!("CARGO_BIN_EXE_weir"),
            &p.job().display().to_string(),
            &p.root().join("more/events/*.jsonl*").display().to_string(),
        ],
    );
    let lake_count = duckdb(&format!(
        "SELECT count(*) FROM {} WHERE quantity >= 0",
        lake_table(&lake, "sales")
    ));
    let (b, a) = counts[0].split_once(' ').unwrap();
    assert!(b != a && a == lake_count[0], "{counts:?} vs {lake_count:?}");
    let d = get_json(http, "/api/d/shop");
    let after = panel(&d, "Revenue, net of refunds")["rows"][0][0]
        .as_f64()
        .unwrap();
    let lake_revenue = duckdb(&format!(
        "SELECT sum(revenue) FROM {}",
        lake_table(&lake, "sales")
    ));
    assert!(
        after != before && close(after, num(&lake_revenue[0])),
        "{before} -> {after} vs {lake_revenue:?}"
    );
    drop(server);
}

fn p_last_batch(lake: &Path) -> u64 {
    state_entries(&job_state(lake, "ecommerce").join("commits"))
        .iter()
        .filter_map(|v| v["batch"].as_u64())
        .max()
        .unwrap()
}

#[test]
fn off_loopback_a_password_is_required() {
    let p = project(300);
    run(&mut p.run_cmd(), true);
    // Without the password set, it refuses to start, naming the variable.
    let out = run(
        weir()
            .arg("serve")
            .arg(p.job())
            .args(["--http", "0.0.0.0:0", "--pg", "off"])
            .env_remove("WEIR_SERVE_PASSWORD"),
        false,
    );
    assert!(
        stderr(&out).contains("WEIR_SERVE_PASSWORD"),
        "{}",
        stderr(&out)
    );

    let server = serve(&p, &[("WEIR_SERVE_PASSWORD", "s3cret")], "0.0.0.0");
    let (http, pg) = (server.http, server.pg);
    assert_eq!(get(http, "/api/d/shop", None).0, 401);
    assert_eq!(get(http, "/api/d/shop", Some("Bearer nope")).0, 401);
    assert_eq!(get(http, "/api/d/shop", Some("Bearer s3cret")).0, 200);
    // basic auth, any user: "anyone:s3cret"
    assert_eq!(get(http, "/", Some("Basic YW55b25lOnMzY3JldA==")).0, 200);
    let out = psql(pg, &["-At", "-c", "SELECT 1"], None);
    assert!(!out.status.success(), "no password: {}", stdout(&out));
    let out = psql(pg, &["-At", "-c", "SELECT 1"], Some("wrong"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Password authentication failed"),
        "{}",
        stderr(&out)
    );
    let out = psql(
        pg,
        &["-At", "-c", "SELECT count(*) FROM sales"],
        Some("s3cret"),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // With a certificate: TLS, and SCRAM-SHA-256 instead of a cleartext password.
    let (cert, key) = (p.root().join("cert.pem"), p.root().join("key.pem"));
    run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        true,
    );
    let mut c = weir();
    c.arg("serve")
        .arg(p.job())
        .args(["--http", "off", "--pg", "0.0.0.0:0"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("WEIR_SERVE_PASSWORD", "s3cret");
    let tls = Server::start(c, (false, true));
    let tls_psql = |password: &str, command: &str| {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user=analyst dbname=shop sslmode=require",
                tls.pg
            ))
            .args(["-X", "-w", "-At", "-c", command])
            .env("PGPASSWORD", password)
            .output()
            .unwrap()
    };
    let out = tls_psql("wrong", "SELECT 1");
    assert!(!out.status.success(), "{}", stdout(&out));
    let out = tls_psql("s3cret", "SELECT count(*) FROM sales");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tls_psql("s3cret", "\\conninfo");
    assert!(stdout(&out).contains("SSL connection"), "{}", stdout(&out));
}

#[test]
fn a_bad_dashboard_stops_the_run_before_any_data_moves() {
    let p = project(300);
    p.write(
        "dashboards/shop.toml",
        "title = \"Shop\"\n[[panels]]\ntitle = \"Revenue\"\nkind = \"line\"\nx = \"minute\"\nsql = \"SELECT minute, sum(revenue) AS revenue FROM revenu GROUP BY minute\"\n",
    );
    let out = run(
        p.run_cmd()
            .args(["--serve", "--http", "127.0.0.1:0", "--pg", "off"]),
        false,
    );
    let err = stderr(&out);
    assert!(
        err.contains("dashboards/shop.toml: panel 1 \"Revenue\": the SQL does not plan")
            && err.contains("revenu")
            && err.contains("The lake's tables:"),
        "{err}"
    );
    assert!(state_entries(&p.state().join("commits")).is_empty());
    // The lease was given back: a plain run goes ahead at once.
    run(&mut p.run_cmd(), true);

    // An unknown key and a chart without its x column, each named.
    let serve_with = |dashboard: &str| {
        p.write("dashboards/shop.toml", dashboard);
        let out = run(
            weir()
                .arg("serve")
                .arg(p.job())
                .args(["--http", "127.0.0.1:0", "--pg", "off"]),
            false,
        );
        stderr(&out)
    };
    let err = serve_with(
        "title = \"Shop\"\n[[panels]]\ntitle = \"Revenue\"\nkind = \"line\"\ncolour = \"red\"\nsql = \"SELECT 1 AS a\"\n",
    );
    assert!(err.contains("unknown field `colour`"), "{err}");
    let err = serve_with(
        "title = \"Shop\"\n[[panels]]\ntitle = \"Revenue\"\nkind = \"line\"\nx = \"minute\"\nsql = \"SELECT dt, sum(revenue) AS revenue FROM sales GROUP BY dt\"\n",
    );
    assert!(
        err.contains("x = \"minute\" is not a column of the query; its columns: dt, revenue"),
        "{err}"
    );
}

/// The browser half of the dashboard test: loads the page, prints its number panels as JSON,
/// waits for a line on stdin, then for the page to re-render by itself with changed numbers,
/// prints them again and saves a screenshot.
const BROWSER: &str = r#"
import json, sys
from playwright.sync_api import sync_playwright
url, shot = sys.argv[1], sys.argv[2]
def numbers(page):
    return page.evaluate("""() => {
        const out = {};
        document.querySelectorAll('section.panel-number').forEach(s => out[s.dataset.title] = s.dataset.value);
        return {renders: Number(document.body.dataset.renders || 0), batch: document.body.dataset.batch, numbers: out,
                events: Number(document.body.dataset.events || 0),
                charts: document.querySelectorAll('.uplot canvas').length,
                errors: Array.from(document.querySelectorAll('pre.error')).map(e => e.textContent)};
    }""")
with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = b.new_page(viewport={"width": 1400, "height": 1500})
    page.goto(url)
    page.wait_for_function("Number(document.body.dataset.renders || 0) >= 1 && document.querySelectorAll('.uplot canvas').length >= 3", timeout=60000)
    first = numbers(page)
    print(json.dumps(first), flush=True)
    last = sys.stdin.readline().strip()
    # Within 25 s: before the page's 30 s safety reload, so only a commit event can do it.
    page.wait_for_function("(b) => document.body.dataset.batch === b", arg=last, timeout=25000)
    page.screenshot(path=shot, full_page=True)
    print(json.dumps(numbers(page)), flush=True)
    b.close()
"#;

#[test]
fn dashboard_in_chromium_follows_a_running_job_without_reload() {
    let stream = kinesis::stream("serve");
    let p = kinesis::project(&stream, "lake");
    p.write(
        "dashboards/shop.toml",
        &std::fs::read_to_string(repo().join("dashboards/shop.toml")).unwrap(),
    );
    kinesis::produce(&stream, 3000, &[]);
    let mut cmd = p.run_cmd();
    kinesis::aws_env(&mut cmd).args([
        "--target",
        "prod",
        "--serve",
        "--http",
        "127.0.0.1:0",
        "--pg",
        "off",
    ]);
    let mut job = Server::start(cmd, (true, false));
    let http = job.http;
    let state = p.state();
    kinesis::wait_committed(&state, 3000, &mut job.child);

    let shot = repo().join("target/dashboard-shop.png");
    let mut browser = Command::new(python_path())
        .args(["-c", BROWSER, &format!("http://127.0.0.1:{http}/d/shop")])
        .arg(&shot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python playwright");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().expect("first render").unwrap()).unwrap();
    assert!(first["errors"].as_array().unwrap().is_empty(), "{first}");
    assert!(first["charts"].as_u64().unwrap() >= 3, "{first}");
    // The number panels equal DuckDB over the lake (no new records are coming meanwhile).
    let lake = p.lake();
    let revenue = duckdb(&format!(
        "SELECT sum(revenue) FROM {}",
        lake_table(&lake, "sales")
    ));
    let shown = |v: &serde_json::Value, t: &str| num(v["numbers"][t].as_str().unwrap_or("nan"));
    assert!(
        close(shown(&first, "Revenue, net of refunds"), num(&revenue[0])),
        "{first} vs {revenue:?}"
    );
    let orders = duckdb(&format!(
        "SELECT count(DISTINCT order_id) FROM {} WHERE kind = 'purchase'",
        lake_table(&lake, "sales")
    ));
    assert!(
        close(shown(&first, "Orders"), num(&orders[0])),
        "{first} vs {orders:?}"
    );
    let low = duckdb(&format!(
        "SELECT count(*) FROM {} WHERE low_stock",
        lake_table(&lake, "stock")
    ));
    assert!(
        close(shown(&first, "Products low on stock"), num(&low[0])),
        "{first} vs {low:?}"
    );
    open_minutes_account_for_every_view(http, &lake);

    // New events: the page re-renders by itself (server-sent event per commit).
    kinesis::produce(&stream, 1000, &["--seed", "11"]);
    kinesis::wait_committed(&state, 4000, &mut job.child);
    writeln!(browser.stdin.as_mut().unwrap(), "{}", p_last_batch(&lake)).unwrap();
    let second: serde_json::Value =
        serde_json::from_str(&lines.next().expect("second render").unwrap()).unwrap();
    assert!(
        second["renders"].as_u64() > first["renders"].as_u64(),
        "{second}"
    );
    assert!(
        second["events"].as_u64() > first["events"].as_u64(),
        "no commit event: {second}"
    );
    let revenue = duckdb(&format!(
        "SELECT sum(revenue) FROM {}",
        lake_table(&lake, "sales")
    ));
    assert!(
        close(shown(&second, "Revenue, net of refunds"), num(&revenue[0])),
        "{second} vs {revenue:?}"
    );
    assert_ne!(first["numbers"], second["numbers"]);
    assert!(browser.wait().unwrap().success());
    assert!(shot.exists());
    Command::new("kill")
        .args(["-TERM", &job.child.id().to_string()])
        .status()
        .unwrap();
    let status = job.child.wait().unwrap();
    assert!(status.success(), "after SIGTERM: {status:?}\n{}", job.log());

    // With the job stopped, weir serve shows the open minutes from the state its last commit saved.
    let mut c = weir();
    c.arg("serve")
        .arg(p.job())
        .args(["--target", "prod", "--http", "127.0.0.1:0", "--pg", "off"]);
    let server = Server::start(c, (true, false));
    open_minutes_account_for_every_view(server.http, &lake);
}

/// The open minutes (`funnel_open`, provisional) are there, and written plus open plus late views
/// are every view sent (in `all_events`).
fn open_minutes_account_for_every_view(http: u16, lake: &Path) {
    let d = get_json(http, "/api/d/shop");
    let conversion = panel(&d, "View to purchase conversion (%)");
    assert_eq!(conversion["columns"][1], "views");
    let views = conversion["rows"][0][1].as_f64().unwrap();
    let open = get_json(
        http,
        &format!(
            "/api/query?sql={}",
            url_encode("SELECT count(*) AS n FROM funnel_open")
        ),
    );
    assert!(
        open["rows"][0][0].as_f64().unwrap() > 0.0,
        "no open minutes: {open}"
    );
    let sent = duckdb(&format!(
        "SELECT (SELECT count(*) FROM {} WHERE event_type = 'view') \
              - (SELECT count(*) FROM {} WHERE output = 'funnel' AND json_extract_string(event, '$.event_type') = 'view')",
        lake_table(lake, "all_events"),
        lake_table(lake, "_late")
    ));
    assert!(close(views, num(&sent[0])), "{views} vs {sent:?}");
}
