//! Malformed input of each kind lands in `_dead_letters` with its position and reason; the good
//! records of the same file are written as usual.

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
