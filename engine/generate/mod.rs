//! Deterministic, realistic e-commerce sample data: shopper sessions of product views, add-to-carts,
//! purchases (a few % of views) and refunds, supplier restocks, plus a `products.csv` with
//! category, price and stock. Stock is kept as events go out: a product whose stock falls below
//! the reorder point is restocked a while later, and one a purchase would take below zero is
//! restocked first, so stock never goes negative.
//! Events come in time order, sessions interleaved, as a shop's stream delivers them (so a window
//! output with a small lateness sees them on time).
//!
//! The data holds signals a model can learn (the sample job's models are trained on it, see
//! `models/train.py`): whether an add-to-cart is bought depends on the price, the device and the
//! hour of day ([`purchase_probability`]), and each category sells most at its own hour of the day
//! ([`category_cycle`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ADJECTIVES: [&str; 12] = [
    "classic", "organic", "compact", "deluxe", "everyday", "vintage", "smart", "soft", "sturdy",
    "bright", "mini", "pro",
];
/// Product kinds and their category.
const NOUNS: [(&str, &str); 12] = [
    ("mug", "kitchen"),
    ("tee", "apparel"),
    ("sneaker", "shoes"),
    ("lamp", "home"),
    ("blender", "kitchen"),
    ("serum", "beauty"),
    ("puzzle", "toys"),
    ("headphones", "electronics"),
    ("planter", "garden"),
    ("hoodie", "apparel"),
    ("kettle", "kitchen"),
    ("backpack", "accessories"),
];
/// Probability that a product view leads to an add-to-cart.
const P_CART: f64 = 0.12;
/// Share of sessions on a phone (the rest on a desktop).
const P_MOBILE: f64 = 0.6;
/// Hour of day at which each category sells most.
const CATEGORY_PEAK: [(&str, f64); 9] = [
    ("kitchen", 8.0),
    ("garden", 10.0),
    ("accessories", 12.0),
    ("apparel", 13.0),
    ("toys", 16.0),
    ("shoes", 17.0),
    ("home", 20.0),
    ("electronics", 21.0),
    ("beauty", 22.0),
];
/// Probability that a purchase is refunded.
const P_REFUND: f64 = 0.06;
/// Stock below which a product is reordered.
const REORDER_POINT: i64 = 20;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    pub events: u64,
    pub products: u32,
    pub seed: u64,
    pub files: u32,
    pub gzip: bool,
    pub start: DateTime<Utc>,
    /// Time the events span.
    pub span: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            events: 10_000,
            products: 200,
            seed: 42,
            files: 1,
            gzip: false,
            start: Utc.with_ymd_and_hms(2025, 6, 1, 0, 0, 0).unwrap(),
            span: Duration::hours(24),
        }
    }
}

/// A product of the catalogue.
#[derive(Debug, Clone)]
pub struct Product {
    pub id: u32,
    pub name: String,
    pub category: &'static str,
    pub price_cents: u64,
    pub stock: u32,
}

/// Generated files.
#[derive(Debug)]
pub struct Generated {
    pub products: PathBuf,
    pub event_files: Vec<PathBuf>,
    pub events: u64,
}

/// The product catalogue for a seed.
pub fn products(opts: &Options) -> Vec<Product> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5eed_cafe);
    (1..=opts.products)
        .map(|id| {
            let (noun, category) = NOUNS[rng.random_range(0..NOUNS.len())];
            let name = format!(
                "{} {noun}",
                ADJECTIVES[rng.random_range(0..ADJECTIVES.len())]
            );
            // Log-uniform prices from about 4 to 300, ending in .99 or .49.
            let dollars = (4.0f64 * (75.0f64).powf(rng.random::<f64>())).floor() as u64;
            let cents = if rng.random_bool(0.7) { 99 } else { 49 };
            let stock = if rng.random_bool(0.15) {
                rng.random_range(0..15)
            } else {
                rng.random_range(20..500)
            };
            Product {
                id,
                name,
                category,
                price_cents: dollars * 100 + cents,
                stock,
            }
        })
        .collect()
}

/// Fractional hour of day (UTC) of `t`.
fn hour_of_day(t: DateTime<Utc>) -> f64 {
    use chrono::Timelike;
    t.num_seconds_from_midnight() as f64 / 3600.0
}

/// How much of its category is viewed at an hour, relative to the category's daily mean: a
/// daily cycle from 0.2 to 1.8 peaking at the category's hour.
pub fn category_cycle(category: &str, hour: f64) -> f64 {
    let peak = CATEGORY_PEAK
        .iter()
        .find(|(c, _)| *c == category)
        .map_or(12.0, |(_, h)| *h);
    1.0 + 0.8 * (std::f64::consts::TAU * (hour - peak) / 24.0).cos()
}

/// Probability that an add-to-cart is bought (35% on average): lower for dearer products and on
/// phones, higher in the evening and for several units.
pub fn purchase_probability(price: f64, quantity: u32, hour: f64, mobile: bool) -> f64 {
    let logit = -0.15 - 0.9 * (price.max(1.0).ln() - 3.0) - 0.8 * f64::from(u8::from(mobile))
        + 0.9 * (std::f64::consts::TAU * (hour - 20.0) / 24.0).cos()
        + 0.3 * f64::from(u8::from(quantity > 1));
    1.0 / (1.0 + (-logit).exp())
}

/// Writes `products.csv` and `events/part-NNNNN.jsonl[.gz]` under `out`.
pub fn write(out: &Path, opts: &Options) -> std::io::Result<Generated> {
    std::fs::create_dir_all(out.join("events"))?;
    let catalogue = products(opts);
    let products_path = out.join("products.csv");
    let mut p = std::io::BufWriter::new(std::fs::File::create(&products_path)?);
    writeln!(p, "product_id,name,category,price,stock_on_hand")?;
    for prod in &catalogue {
        writeln!(
            p,
            "{},{},{},{}.{:02},{}",
            prod.id,
            prod.name,
            prod.category,
            prod.price_cents / 100,
            prod.price_cents % 100,
            prod.stock
        )?;
    }
    p.flush()?;

    let files = opts.files.max(1) as u64;
    let per_file = opts.events.div_ceil(files);
    let mut events = EventStream::new(opts, catalogue);
    let mut event_files = Vec::new();
    for f in 0..files {
        let n = per_file.min(opts.events.saturating_sub(f * per_file));
        let ext = if opts.gzip { "jsonl.gz" } else { "jsonl" };
        let path = out.join("events").join(format!("part-{f:05}.{ext}"));
        let file = std::fs::File::create(&path)?;
        let mut w: Box<dyn Write> = if opts.gzip {
            Box::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::fast(),
            ))
        } else {
            Box::new(file)
        };
        let mut buf = std::io::BufWriter::with_capacity(1 << 20, &mut w);
        let mut line = String::with_capacity(256);
        for _ in 0..n {
            line.clear();
            events.next_line(&mut line);
            buf.write_all(line.as_bytes())?;
        }
        buf.flush()?;
        drop(buf);
        w.flush()?;
        drop(w);
        event_files.push(path);
    }
    Ok(Generated {
        products: products_path,
        event_files,
        events: opts.events,
    })
}

/// One generated event.
struct Event {
    time: DateTime<Utc>,
    /// Shopper events have a session, user and device; restocks have none.
    session: Option<std::sync::Arc<str>>,
    user: Option<u64>,
    device: Option<&'static str>,
    kind: &'static str,
    product: u32,
    quantity: Option<u32>,
    price_cents: u64,
    order: Option<u64>,
}

/// A pending event, ordered by time (then by when it was made: deterministic).
struct Pending(i64, u64, Event);

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: `BinaryHeap` is a max-heap, the earliest event comes first.
        (other.0, other.1).cmp(&(self.0, self.1))
    }
}

/// Produces events of interleaved sessions in time order, as JSON lines.
pub struct EventStream {
    rng: ChaCha8Rng,
    catalogue: Vec<Product>,
    users: u64,
    clock: DateTime<Utc>,
    /// Mean gap between session starts.
    gap_ms: f64,
    /// Events of the sessions started so far, earliest first.
    queue: std::collections::BinaryHeap<Pending>,
    made: u64,
    session: String,
    orders: u64,
    /// Stock on hand per product (index: id - 1), as the events written so far leave it.
    stock: Vec<i64>,
    /// Products with a restock on its way.
    reordered: Vec<bool>,
}

impl EventStream {
    /// Events over `catalogue` (see [`products`]).
    pub fn new(opts: &Options, catalogue: Vec<Product>) -> Self {
        let sessions = (opts.events as f64 / 4.5).max(1.0);
        let stock = catalogue.iter().map(|p| p.stock as i64).collect();
        let reordered = vec![false; catalogue.len()];
        Self {
            stock,
            reordered,
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            catalogue,
            users: (opts.events / 20).max(100),
            clock: opts.start,
            gap_ms: opts.span.num_milliseconds() as f64 / sessions,
            queue: Default::default(),
            made: 0,
            session: String::new(),
            orders: 0,
        }
    }

    /// A product viewed at `t`, skewed so a few products get most views, each category most
    /// at its hour of the day.
    fn pick_product(&mut self, t: DateTime<Utc>) -> &Product {
        let n = self.catalogue.len();
        let hour = hour_of_day(t);
        loop {
            let i = (((n as f64) * self.rng.random::<f64>().powi(3)) as usize).min(n - 1);
            let category = self.catalogue[i].category;
            if self.rng.random::<f64>() * 1.8 < category_cycle(category, hour) {
                return &self.catalogue[i];
            }
        }
    }

    fn push(&mut self, e: Event) {
        self.made += 1;
        self.queue
            .push(Pending(e.time.timestamp_millis(), self.made, e));
    }

    /// Starts the next session at `clock` and queues its events; moves `clock` to the next start.
    fn new_session(&mut self) {
        let user = self.rng.random_range(1..=self.users);
        let session: std::sync::Arc<str> =
            format!("s-{:012x}", self.rng.random::<u64>() & 0xffff_ffff_ffff).into();
        let device = if self.rng.random_bool(P_MOBILE) {
            "mobile"
        } else {
            "desktop"
        };
        let mut t = self.clock;
        let gap = -self.gap_ms * (1.0 - self.rng.random::<f64>()).ln();
        self.clock += Duration::milliseconds(gap as i64);
        let views = 1 + (-(1.0 - self.rng.random::<f64>()).ln() * 3.0) as usize;
        for _ in 0..views.min(20) {
            t += Duration::milliseconds(self.rng.random_range(2_000..60_000));
            let p = self.pick_product(t).clone();
            self.push(Event {
                time: t,
                session: Some(session.clone()),
                user: Some(user),
                device: Some(device),
                kind: "view",
                product: p.id,
                quantity: None,
                price_cents: p.price_cents,
                order: None,
            });
            if !self.rng.random_bool(P_CART) {
                continue;
            }
            let qty = if self.rng.random_bool(0.8) {
                1
            } else {
                self.rng.random_range(2..=4)
            };
            t += Duration::milliseconds(self.rng.random_range(1_000..30_000));
            self.push(Event {
                time: t,
                session: Some(session.clone()),
                user: Some(user),
                device: Some(device),
                kind: "add_to_cart",
                product: p.id,
                quantity: Some(qty),
                price_cents: p.price_cents,
                order: None,
            });
            let p_buy = purchase_probability(
                p.price_cents as f64 / 100.0,
                qty,
                hour_of_day(t),
                device == "mobile",
            );
            if !self.rng.random_bool(p_buy) {
                continue;
            }
            self.orders += 1;
            let price = if self.rng.random_bool(0.2) {
                p.price_cents * 9 / 10
            } else {
                p.price_cents
            };
            t += Duration::milliseconds(self.rng.random_range(10_000..120_000));
            self.push(Event {
                time: t,
                session: Some(session.clone()),
                user: Some(user),
                device: Some(device),
                kind: "purchase",
                product: p.id,
                quantity: Some(qty),
                price_cents: price,
                order: Some(self.orders),
            });
            if self.rng.random_bool(P_REFUND) {
                let later = t + Duration::minutes(self.rng.random_range(5..240));
                self.push(Event {
                    time: later,
                    session: Some(session.clone()),
                    user: Some(user),
                    device: Some(device),
                    kind: "refund",
                    product: p.id,
                    quantity: Some(qty),
                    price_cents: price,
                    order: Some(self.orders),
                });
            }
        }
    }

    /// Keeps stock for the event about to go out; returns the event to write: a restock first
    /// when a purchase would take its product's stock below zero (the purchase is queued again).
    fn keep_stock(&mut self, e: Event) -> Event {
        let at = e.product as usize - 1;
        let qty = e.quantity.unwrap_or(0) as i64;
        match e.kind {
            "purchase" if self.stock[at] < qty => {
                let restock = self.restock(&e);
                self.made += 1;
                self.queue
                    .push(Pending(e.time.timestamp_millis(), self.made, e));
                self.stock[at] += restock.quantity.unwrap_or(0) as i64;
                self.reordered[at] = false;
                return restock;
            }
            "purchase" => {
                self.stock[at] -= qty;
                if self.stock[at] < REORDER_POINT && !self.reordered[at] {
                    // The supplier delivers in half an hour to a few hours.
                    let mut later = self.restock(&e);
                    later.time += Duration::minutes(self.rng.random_range(30..240));
                    self.reordered[at] = true;
                    self.push(later);
                }
            }
            "refund" => self.stock[at] += qty,
            "restock" => {
                self.stock[at] += qty;
                self.reordered[at] = false;
            }
            _ => {}
        }
        e
    }

    /// A supplier delivery of `e`'s product at `e`'s time.
    fn restock(&mut self, e: &Event) -> Event {
        Event {
            time: e.time,
            session: None,
            user: None,
            device: None,
            kind: "restock",
            product: e.product,
            quantity: Some(self.rng.random_range(50..=200)),
            price_cents: e.price_cents,
            order: None,
        }
    }

    /// The session of the event last written (a natural partition key; a restock's is its
    /// product, `p-<id>`).
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Appends the next event as one JSON line.
    pub fn next_line(&mut self, out: &mut String) {
        self.next_line_at(out, None)
    }

    /// Appends the next event, stamped `now` instead of simulated time when given (live streams).
    pub fn next_line_at(&mut self, out: &mut String, now: Option<DateTime<Utc>>) {
        use std::fmt::Write as _;
        // Sessions start at `clock` or later, and their events come after their start: every
        // queued event earlier than `clock` can go out.
        while self
            .queue
            .peek()
            .is_none_or(|p| p.0 >= self.clock.timestamp_millis())
        {
            self.new_session();
        }
        let Pending(_, _, e) = self.queue.pop().expect("a session was started");
        let mut e = self.keep_stock(e);
        self.session.clear();
        match &e.session {
            Some(s) => self.session.push_str(s),
            None => {
                use std::fmt::Write as _;
                let _ = write!(self.session, "p-{}", e.product);
            }
        }
        if let Some(now) = now {
            e.time = now;
        }
        let id = self.rng.random::<u128>();
        let _ = write!(
            out,
            r#"{{"event_id":"{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}","event_time":"{}","event_type":"{}""#,
            (id >> 96) as u32,
            (id >> 80) as u16,
            (id >> 68) as u16 & 0xfff,
            ((id >> 52) as u16 & 0x3fff) | 0x8000,
            id as u64 & 0xffff_ffff_ffff,
            e.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            e.kind,
        );
        if let (Some(session), Some(user)) = (&e.session, e.user) {
            let _ = write!(out, r#","session_id":"{session}","user_id":{user}"#);
        }
        if let Some(device) = e.device {
            let _ = write!(out, r#","device":"{device}""#);
        }
        let _ = write!(out, r#","product_id":{}"#, e.product);
        if let Some(q) = e.quantity {
            let _ = write!(out, r#","quantity":{q}"#);
        }
        let _ = write!(
            out,
            r#","price":{}.{:02}"#,
            e.price_cents / 100,
            e.price_cents % 100
        );
        if let Some(o) = e.order {
            let _ = write!(out, r#","order_id":"o-{o:08}""#);
        }
        out.push_str("}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_plausible() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            events: 20_000,
            ..Default::default()
        };
        let a = write(&dir.path().join("a"), &opts).unwrap();
        let b = write(&dir.path().join("b"), &opts).unwrap();
        let text = std::fs::read_to_string(&a.event_files[0]).unwrap();
        assert_eq!(text, std::fs::read_to_string(&b.event_files[0]).unwrap());
        assert_eq!(text.lines().count(), 20_000);
        let views = text.matches("\"view\"").count() as f64;
        let buys = text.matches("\"purchase\"").count() as f64;
        let rate = buys / views;
        assert!((0.01..0.10).contains(&rate), "conversion {rate}");
        assert!(text.contains("\"refund\""));
        assert!(text.contains("\"restock\""));
    }

    #[test]
    fn stock_never_goes_negative() {
        let opts = Options {
            events: 50_000,
            products: 20,
            ..Default::default()
        };
        let catalogue = products(&opts);
        let mut stock: Vec<i64> = catalogue.iter().map(|p| p.stock as i64).collect();
        let mut events = EventStream::new(&opts, catalogue);
        let mut line = String::new();
        let (mut restocks, mut purchases) = (0, 0);
        for _ in 0..opts.events {
            line.clear();
            events.next_line(&mut line);
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let at = v["product_id"].as_u64().unwrap() as usize - 1;
            let qty = v["quantity"].as_i64().unwrap_or(0);
            match v["event_type"].as_str().unwrap() {
                "purchase" => {
                    stock[at] -= qty;
                    purchases += 1;
                }
                "refund" => stock[at] += qty,
                "restock" => {
                    stock[at] += qty;
                    restocks += 1;
                    assert!(v.get("session_id").is_none());
                }
                _ => {}
            }
            assert!(stock[at] >= 0, "negative stock after {line}");
        }
        assert!(purchases > 500 && restocks >= 5, "{purchases} {restocks}");
    }
}
