//! Malformed input of each kind lands in `_dead_letters` with its position and reason; the good
//! records of the same file are written as usual.

use std::process::Command;

use weir::cli::thousands;

use crate::common::*;

#[test]
fn each_kind_of_bad_record_is_a_dead_letter_and_the_rest_is_intact() {
    let p = Project::ecommerce(10, 1, "max_records = 1000");
    std::fs::remove_dir_all(p.root().join("data/events")).unwrap();
    let good = |i: u32| {
        format!(
            r#"{{"event_id":"good-{i}","event_time":"2025-06-01T10:00:0{i}Z","event_type":"purchase","user_id":7,"product_id":1,"quantity":1,"price":"10.00","order_id":"o{i}"}}"#
        )
    };
    let mut lines: Vec<Vec<u8>> = vec![
        good(1).into_bytes(),
        b"{\"event_id\": \"broken".to_vec(),                                                          // 2: not JSON
        br#"{"event_time":"2025-06-01T10:00:00Z","event_type":"view"}"#.to_vec(),                       // 3: no event_id
        br#"{"event_id":"x","event_time":"2025-06-01T10:00:00Z","event_type":"view","user_id":"bob"}"#.to_vec(), // 4: wrong type
        b"{\"event_id\":\"\xc3\x28\",\"event_time\":\"2025-06-01T10:00:00Z\",\"event_type\":\"view\"}".to_vec(), // 5: not UTF-8
        format!(r#"{{"event_id":"big","event_time":"2025-06-01T10:00:00Z","event_type":"view","pad":"{}"}}"#, "x".repeat(300_000)).into_bytes(), // 6: too big
        good(2).into_bytes(),
        br#"{"event_id":"t","event_time":"not a time","event_type":"view"}"#.to_vec(),                  // 8: bad timestamp
        good(3).into_bytes(),
    ];
    let mut data = Vec::new();
    for l in lines.drain(..) {
        data.extend(l);
        data.push(b'\n');
    }
    std::fs::create_dir_all(p.root().join("data/events")).unwrap();
    std::fs::write(p.root().join("data/events/bad.jsonl"), data).unwrap();

    let out = run(&mut p.run_cmd(), true);
    let text = stdout(&out);
    assert!(text.contains("9 read, 6 dead letters"), "{text}");

    let lake = p.lake();
    let dead = duckdb(&format!(
        "SELECT position, reason FROM {} ORDER BY batch, CAST(split_part(position, ' ', 2) AS INT)",
        lake_table(&lake, "_dead_letters")
    ));
    let positions: Vec<&str> = dead.iter().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(
        positions,
        ["line 2", "line 3", "line 4", "line 5", "line 6", "line 8"],
        "{dead:#?}"
    );
    let reason = |i: usize| dead[i].to_lowercase();
    assert!(reason(1).contains("event_id"), "{}", dead[1]);
    assert!(
        reason(2).contains("user_id") || reason(2).contains("bob"),
        "{}",
        dead[2]
    );
    assert!(reason(3).contains("utf-8"), "{}", dead[3]);
    assert!(reason(4).contains("max_record_bytes"), "{}", dead[4]);
    assert!(reason(5).contains("not a time"), "{}", dead[5]);

    let raw = duckdb(&format!(
        "SELECT octet_length(raw), source LIKE '%bad.jsonl' FROM {} WHERE position = 'line 2'",
        lake_table(&lake, "_dead_letters")
    ));
    assert_eq!(raw, ["20,True"], "raw bytes kept");

    let sales = duckdb(&format!(
        "SELECT event_id FROM {} ORDER BY 1",
        lake_table(&lake, "sales")
    ));
    assert_eq!(sales, ["good-1", "good-2", "good-3"]);
}

/// Peak RSS (KiB) of `cmd` run as a child of a Python wrapper, with its output.
fn run_measured(cmd: &Command) -> (std::process::Output, u64) {
    let script = "import resource, subprocess, sys\n\
                  r = subprocess.run(sys.argv[1:], capture_output=True)\n\
                  sys.stdout.buffer.write(r.stdout); sys.stderr.buffer.write(r.stderr)\n\
                  print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n\
                  sys.exit(r.returncode)";
    let mut wrapped = Command::new(python_path());
    wrapped.arg("-c").arg(script).arg(cmd.get_program());
    wrapped.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    let out = run(&mut wrapped, true);
    let err = stderr(&out);
    let kib = err
        .lines()
        .find_map(|l| l.strip_prefix("maxrss "))
        .expect("maxrss line")
        .trim()
        .parse()
        .unwrap();
    (out, kib)
}

#[test]
fn a_line_of_gigabytes_in_a_gzip_bomb_is_one_dead_letter_in_bounded_memory() {
    use std::io::Write;
    let p = Project::ecommerce(10, 1, "max_records = 1000");
    std::fs::remove_dir_all(p.root().join("data/events")).unwrap();
    std::fs::create_dir_all(p.root().join("data/events")).unwrap();
    let good = |i: u32| {
        format!(
            r#"{{"event_id":"good-{i}","event_time":"2025-06-01T10:00:0{i}Z","event_type":"purchase","user_id":7,"product_id":1,"quantity":1,"price":"10.00","order_id":"o{i}"}}"#
        )
    };
    // Gzip members may follow each other: one 64 MiB member of `a`, written 65 times, makes a
    // 4 GiB + 64 MiB line (past u32 offsets) from a file of a few MiB.
    let member = |data: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    };
    let block = member(&vec![b'a'; 64 << 20]);
    let mut file = std::fs::File::create(p.root().join("data/events/bomb.jsonl.gz")).unwrap();
    file.write_all(&member(
        format!("{}\n{{\"event_id\":\"", good(1)).as_bytes(),
    ))
    .unwrap();
    for _ in 0..65 {
        file.write_all(&block).unwrap();
    }
    file.write_all(&member(format!("\"}}\n{}\n", good(2)).as_bytes()))
        .unwrap();
    drop(file);

    let (out, rss_kib) = run_measured(&p.run_cmd());
    let text = stdout(&out);
    assert!(text.contains("3 read, 1 dead letters"), "{text}");
    eprintln!("peak RSS for a 4.06 GiB line: {} MiB", rss_kib / 1024);
    assert!(
        rss_kib < 1024 * 1024,
        "peak RSS {rss_kib} KiB for one long line: the line is held whole"
    );
    let len = r#"{"event_id":""#.len() as u64 + (65u64 << 26) + 2;
    let dead = duckdb(&format!(
        "SELECT position, reason, octet_length(raw) FROM {}",
        lake_table(&p.lake(), "_dead_letters")
    ));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].starts_with("line 2,"), "{dead:?}");
    assert!(
        dead[0].contains(&format!("record is {len} bytes, over the limit of 262144")),
        "{dead:?}"
    );
    assert!(
        dead[0].ends_with(",262144"),
        "the first bytes are kept: {dead:?}"
    );
    let sales = duckdb(&format!(
        "SELECT event_id FROM {} ORDER BY 1",
        lake_table(&p.lake(), "sales")
    ));
    assert_eq!(sales, ["good-1", "good-2"]);
}

#[test]
fn values_no_warehouse_takes_are_dead_letters_with_their_reason() {
    let p = Project::ecommerce(10, 1, "max_records = 1000");
    std::fs::remove_dir_all(p.root().join("data/events")).unwrap();
    let event = |id: &str, time: &str| {
        format!(
            r#"{{"event_id":"{id}","event_time":{time},"event_type":"purchase","user_id":7,"product_id":1,"quantity":1,"price":"10.00","order_id":"o"}}"#
        )
    };
    let lines = [
        event("ok", "1748772000000"),
        event("micros", "1748772000000000"),
        event("old", "\"1850-01-01T00:00:00Z\""),
        event("nul\\u0000id", "1748772000000"),
        event("nested", "{\"a\":[[[1]]]}"),
        event("ok2", "\"2025-06-01T10:00:00Z\""),
    ];
    p.write("data/events/odd.jsonl", &(lines.join("\n") + "\n"));
    let out = run(&mut p.run_cmd(), true);
    assert!(
        stdout(&out).contains("6 read, 4 dead letters"),
        "{}",
        stdout(&out)
    );
    let dead = duckdb(&format!(
        "SELECT position, reason FROM {} ORDER BY CAST(split_part(position, ' ', 2) AS INT)",
        lake_table(&p.lake(), "_dead_letters")
    ));
    assert_eq!(dead.len(), 4, "{dead:#?}");
    assert!(dead[0].starts_with("line 2,"), "{}", dead[0]);
    assert!(dead[0].contains("column event_time: +57"), "{}", dead[0]);
    assert!(dead[0].contains("timestamp(us)"), "{}", dead[0]);
    assert!(
        dead[1].contains("column event_time: 1850-01-01"),
        "{}",
        dead[1]
    );
    assert!(
        dead[2].contains("column event_id: the string holds a NUL"),
        "{}",
        dead[2]
    );
    assert!(dead[3].starts_with("line 5,"), "{}", dead[3]);
    let sales = duckdb(&format!(
        "SELECT event_id, event_time FROM {} ORDER BY 1",
        lake_table(&p.lake(), "sales")
    ));
    assert_eq!(
        sales,
        [
            "ok,2025-06-01 10:00:00+00:00",
            "ok2,2025-06-01 10:00:00+00:00"
        ]
    );
}

#[test]
fn csv_quoted_newlines_stay_one_record_and_an_unclosed_quote_costs_one_line() {
    let p = Project::ecommerce(10, 1, "max_records = 1000");
    p.write(
        "jobs/notes.toml",
        "name = \"notes\"\ntransforms = \"sql/notes\"\n\
         [input]\nformat = \"csv\"\nmax_record_bytes = \"64B\"\n\
         [input.schema]\nid = \"bigint not null\"\nnote = \"string\"\nn = \"int\"\n\
         [targets.local]\nsource = { kind = \"files\", path = \"data/notes.csv\" }\nlake = \"lake\"\n",
    );
    p.write("sql/notes/notes.sql", "SELECT id, note, n FROM events");
    // The unclosed quote of line 8 finds no closing one within 64 bytes: it costs that line.
    p.write(
        "data/notes.csv",
        "id,note,n\n\
         1,\"two\nlines\",10\n\
         2,\"with \"\"quotes\"\", and a comma\",20\n\
         3,\"three\nmore\nlines\",30\n\
         4,\"unclosed,40\n\
         5,plain text that is long enough,50\n\
         6,another plain line that pushes past the limit,60\n\
         7,last,70\n",
    );
    let out = run(
        weir()
            .args(["run", "--quiet"])
            .arg(p.root().join("jobs/notes.toml")),
        true,
    );
    assert!(
        stdout(&out).contains("7 read, 1 dead letters"),
        "{}",
        stdout(&out)
    );
    let rows = duckdb(&format!(
        "SELECT id, replace(note, chr(10), '|'), n FROM {} ORDER BY id",
        lake_table(&p.lake(), "notes")
    ));
    assert_eq!(
        rows,
        [
            "1,two|lines,10",
            "2,\"with \"\"quotes\"\", and a comma\",20",
            "3,three|more|lines,30",
            "5,plain text that is long enough,50",
            "6,another plain line that pushes past the limit,60",
            "7,last,70"
        ]
    );
    let dead = duckdb(&format!(
        "SELECT position, reason FROM {}",
        lake_table(&p.lake(), "_dead_letters")
    ));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].starts_with("line 8,"), "{dead:?}");
    assert!(dead[0].contains("not closed"), "{dead:?}");
}

#[test]
fn replay_brings_fixed_dead_letters_back_exactly_once() {
    let p = Project::with_all_events(3_000, 2, "max_records = 1000");
    let job = std::fs::read_to_string(p.job()).unwrap();
    let strict = job.replace("order_id = \"string\"", "order_id = \"string not null\"");
    assert_ne!(strict, job);
    std::fs::write(p.job(), &strict).unwrap();
    run(&mut p.run_cmd(), true);
    let raw = p.root();
    let missing: u64 = duckdb(&format!(
        "SELECT count(*) FROM {} WHERE order_id IS NULL",
        raw_events(raw)
    ))[0]
        .parse()
        .unwrap();
    assert!(missing > 1000, "views have no order id: {missing}");

    // Fixed: order_id may be missing. The dry run counts, per reason.
    std::fs::write(p.job(), &job).unwrap();
    let replay = |extra: &[&str]| {
        let mut c = weir();
        c.arg("replay").arg(p.job()).arg("--quiet").args(extra);
        stdout(&run(&mut c, true))
    };
    let dry = replay(&["--dry-run", "--reason", "order_id"]);
    assert!(
        dry.contains(&format!(
            "{} dead letters would be replayed",
            thousands(missing)
        )),
        "{dry}"
    );
    assert!(replay(&["--dry-run", "--reason", "no such reason"]).contains(" 0 dead letters"));

    let out = replay(&["--reason", "order_id"]);
    assert!(
        out.contains(&format!(
            "replayed {} dead letters: {} came back as rows, 0 failed again",
            thousands(missing),
            thousands(missing)
        )),
        "{out}"
    );
    // Every event once, as DuckDB reads the raw input.
    let lake = p.lake();
    let counts = duckdb(&format!(
        "SELECT (SELECT count(*) FROM {all}), (SELECT count(DISTINCT event_id) FROM {all}), \
         (SELECT count(*) FROM {raw})",
        all = lake_table(&lake, "all_events"),
        raw = raw_events(raw)
    ));
    assert_eq!(counts, ["3000,3000,3000"]);
    let replayed = duckdb(&format!(
        "SELECT outcome, count(*) FROM {} GROUP BY 1",
        lake_table(&lake, "_replayed")
    ));
    assert_eq!(replayed, [format!("row,{missing}")]);

    // Nothing is brought back twice.
    let again = replay(&[]);
    assert!(again.contains("replayed 0 dead letters"), "{again}");
    let n = duckdb(&format!(
        "SELECT count(*) FROM {}",
        lake_table(&lake, "all_events")
    ));
    assert_eq!(n, ["3000"]);
}
