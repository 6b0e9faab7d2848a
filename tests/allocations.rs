//! The engines allocate per request, never per feature: a counting global allocator checks a
//! bound that is far below the number of features in each reference workload.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use feature_trimmer::bundle::snapshot::Lookup;
use feature_trimmer::bundle::AllowlistSnapshot;
use feature_trimmer::classify::VersionSpec;
use feature_trimmer::config::TrimConfig;
use feature_trimmer::workload;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per request allowed, whatever the number of features.
const BOUND: usize = 64;

#[test]
fn allocations_per_request_do_not_grow_with_features() {
    for w in workload::all() {
        let snapshot = AllowlistSnapshot::build([&w.bundle()], &TrimConfig::default());
        let Lookup::Found { entry, .. } = snapshot.lookup(
            workload::MODEL,
            &VersionSpec::Version(workload::VERSION.into()),
        ) else {
            panic!("no allowlist")
        };
        let allowed = |name: &str| snapshot.allows(&entry.allowlist, name);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let trimmed = w.trim(allowed).unwrap();
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        let features = trimmed.removed + trimmed.kept;
        assert!(features >= 200, "{}: {features} features", w.name);
        assert!(
            allocations <= BOUND,
            "{}: {allocations} allocations for {features} features (bound {BOUND})",
            w.name
        );
        println!(
            "{}: {allocations} allocations for {features} features",
            w.name
        );
    }
}
