//! What the box's own process uses of its host, for benchmarks and health reports: the peak and
//! current resident memory, read from `/proc/self/status` (Linux).

/// Peak resident set size of this process since it started (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_field_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size of this process (`VmRSS`), in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_field_kib("VmRSS:").map(|kib| kib * 1024)
}

/// Bytes as MiB for reports.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn status_field_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_covers_a_large_allocation() {
        let before = peak_rss_bytes().expect("VmHWM on Linux");
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let after = peak_rss_bytes().expect("VmHWM on Linux");
        assert!(after >= before, "the peak never falls");
        assert!(
            after >= 64 << 20,
            "a 64 MiB block touched shows in the peak: {after}"
        );
        assert!(rss_bytes().unwrap() <= after);
    }
}
