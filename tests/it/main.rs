//! Integration tests: the `weir` binary run as a user runs it, its lake read back by DuckDB.

mod common;
mod crash;
mod dead_letters;
mod delta;
mod ecommerce;
mod errors;
mod kinesis;
mod lambda;
mod leases;
mod models;
mod serve;
mod updates;
mod warehouses;
mod windows;
