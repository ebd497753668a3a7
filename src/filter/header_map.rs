//! Reading a whole header map in one host call, kept where the host wrote it.
//!
//! The benchmark's host-call probe (bench/probe) compiles this same file, so the floor it
//! measures makes exactly this call.

use proxy_wasm::types::MapType;

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> proxy_wasm::types::Status;
}

/// The map in the proxy-wasm wire format, or `None` when the host has none (no stream).
///
/// The one `unsafe` of the filter: the SDK's `get_map_bytes` makes the same call, then copies
/// every name and value into its own `String`/`Vec` (two allocations per header); this keeps
/// the host's buffer as it is. The SDK offers no safe call that returns it. It needs the host, so
/// the real-Envoy test `test_header_map_read_in_place_sees_every_header` (tests/e2e/test_relay.py)
/// covers it; the walk over the buffer has unit and property tests in `http::request`.
#[cfg(target_arch = "wasm32")]
pub(crate) fn read(map: MapType) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a length into the two locals. The pointer comes from
    // the SDK's `proxy_on_memory_allocate` (a `Vec<u8>` with capacity `size`, leaked with
    // `mem::forget`), which the host called for exactly `size` bytes and then filled, so it is
    // owned by no one else, initialised for `size` bytes, and allocated with capacity `size` by
    // this module's global allocator: what `Vec::from_raw_parts` requires. This is the same
    // sequence as the SDK's own `hostcalls::get_map_bytes` (proxy-wasm 0.2.5).
    unsafe {
        match proxy_get_header_map_pairs(map, &mut data, &mut size) {
            proxy_wasm::types::Status::Ok if !data.is_null() => {
                Some(Vec::from_raw_parts(data, size, size))
            }
            _ => None,
        }
    }
}

/// Off wasm (host builds: tests, check-config) there is no host to read from.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn read(_map: MapType) -> Option<Vec<u8>> {
    None
}
