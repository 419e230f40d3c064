//! The `weir` command line.

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    weir::cli::main()
}

/// glibc gives each thread that allocates its own arena (up to 8 per core), and each keeps what
/// its threads freed: the decode, transform and encode threads then hold several copies of a
/// batch's worth of freed memory. Two arenas took the peak RSS of the land-every-event benchmark
/// from 388 to 315 MiB at the same speed (mimalloc, tried too, was slower and larger here).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
