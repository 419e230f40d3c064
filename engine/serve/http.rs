//! The HTTP side of `weir serve`: pages, their JSON, one-off queries, commit events, metrics.

use std::convert::Infallible;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::Served;
use super::dashboards::{Dashboard, Kind, read_only};

/// Rows a panel or a JSON answer carries at most; the answer says when it was cut.
const MAX_JSON_ROWS: usize = 10_000;

const UPLOT_JS: &str = include_str!("assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("assets/uPlot.LICENSE");
const PAGE_JS: &str = include_str!("assets/dashboard.js");
const PAGE_CSS: &str = include_str!("assets/weir.css");

pub async fn serve(listener: tokio::net::TcpListener, served: Arc<Served>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(index))
        .route("/d/{name}", get(page))
        .route("/api/d/{name}", get(panels))
        .route("/api/query", get(query))
        .route("/api/events", get(events))
        .route("/assets/{file}", get(asset))
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .layer(middleware::from_fn_with_state(served.clone(), auth))
        .with_state(served);
    axum::serve(listener, app).await
}

/// With a password set, every request needs it: basic auth (any user) or a bearer token.
/// Without one (loopback), only requests for a loopback host name are served: a web page
/// cannot read the lake by pointing its own host name at 127.0.0.1 (DNS rebinding).
async fn auth(State(s): State<Arc<Served>>, req: Request, next: Next) -> Response {
    let Some(password) = &s.password else {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        if matches!(name, "localhost" | "127.0.0.1" | "[::1]" | "") {
            return next.run(req).await;
        }
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "weir serve on loopback answers only to localhost, 127.0.0.1 or [::1], not to host {host}; to serve other names, bind another address with {}",
                super::PASSWORD_ENV
            ),
        );
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let ok = match given.and_then(|v| v.split_once(' ')) {
        Some(("Bearer", token)) => token == password,
        Some(("Basic", b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|up| up.split_once(':').map(|(_, p)| p == password))
            .unwrap_or(false),
        _ => false,
    };
    if ok {
        return next.run(req).await;
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "weir serve needs its password (WEIR_SERVE_PASSWORD): basic auth with any user, or a bearer token\n",
    )
        .into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"weir\""),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct E {
        error: String,
    }
    (
        status,
        axum::Json(E {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn index(State(s): State<Arc<Served>>) -> Html<String> {
    let mut items = String::new();
    for d in s.dashboards.by_name.values() {
        items.push_str(&format!(
            "<li><a href=\"/d/{name}\">{title}</a> <span class=\"muted\">{n} panels</span></li>",
            name = escape(&d.name),
            title = escape(&d.title),
            n = d.panels.len()
        ));
    }
    if items.is_empty() {
        items = "<li class=\"muted\">No dashboards: start with --dashboards DIR (dashboards/&lt;name&gt;.toml)</li>".into();
    }
    let tables = s
        .lake
        .names()
        .iter()
        .map(|t| format!("<code>{}</code>", escape(t)))
        .collect::<Vec<_>>()
        .join(" ");
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Weir</title>\
         <link rel=\"stylesheet\" href=\"/assets/weir.css\"></head><body>\
         <header><h1>Weir</h1><span class=\"muted\">{lake}</span></header><main>\
         <h2>Dashboards</h2><ul>{items}</ul>\
         <h2>Tables</h2><p>{tables}</p>\
         <p class=\"muted\">Query: <code>/api/query?sql=...</code> (&amp;format=csv or arrow). \
         Metrics: <a href=\"/metrics\">/metrics</a>.</p></main></body></html>",
        lake = escape(s.lake.url().as_str()),
    ))
}

async fn page(State(s): State<Arc<Served>>, Path(name): Path<String>) -> Response {
    let Some(d) = s.dashboards.by_name.get(&name) else {
        return not_found(&s, &name);
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"stylesheet\" href=\"/assets/uPlot.min.css\">\
         <link rel=\"stylesheet\" href=\"/assets/weir.css\"></head>\
         <body data-dashboard=\"{name}\"><header><h1>{title}</h1>\
         <span id=\"freshness\" class=\"muted\">loading…</span></header>\
         <main id=\"panels\" class=\"grid\"></main>\
         <footer class=\"muted\">Weir · charts by uPlot (MIT, <a href=\"/assets/uPlot.LICENSE\">licence</a>)</footer>\
         <script src=\"/assets/uPlot.iife.min.js\"></script>\
         <script src=\"/assets/dashboard.js\"></script></body></html>",
        title = escape(&d.title),
        name = escape(&d.name),
    ))
    .into_response()
}

fn not_found(s: &Served, name: &str) -> Response {
    let names: Vec<_> = s.dashboards.by_name.keys().cloned().collect();
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no dashboard \"{name}\"; there are: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ),
    )
}

/// One query's answer as JSON.
#[derive(Debug, Serialize)]
pub struct Table {
    pub columns: Vec<String>,
    /// Per column: "number", "time", "text" or "bool" (how the page draws it).
    pub types: Vec<&'static str>,
    pub rows: Vec<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[derive(Debug, Serialize)]
struct PanelAnswer {
    title: String,
    kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(flatten)]
    table: Option<Table>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct DashboardAnswer {
    title: String,
    freshness: super::Freshness,
    /// The server's clock, for the lag of the newest event.
    now: chrono::DateTime<chrono::Utc>,
    elapsed_ms: u64,
    panels: Vec<PanelAnswer>,
}

async fn panels(State(s): State<Arc<Served>>, Path(name): Path<String>) -> Response {
    let Some(d) = s.dashboards.by_name.get(&name) else {
        return not_found(&s, &name);
    };
    let started = std::time::Instant::now();
    // Read before the lake is: a commit is announced after it is in the tables, so the panels
    // hold at least the batch this names.
    let freshness = s.freshness.borrow().clone();
    if let Err(e) = s.refresh().await {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    let answers = run_panels(&s, d).await;
    axum::Json(DashboardAnswer {
        title: d.title.clone(),
        freshness,
        now: chrono::Utc::now(),
        elapsed_ms: started.elapsed().as_millis() as u64,
        panels: answers,
    })
    .into_response()
}

/// Every panel's query, at once, on the lake as just refreshed.
async fn run_panels(s: &Served, d: &Dashboard) -> Vec<PanelAnswer> {
    futures::future::join_all(d.panels.iter().map(|p| async {
        let (table, error) = match collect(s, &p.sql, MAX_JSON_ROWS).await {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e)),
        };
        PanelAnswer {
            title: p.title.clone(),
            kind: p.kind,
            x: p.x.clone(),
            table,
            error,
        }
    }))
    .await
}

/// Runs a read-only query, keeping at most `limit` rows, for at most [`super::QUERY_TIMEOUT`].
async fn collect(s: &Served, sql: &str, limit: usize) -> Result<Table, String> {
    tokio::time::timeout(super::QUERY_TIMEOUT, collect_all(s, sql, limit))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the query ran for more than {} s and was stopped",
                super::QUERY_TIMEOUT.as_secs()
            ))
        })
}

async fn collect_all(s: &Served, sql: &str, limit: usize) -> Result<Table, String> {
    let mut stream = execute(s, sql).await?;
    let schema = stream.schema();
    let mut batches = Vec::new();
    let mut rows = 0;
    let mut truncated = false;
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| e.to_string())?;
        if rows + b.num_rows() > limit {
            batches.push(b.slice(0, limit - rows));
            truncated = true;
            break;
        }
        rows += b.num_rows();
        batches.push(b);
    }
    to_json(&schema, &batches, truncated).map_err(|e| e.to_string())
}

async fn execute(s: &Served, sql: &str) -> Result<SendableRecordBatchStream, String> {
    read_only(sql)?;
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = s
        .ctx
        .sql_with_options(sql, options)
        .await
        .map_err(|e| e.to_string())?;
    df.execute_stream().await.map_err(|e| e.to_string())
}

/// Arrow to `{"columns", "types", "rows"}`: numbers (decimals too) as JSON numbers, times as
/// ISO-8601 strings, nulls as null.
pub fn to_json(
    schema: &Schema,
    batches: &[RecordBatch],
    truncated: bool,
) -> Result<Table, arrow::error::ArrowError> {
    let kinds: Vec<&'static str> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            t if t.is_numeric() => "number",
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => "time",
            DataType::Boolean => "bool",
            _ => "text",
        })
        .collect();
    // Columns named by position, so that equal names do not collide in the objects; decimals as
    // f64: arrow-json writes them as strings, which no chart reads.
    let json_schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let t = match f.data_type() {
                    DataType::Decimal32(..)
                    | DataType::Decimal64(..)
                    | DataType::Decimal128(..)
                    | DataType::Decimal256(..) => DataType::Float64,
                    t => t.clone(),
                };
                Field::new(format!("c{i}"), t, true)
            })
            .collect::<Vec<_>>(),
    ));
    let mut buf = Vec::new();
    let mut w = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(&mut buf);
    for b in batches {
        let columns = b
            .columns()
            .iter()
            .zip(json_schema.fields())
            .map(|(c, f)| cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        w.write(&RecordBatch::try_new(json_schema.clone(), columns)?)?;
    }
    w.finish()?;
    drop(w);
    let objects: Vec<serde_json::Map<String, serde_json::Value>> = if buf.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&buf)
            .map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))?
    };
    let rows = objects
        .into_iter()
        .map(|mut o| {
            (0..kinds.len())
                .map(|i| o.remove(&format!("c{i}")).unwrap_or_default())
                .collect()
        })
        .collect();
    Ok(Table {
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        types: kinds,
        rows,
        truncated,
    })
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    sql: Option<String>,
    format: Option<String>,
}

async fn query(State(s): State<Arc<Served>>, Query(q): Query<QueryParams>) -> Response {
    let Some(sql) = q.sql.filter(|s| !s.trim().is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the query as ?sql=..., e.g. /api/query?sql=select%20count(*)%20from%20sales",
        );
    };
    if let Err(e) = s.refresh().await {
        return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    }
    match q.format.as_deref().unwrap_or("json") {
        "json" => match collect(&s, &sql, MAX_JSON_ROWS).await {
            Ok(t) => axum::Json(t).into_response(),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        f @ ("csv" | "arrow") => match execute(&s, &sql).await {
            Ok(stream) => streamed(stream, f == "csv"),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        other => error(
            StatusCode::BAD_REQUEST,
            format!("format={other} is not one of json, csv, arrow"),
        ),
    }
}

/// A query's batches as CSV (with a header) or an Arrow IPC stream, written as they come.
fn streamed(stream: SendableRecordBatchStream, csv: bool) -> Response {
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/vnd.apache.arrow.stream"
    };
    let encoder = match Encoder::new(&stream.schema(), csv) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let body = futures::stream::unfold(Some((stream, encoder)), |state| async move {
        let (mut stream, mut encoder) = state?;
        match stream.next().await {
            Some(Ok(b)) => {
                let bytes = encoder.write(&b);
                Some((bytes, Some((stream, encoder))))
            }
            Some(Err(e)) => Some((Err(std::io::Error::other(e.to_string())), None)),
            None => Some((encoder.finish(), None)),
        }
    });
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// Encodes batches one at a time, handing out the bytes of each.
enum Encoder {
    /// The schema while the header is still to be written.
    Csv(Option<arrow::datatypes::SchemaRef>),
    Arrow(Box<arrow::ipc::writer::StreamWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(
        schema: &arrow::datatypes::SchemaRef,
        csv: bool,
    ) -> Result<Self, arrow::error::ArrowError> {
        Ok(if csv {
            Encoder::Csv(Some(schema.clone()))
        } else {
            Encoder::Arrow(Box::new(arrow::ipc::writer::StreamWriter::try_new(
                Vec::new(),
                schema,
            )?))
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> std::io::Result<bytes::Bytes> {
        match self {
            Encoder::Csv(header) => {
                let mut buf = Vec::new();
                arrow::csv::WriterBuilder::new()
                    .with_header(header.take().is_some())
                    .build(&mut buf)
                    .write(batch)
                    .map_err(std::io::Error::other)?;
                Ok(buf.into())
            }
            Encoder::Arrow(w) => {
                w.write(batch).map_err(std::io::Error::other)?;
                Ok(std::mem::take(w.get_mut()).into())
            }
        }
    }

    fn finish(&mut self) -> std::io::Result<bytes::Bytes> {
        match self {
            // No rows: the header alone.
            Encoder::Csv(Some(schema)) => {
                let empty = RecordBatch::new_empty(schema.clone());
                self.write(&empty)
            }
            Encoder::Csv(None) => Ok(bytes::Bytes::new()),
            Encoder::Arrow(w) => {
                w.finish().map_err(std::io::Error::other)?;
                Ok(std::mem::take(w.get_mut()).into())
            }
        }
    }
}

/// One `commit` event per commit (its freshness), so pages re-query without polling.
async fn events(
    State(s): State<Arc<Served>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let rx = s.freshness.clone();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let f = rx.borrow_and_update().clone();
        let event = Event::default()
            .event("commit")
            .json_data(&f)
            .unwrap_or_else(|_| Event::default().event("commit"));
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "uPlot.iife.min.js" => (UPLOT_JS, "text/javascript; charset=utf-8"),
        "uPlot.min.css" => (UPLOT_CSS, "text/css; charset=utf-8"),
        "uPlot.LICENSE" => (UPLOT_LICENSE, "text/plain; charset=utf-8"),
        "dashboard.js" => (PAGE_JS, "text/javascript; charset=utf-8"),
        "weir.css" => (PAGE_CSS, "text/css; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn metrics(State(s): State<Arc<Served>>) -> Response {
    match &s.metrics {
        Some(h) => h.render().into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "metrics are served inside a run: weir run JOB --serve",
        ),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
