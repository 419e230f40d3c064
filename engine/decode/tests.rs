use super::*;
use crate::job::schema::Column;
use crate::job::{CsvConfig, InputSchema};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};

fn input(format: InputFormat) -> Input {
    let columns = [
        ("id", "string not null"),
        ("ts", "timestamp"),
        ("n", "bigint"),
        ("price", "decimal(10,2)"),
    ]
    .iter()
    .map(|(n, t)| Column::parse(n, t).unwrap())
    .collect();
    Input {
        format,
        schema: InputSchema { columns },
        time_column: None,
        max_record_bytes: 200,
        csv: CsvConfig::default(),
    }
}

fn chunk(lines: &[&[u8]]) -> RawChunk {
    let mut data = Vec::new();
    let mut bounds = Vec::new();
    for l in lines {
        let s = data.len() as u32;
        data.extend_from_slice(l);
        bounds.push((s, data.len() as u32));
        data.push(b'\n');
    }
    RawChunk {
        shard: "f.jsonl".into(),
        data: data.into(),
        positions: (1..=lines.len() as u64).map(Position::Line).collect(),
        bounds,
        rejected: vec![],
        arrived_ms: None,
        input_bytes: 0,
        buffers: None,
    }
}

#[test]
fn good_rows_survive_and_each_bad_kind_is_a_dead_letter() {
    let big = format!(r#"{{"id":"x","pad":"{}"}}"#, "a".repeat(300));
    let lines: Vec<&[u8]> = vec![
        br#"{"id":"a","ts":"2025-06-01T10:00:00.123Z","n":1,"price":"9.99"}"#,
        br#"{"id":"b","ts":1748772000000,"n":2,"price":1.5}"#,
        b"{not json",
        br#"{"ts":"2025-06-01T10:00:00Z"}"#,
        br#"{"id":"c","n":"many"}"#,
        b"{\"id\":\"\xff\xfe\"}",
        big.as_bytes(),
        br#"{"id":"d"} {"id":"e"}"#,
        br#"{"id":"f","ts":"2025-06-01 12:00:00+02:00"}"#,
    ];
    let mut d = Decoder::new(&input(InputFormat::Json));
    let out = d.decode(&chunk(&lines));
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 3);
    let lines_dead: Vec<_> = out.dead.iter().map(|d| d.position.clone()).collect();
    assert_eq!(
        lines_dead,
        [3, 4, 5, 6, 7, 8].map(Position::Line).to_vec(),
        "{:#?}",
        out.dead
    );
    assert!(out.dead[1].reason.contains("id"), "{}", out.dead[1].reason);
    assert!(out.dead[3].reason.contains("UTF-8"));
    assert!(out.dead[4].reason.contains("max_record_bytes"));
    assert_eq!(&out.dead[0].raw[..], b"{not json");

    let all = arrow::compute::concat_batches(&out.batches[0].schema(), &out.batches).unwrap();
    let ts = all.column(1).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 1_748_772_000_123_000);
    assert_eq!(ts.value(1), 1_748_772_000_000_000, "epoch millis");
    assert_eq!(ts.value(2), 1_748_772_000_000_000, "zone offset applied");
    assert_eq!(all.column(2).as_primitive::<Int64Type>().value(1), 2);
    assert!(all.column(3).is_null(2));
}

#[test]
fn csv_rows_and_dead_letters() {
    let lines: Vec<&[u8]> = vec![
        b"a,2025-06-01T10:00:00Z,1,9.99",
        b"b,yesterday,2,1.00",
        b"c,,3",
        b",2025-06-01T10:00:00Z,4,1.00",
    ];
    let mut d = Decoder::new(&input(InputFormat::Csv));
    let out = d.decode(&chunk(&lines));
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 1, "{:#?}", out.dead);
    assert_eq!(out.dead.len(), 3);
    assert_eq!(out.records, 4);
}

#[test]
fn csv_characters_split_by_a_delimiter_are_not_valid_utf8() {
    // The fields joined (`a€`) are valid UTF-8; each field alone is not.
    let lines: Vec<&[u8]> = vec![b"a\xE2,\x82\xAC,1,9.99", b"ok,2025-06-01T10:00:00Z,2,1.00"];
    let mut d = Decoder::new(&input(InputFormat::Csv));
    let out = d.decode(&chunk(&lines));
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 1, "{:#?}", out.dead);
    assert_eq!(out.dead.len(), 1);
    assert_eq!(out.dead[0].position, Position::Line(1));
    assert!(
        out.dead[0].reason.contains("UTF-8"),
        "{}",
        out.dead[0].reason
    );
}

fn input_with(columns: &[(&str, &str)], format: InputFormat) -> Input {
    Input {
        schema: InputSchema {
            columns: columns
                .iter()
                .map(|(n, t)| Column::parse(n, t).unwrap())
                .collect(),
        },
        ..input(format)
    }
}

/// Each line, and the start of its dead-letter reason (None: it is a row).
fn outcomes(d: &mut Decoder, lines: &[&[u8]]) -> Vec<Option<String>> {
    let out = d.decode(&chunk(lines));
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    let mut result = vec![None; lines.len()];
    for dl in &out.dead {
        let Position::Line(l) = dl.position else {
            unreachable!()
        };
        result[l as usize - 1] = Some(dl.reason.clone());
    }
    assert_eq!(rows + out.dead.len(), lines.len(), "{:#?}", out.dead);
    result
}

#[test]
fn values_no_warehouse_takes_are_dead_letters_with_the_column_and_the_fix() {
    let columns = [
        ("id", "string"),
        ("ts", "timestamp"),
        ("us", "timestamp(us)"),
        ("day", "date"),
        ("x", "double"),
        ("y", "float"),
    ];
    let mut d = Decoder::new(&Input {
        max_record_bytes: 1 << 20,
        ..input_with(&columns, InputFormat::Json)
    });
    let deep = format!(
        r#"{{"id":"deep","other":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let lines: Vec<&[u8]> = vec![
        br#"{"id":"ok","ts":1748772000000,"us":1748772000000000,"day":"2025-06-01","x":1.5,"y":2}"#,
        // Epoch microseconds in a millisecond column: the year 57,000.
        br#"{"id":"a","ts":1748772000000000}"#,
        br#"{"id":"b","us":1748772000000}"#,
        br#"{"id":"c","ts":"1899-12-31T23:59:59Z"}"#,
        br#"{"id":"d","day":"2200-01-01"}"#,
        br#"{"id":"e","ts":-9223372036854775808}"#,
        br#"{"id":"f","x":"NaN"}"#,
        br#"{"id":"g","x":NaN}"#,
        br#"{"id":"h","y":"-Infinity"}"#,
        br#"{"id":"i","x":1e400}"#,
        b"{\"id\":\"nul\\u0000in\"}",
        br#"{"id":{"nested":{"deeper":[1,2]}}}"#,
        deep.as_bytes(),
        br#"{"id":"edge","ts":"1900-01-01T00:00:00Z","day":"2199-12-31"}"#,
    ];
    let got = outcomes(&mut d, &lines);
    let starts = |i: usize, text: &str| {
        let reason = got[i].as_deref().unwrap_or("(a row)");
        assert!(reason.contains(text), "line {}: {reason}", i + 1);
    };
    assert_eq!(got[0], None);
    starts(1, "column ts: +57");
    starts(1, "are milliseconds");
    assert_eq!(
        got[2], None,
        "milliseconds in a micros column are January 1970: in range"
    );
    starts(3, "column ts: 1899-12-31T23:59:59Z");
    starts(4, "column day: 2200-01-01 is outside the years 1900–2199");
    starts(5, "column ts:");
    starts(6, "column x: NaN is not a finite number");
    assert!(got[7].is_some(), "a bare NaN is not JSON");
    starts(8, "column y: -inf is not a finite number");
    assert!(got[9].is_some(), "1e400: {:?}", got[9]);
    starts(10, "NUL character");
    assert!(got[11].is_some(), "an object in a string column");
    assert_eq!(
        got[12], None,
        "deep nesting in a field outside the schema is ignored"
    );
    assert_eq!(got[13], None, "the range's edges are inside");
}

#[test]
fn csv_values_get_the_same_checks() {
    let columns = [("id", "string"), ("ts", "timestamp"), ("x", "double")];
    let mut d = Decoder::new(&input_with(&columns, InputFormat::Csv));
    let lines: Vec<&[u8]> = vec![
        b"a,2025-06-01T10:00:00Z,1.5",
        b"b,3025-06-01T10:00:00Z,1.5",
        b"c,,NaN",
        b"\"multi\nline\",,2",
        b"nul\0,,1",
    ];
    let got = outcomes(&mut d, &lines);
    assert_eq!(got[0], None);
    assert!(got[1].as_deref().unwrap().contains("column ts: 3025"));
    assert!(got[2].as_deref().unwrap().contains("column x: NaN"));
    assert_eq!(got[3], None, "a quoted newline is part of the field");
    assert!(got[4].as_deref().unwrap().contains("NUL"));
}

#[test]
fn a_decoder_kept_across_chunks_decodes_each_alike() {
    // The pipeline keeps decoders between chunks: a later, shorter chunk with a bad line and a
    // line holding two records is judged as a fresh decoder would judge it.
    let mut d = Decoder::new(&input(InputFormat::Json));
    let many: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"id":"r{i}","n":{i}}}"#))
        .collect();
    let first = d.decode(&chunk(
        &many.iter().map(|l| l.as_bytes()).collect::<Vec<_>>(),
    ));
    assert_eq!(
        first.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        50
    );
    assert!(first.dead.is_empty());
    for _ in 0..2 {
        let lines: Vec<&[u8]> = vec![
            br#"{"id":"a","n":1}"#,
            br#"{"id":"b"} {"id":"c"}"#,
            b"{broken",
            br#"{"id":"d","n":4}"#,
        ];
        let out = d.decode(&chunk(&lines));
        let all = arrow::compute::concat_batches(&out.batches[0].schema(), &out.batches).unwrap();
        let ids: Vec<&str> = all.column(0).as_string::<i32>().iter().flatten().collect();
        assert_eq!(ids, ["a", "d"]);
        let dead: Vec<_> = out.dead.iter().map(|d| d.position.clone()).collect();
        assert_eq!(dead, [2, 3].map(Position::Line).to_vec(), "{:#?}", out.dead);
        assert!(
            out.dead[0].reason.contains("2 records"),
            "{}",
            out.dead[0].reason
        );
    }
}
